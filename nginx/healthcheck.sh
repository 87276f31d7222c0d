#!/bin/bash
# Container health check: GET /health over plain HTTP on loopback, answered by nginx
# itself. bash's /dev/tcp keeps curl out of the image.
set -o errexit -o nounset -o pipefail
defaults=${NGINX_DEFAULTS:-/etc/nginx/aiia/defaults.env}
host=$(sed -n 's/^NGINX_PROD_SERVER_NAMES=//p' "$defaults" | tr -d '"' | cut -d' ' -f1)
exec 3<>"/dev/tcp/127.0.0.1/${NGINX_HEALTH_PORT:-80}"
printf 'GET /health HTTP/1.0\r\nHost: %s\r\n\r\n' "${NGINX_HEALTH_HOST:-$host}" >&3
IFS= read -r -t 5 status <&3
case "$status" in
  "HTTP/1.1 200"*) exit 0 ;;
  *) echo "nginx answered: ${status:-nothing}" >&2; exit 1 ;;
esac
