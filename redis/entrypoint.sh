#!/bin/sh
# Redis container entrypoint: render the ACL file from the environment, then run
# redis-server in the foreground as the unprivileged redis user.
#
# Started as root (the image's default) it writes /run/redis/users.acl owned by redis
# and drops to redis with setpriv, keeping no capabilities; started as any other user
# (compose `user: redis`) it needs /run/redis writable by that user and skips the drop.
# Extra arguments are passed to redis-server (e.g. --loglevel verbose).
set -o errexit -o nounset

acl=/run/redis/users.acl
mkdir -p /run/redis
/usr/local/bin/redis-render-acl "$acl"

extra=""
if [ "${ENVIRONMENT:-}" = local ] && [ -z "${REDIS_ADMIN_PASSWORD:-}${REDIS_ADMIN_PASSWORD_FILE:-}" ]; then
  # development: no password, so protected mode would refuse the app container
  extra="--protected-mode no"
fi

if [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /run/redis
  # shellcheck disable=SC2086 # $extra is empty or two words on purpose
  exec setpriv --reuid=redis --regid=redis --init-groups --inh-caps=-all \
    redis-server /etc/redis/redis.conf $extra "$@"
fi
# shellcheck disable=SC2086
exec redis-server /etc/redis/redis.conf $extra "$@"
