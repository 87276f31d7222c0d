#!/bin/sh
# Container health check: PING as the admin user. The password reaches redis-cli
# through REDISCLI_AUTH in its environment, never on its command line.
set -o errexit -o nounset
if [ -n "${REDIS_ADMIN_PASSWORD_FILE:-}" ] && [ -z "${REDIS_ADMIN_PASSWORD:-}" ]; then
  REDIS_ADMIN_PASSWORD=$(cat "$REDIS_ADMIN_PASSWORD_FILE")
fi
if [ -n "${REDIS_ADMIN_PASSWORD:-}" ]; then
  reply=$(REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD" redis-cli --no-auth-warning --user admin \
    -h "${REDIS_HEALTH_HOST:-127.0.0.1}" -p "${REDIS_HEALTH_PORT:-6379}" ping)
else
  reply=$(redis-cli -h "${REDIS_HEALTH_HOST:-127.0.0.1}" -p "${REDIS_HEALTH_PORT:-6379}" ping)
fi
[ "$reply" = PONG ] || { echo "redis answered: $reply" >&2; exit 1; }
