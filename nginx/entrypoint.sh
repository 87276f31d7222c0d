#!/bin/sh
# nginx container entrypoint: render the configuration, check it, run nginx in the
# foreground.
#
# Privileges: nginx starts as root so the master can bind ports 80 and 443 and read
# the Let's Encrypt private key; the workers, which parse every request, run as
# www-data (`user` in nginx.conf). No capability is needed beyond what root's master
# uses at start (NET_BIND_SERVICE, SETUID/SETGID, CHOWN for temp dirs, DAC_OVERRIDE).
set -o errexit -o nounset

here=/etc/nginx/aiia
default() { sed -n "s/^$1=//p" "$here/defaults.env" | tail -n 1 | tr -d '"'; }
: "${NGINX_RUN_DIR:=$(default NGINX_RUN_DIR)}"
: "${NGINX_TLS_CERT:=$(default NGINX_TLS_CERT)}"
: "${NGINX_TLS_KEY:=$(default NGINX_TLS_KEY)}"
export NGINX_RUN_DIR NGINX_TLS_CERT NGINX_TLS_KEY

# First start on a new server: certbot has issued nothing yet, but nginx must run to
# answer its HTTP challenge. A throwaway self-signed certificate stands in until then;
# after `certbot certonly --webroot -w /var/www/acme ...` restart the container.
if [ ! -s "$NGINX_TLS_CERT" ] || [ ! -s "$NGINX_TLS_KEY" ]; then
  echo "entrypoint: no certificate at $NGINX_TLS_CERT yet; serving a temporary" \
    "self-signed one (restart nginx once certbot has issued the real one)" >&2
  fallback=$NGINX_RUN_DIR/fallback-tls
  mkdir -p "$fallback"
  (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -days 30 -subj "/CN=$(default NGINX_STATUS_SERVER_NAME)" \
    -keyout "$fallback/key.pem" -out "$fallback/cert.pem" 2>/dev/null)
  NGINX_TLS_CERT=$fallback/cert.pem
  NGINX_TLS_KEY=$fallback/key.pem
fi

"$here/render.sh" "$NGINX_RUN_DIR/conf"
nginx -t -q
exec nginx "$@"
