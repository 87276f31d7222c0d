#!/bin/sh
# Render nginx's configuration from templates/ into OUTDIR.
#
# Usage: render.sh OUTDIR
#
# Values: every NGINX_* variable of defaults.env, overridden by the environment.
# Secrets: STATUS_USER and STATUS_PASSWORD (the production env file) become
# $NGINX_RUN_DIR/devstatus.htpasswd, SHA-512 crypt, mode 0640 group $NGINX_USER when run
# as root. The password goes to openssl on stdin, never on a command line.
#
# templates/nginx.conf, snippets/ and sites/ are copied with ${NGINX_...} filled in
# (NGINX_CONF_DIR is OUTDIR itself, for absolute includes);
# templates/app-site.conf becomes sites/prod.conf and sites/staging.conf, their upstream
# servers upstreams/prod.conf and upstreams/staging.conf. Only the
# listed variables are substituted, so nginx's own $variables pass through untouched.
set -o errexit -o nounset

die() { printf 'render.sh: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: render.sh OUTDIR"
out=$1
here=$(cd "$(dirname "$0")" && pwd)
templates=$here/templates
command -v envsubst >/dev/null || die "envsubst is missing (Debian package gettext-base)"

VARS="NGINX_PROD_SERVER_NAMES NGINX_STAGING_SERVER_NAMES NGINX_STATUS_SERVER_NAME
NGINX_HTTP_LISTEN NGINX_HTTPS_LISTEN NGINX_PROD_UPSTREAM NGINX_STAGING_UPSTREAM
NGINX_TLS_CERT NGINX_TLS_KEY NGINX_PROD_ROOT NGINX_STAGING_ROOT NGINX_STATUS_ROOT
NGINX_ACME_ROOT NGINX_RUN_DIR NGINX_USER NGINX_ACCESS_LOG NGINX_ACCESS_LOG_FILE NGINX_ERROR_LOG"

# defaults.env fills what the environment leaves unset
for var in $VARS; do
  eval "given=\${$var+set}"
  if [ -z "$given" ]; then
    line=$(grep -E "^$var=" "$here/defaults.env" | tail -n 1) || die "$var: no default in defaults.env"
    value=${line#*=}
    value=${value#\"}
    value=${value%\"}
    eval "$var=\$value"
  fi
  eval "value=\$$var"
  [ -n "$value" ] || die "$var is empty"
  case "$value" in
    *[\;\{\}\'\`]*) die "$var: '$value' must not contain ; { } or quotes" ;;
  esac
  # shellcheck disable=SC2163 # exporting the variable named by $var
  export "$var"
done

shell_format=""
for var in $VARS NGINX_CONF_DIR SITE SITE_SERVER_NAMES SITE_UPSTREAM SITE_ROOT; do
  shell_format="$shell_format \${$var}"
done

fill() { envsubst "$shell_format" < "$1" > "$2"; }

mkdir -p "$out/snippets" "$out/sites" "$out/upstreams" "$NGINX_RUN_DIR"
# includes are absolute, so the rendered files work wherever nginx.conf is included from
NGINX_CONF_DIR=$(cd "$out" && pwd)
export NGINX_CONF_DIR
rm -f "$out"/sites/*.conf
fill "$templates/nginx.conf" "$out/nginx.conf"
cp "$templates/ffdhe2048.pem" "$out/ffdhe2048.pem"
for f in "$templates"/snippets/*.conf "$templates"/sites/*.conf; do
  rel=${f#"$templates"/}
  fill "$f" "$out/$rel"
done

site() {
  SITE=$1 SITE_SERVER_NAMES=$2 SITE_UPSTREAM=$3 SITE_ROOT=$4
  export SITE SITE_SERVER_NAMES SITE_UPSTREAM SITE_ROOT
  fill "$templates/app-site.conf" "$out/sites/$1.conf"
  # the upstream's server, rewritten by each deploy (opskit/deploy.py)
  printf 'server %s;\n' "$3" > "$out/upstreams/$1.conf"
}
site prod "$NGINX_PROD_SERVER_NAMES" "$NGINX_PROD_UPSTREAM" "$NGINX_PROD_ROOT"
site staging "$NGINX_STAGING_SERVER_NAMES" "$NGINX_STAGING_UPSTREAM" "$NGINX_STAGING_ROOT"

# devstatus basic auth
user=${STATUS_USER:-}
password=${STATUS_PASSWORD:-}
[ -n "$user" ] || die "STATUS_USER is empty: set it in the production env file"
case "$user" in *:*|*[[:space:]]*) die "STATUS_USER must not contain ':' or spaces" ;; esac
case "$password" in
  ''|CHANGE_ME) die "STATUS_PASSWORD is empty or the placeholder: set it in the production env file" ;;
esac
htpasswd=$NGINX_RUN_DIR/devstatus.htpasswd
umask 077
hash=$(printf '%s\n' "$password" | openssl passwd -6 -stdin) || die "openssl passwd failed"
printf '%s:%s\n' "$user" "$hash" > "$htpasswd.tmp"
if [ "$(id -u)" = 0 ] && getent group "$NGINX_USER" >/dev/null 2>&1; then
  chgrp "$NGINX_USER" "$htpasswd.tmp"
  chmod 0640 "$htpasswd.tmp"
fi
mv -f "$htpasswd.tmp" "$htpasswd"
