#!/bin/bash
# PgBouncer container entrypoint: render the runtime config from the environment
# (render-config.sh), then exec PgBouncer in the foreground so it is PID 1 and gets the
# signals (SIGINT: safe shutdown; SIGHUP: reload).
#
# Usage: docker-entrypoint.sh [pgbouncer options...]
set -o errexit -o pipefail -o nounset

HERE=$(dirname "$(readlink -f "$0")")

[ "$(id -u)" != 0 ] || { echo "entrypoint: run as the postgres user, not root" >&2; exit 1; }

ini=$("$HERE/render-config.sh")
exec "${PGBOUNCER_BIN:-pgbouncer}" "$@" "$ini"
