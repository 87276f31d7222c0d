#!/bin/bash
# PostgreSQL container entrypoint: initdb on an empty volume, roles and databases from the
# environment (init-databases.sh), then exec the server so it is PID 1 and gets the signals.
#
# Usage: docker-entrypoint.sh [postgres options...]    e.g. -c port=5433
#   PGDATA                       data directory (empty volume on first start)
#   POSTGRES_SUPERUSER_PASSWORD  password of the postgres superuser, set by initdb
#   POSTGRES_CONFIG_DIR          where postgresql.conf, pg_hba.conf, pg_ident.conf live
#   and what init-databases.sh reads (POSTGRES_DB..., POSTGRES_ENV_FILES,
#   PGBOUNCER_AUTH_PASSWORD).
set -o errexit -o pipefail -o nounset

HERE=$(dirname "$(readlink -f "$0")")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGDATA=${PGDATA:-/var/lib/postgresql/data}
CONFIG_DIR=${POSTGRES_CONFIG_DIR:-/etc/postgresql}

die() { echo "entrypoint: $*" >&2; exit 1; }

[ "$(id -u)" != 0 ] || die "run as the postgres user (USER postgres), not root"

server=("$PGBIN/postgres" -D "$PGDATA"
    -c "config_file=$CONFIG_DIR/postgresql.conf"
    -c "hba_file=$CONFIG_DIR/pg_hba.conf"
    -c "ident_file=$CONFIG_DIR/pg_ident.conf"
    "$@")

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password=${POSTGRES_SUPERUSER_PASSWORD:-}
    if [ -z "$password" ] || [ "$password" = CHANGE_ME ]; then
        die "POSTGRES_SUPERUSER_PASSWORD is empty or CHANGE_ME; set it in the env file"
    fi
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$password" >"$pwfile"
    # checksums catch silent disk corruption before a backup copies it
    "$PGBIN/initdb" -D "$PGDATA" --username=postgres --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 --data-checksums
    rm -f "$pwfile"
    trap - EXIT
fi

# Roles and databases, at every start so the env files stay the source of truth: a
# temporary server reachable only through the socket, then a clean shutdown.
port=$("${server[@]}" -C port)
socket_dir=$("${server[@]}" -C unix_socket_directories)
socket_dir=${socket_dir%%,*}
"${server[@]}" -c listen_addresses= &
temp_pid=$!
ready=
for _ in $(seq 1 120); do
    if "$PGBIN/pg_isready" -q -h "$socket_dir" -p "$port"; then ready=1; break; fi
    kill -0 "$temp_pid" 2>/dev/null || die "the server exited during start; see above"
    sleep 0.5
done
[ -n "$ready" ] || die "the server did not accept connections within 60 s"
PGHOST=$socket_dir PGPORT=$port PSQL="$PGBIN/psql" "$HERE/init-databases.sh" || {
    kill -INT "$temp_pid"; wait "$temp_pid" || true; die "init-databases.sh failed"; }
kill -INT "$temp_pid"
wait "$temp_pid" || true

exec "${server[@]}"
