#!/bin/bash
# Render PgBouncer's runtime config from the environment: what depends on where it runs
# (listen address, socket, the PostgreSQL server) and the only secret it needs.
#
# Usage: render-config.sh
#   PGBOUNCER_AUTH_PASSWORD  password of pgbouncer_auth (production env file); required
#   PGBOUNCER_CONFIG_DIR     where pgbouncer.ini, databases.ini, pg_hba.conf live
#                            (default /etc/pgbouncer)
#   PGBOUNCER_RUN_DIR        where the rendered pgbouncer.ini, userlist.txt and the
#                            socket go; created mode 0700 (default /var/run/pgbouncer)
#   PGBOUNCER_LISTEN_ADDR    default * (the container's interfaces; not published)
#   PGBOUNCER_LISTEN_PORT    default 6432, the guide's port
#   PGBOUNCER_SERVER_HOST    PostgreSQL host, default postgresql (compose service name)
#   PGBOUNCER_SERVER_PORT    PostgreSQL port, default 5432
# Prints the path of the rendered pgbouncer.ini.
set -o errexit -o pipefail -o nounset

CONFIG_DIR=${PGBOUNCER_CONFIG_DIR:-/etc/pgbouncer}
RUN_DIR=${PGBOUNCER_RUN_DIR:-/var/run/pgbouncer}
LISTEN_ADDR=${PGBOUNCER_LISTEN_ADDR:-*}
LISTEN_PORT=${PGBOUNCER_LISTEN_PORT:-6432}
SERVER_HOST=${PGBOUNCER_SERVER_HOST:-postgresql}
SERVER_PORT=${PGBOUNCER_SERVER_PORT:-5432}

die() { echo "render-config: $*" >&2; exit 1; }

password=${PGBOUNCER_AUTH_PASSWORD:-}
if [ -z "$password" ] || [ "$password" = CHANGE_ME ]; then
    die "PGBOUNCER_AUTH_PASSWORD is empty or CHANGE_ME; set it in the production env file"
fi
case $password in *$'\n'*) die "PGBOUNCER_AUTH_PASSWORD must be one line" ;; esac
[[ $SERVER_HOST =~ ^[A-Za-z0-9._:-]+$ ]] || die "PGBOUNCER_SERVER_HOST '$SERVER_HOST' is not a host"
[[ $SERVER_PORT =~ ^[0-9]+$ ]] || die "PGBOUNCER_SERVER_PORT '$SERVER_PORT' is not a port"
[[ $LISTEN_PORT =~ ^[0-9]+$ ]] || die "PGBOUNCER_LISTEN_PORT '$LISTEN_PORT' is not a port"

umask 077
mkdir -p "$RUN_DIR"
chmod 700 "$RUN_DIR"

# userlist: pgbouncer_auth (auth_user), whose password PgBouncer must send itself; every
# application role is looked up through auth_query. Quotes are doubled (auth_file format).
# postgres and aiia are listed without a password: pg_hba.conf lets them in only over the
# socket, to the admin console, which has no server to run auth_query on (a login there
# that is not in this file waits for ever).
{
    printf '"pgbouncer_auth" "%s"\n' "${password//\"/\"\"}"
    printf '"postgres" ""\n"aiia" ""\n'
} >"$RUN_DIR/userlist.txt.new"
mv "$RUN_DIR/userlist.txt.new" "$RUN_DIR/userlist.txt"

# PgBouncer resets every setting to its default when a second [pgbouncer] header appears,
# so the runtime settings go inside the one section of pgbouncer.ini, right after it.
runtime="listen_addr = $LISTEN_ADDR
listen_port = $LISTEN_PORT
unix_socket_dir = $RUN_DIR
; only the OS user PgBouncer runs as (and root) may open the socket: see pg_hba.conf
unix_socket_mode = 0700
auth_file = $RUN_DIR/userlist.txt
auth_hba_file = $CONFIG_DIR/pg_hba.conf"
grep -qx '\[pgbouncer\]' "$CONFIG_DIR/pgbouncer.ini" || die "no [pgbouncer] section in pgbouncer.ini"
{
    echo ";; rendered by render-config.sh at start; edit $CONFIG_DIR/pgbouncer.ini instead"
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s\n' "$line"
        if [ "$line" = "[pgbouncer]" ]; then
            printf ';; runtime, from the environment\n%s\n;; from pgbouncer.ini\n' "$runtime"
        fi
    done <"$CONFIG_DIR/pgbouncer.ini"
    echo
    sed -e "s/@SERVER_HOST@/$SERVER_HOST/g" -e "s/@SERVER_PORT@/$SERVER_PORT/g" \
        "$CONFIG_DIR/databases.ini"
} >"$RUN_DIR/pgbouncer.ini.new"
mv "$RUN_DIR/pgbouncer.ini.new" "$RUN_DIR/pgbouncer.ini"
echo "$RUN_DIR/pgbouncer.ini"
