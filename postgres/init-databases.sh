#!/bin/bash
# Create or update the roles and databases the stack needs; safe to run at every start.
#
# Usage: init-databases.sh
#   Connects as the superuser through the local socket (PGHOST, PGPORT; peer auth).
#   Application databases come from
#     POSTGRES_DB / POSTGRES_USER / POSTGRES_PASSWORD   in the environment (one database), and
#     POSTGRES_ENV_FILES   space-separated env files (config/*.env), each read for the same
#                          three keys: production's and staging's files give aiia_prod and
#                          aiia_staging, each owned by its own role.
#   PGBOUNCER_AUTH_PASSWORD   password of pgbouncer_auth, PgBouncer's auth_query role.
# Passwords reach psql through its environment, never its arguments.
set -o errexit -o pipefail -o nounset

HERE=$(dirname "$(readlink -f "$0")")
PSQL=${PSQL:-psql}
export PGUSER=${PGUSER:-postgres}
export PGDATABASE=postgres

die() { echo "init-databases: $*" >&2; exit 1; }

is_placeholder() { [ -z "$1" ] || [ "$1" = CHANGE_ME ]; }

# value of KEY in an env file: last assignment wins, surrounding quotes removed
env_file_value() {
    local file=$1 key=$2 value
    value=$(sed -n "s/^[[:space:]]*\(export[[:space:]]\+\)\?${key}=//p" "$file" | tail -n 1)
    value=${value%$'\r'}
    case $value in
        \"*\") value=${value#\"}; value=${value%\"} ;;
        \'*\') value=${value#\'}; value=${value%\'} ;;
    esac
    printf '%s' "$value"
}

valid_name() { [[ $1 =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; }

create_app_database() {
    local db=$1 owner=$2 password=$3 origin=$4
    valid_name "$db" || die "$origin: POSTGRES_DB '$db' is not a plain lower-case name"
    valid_name "$owner" || die "$origin: POSTGRES_USER '$owner' is not a plain lower-case name"
    is_placeholder "$password" \
        && die "$origin: POSTGRES_PASSWORD for $owner is empty or CHANGE_ME; set a real one"
    echo "init-databases: database $db owned by $owner ($origin)"
    AIIA_INIT_PASSWORD=$password "$PSQL" -X --no-psqlrc -q \
        -v db="$db" -v owner="$owner" -f "$HERE/init/app-database.sql"
}

auth_password=${PGBOUNCER_AUTH_PASSWORD:-}
if [ "$auth_password" = CHANGE_ME ]; then
    die "PGBOUNCER_AUTH_PASSWORD is CHANGE_ME; set a real one (production env file)"
fi
auth_set=0
[ -n "$auth_password" ] && auth_set=1
PGBOUNCER_AUTH_PASSWORD=$auth_password "$PSQL" -X --no-psqlrc -q \
    -v auth_password_set="$auth_set" -f "$HERE/init/cluster.sql"

if [ -n "${POSTGRES_DB:-}" ]; then
    create_app_database "$POSTGRES_DB" "${POSTGRES_USER:-$POSTGRES_DB}" \
        "${POSTGRES_PASSWORD:-}" "environment"
    # local development only: Django's test runner (`inv test`) creates test_<db>, and
    # creates and drops it from the maintenance database
    if [ "${ENVIRONMENT:-}" = local ]; then
        printf '%s\n' 'ALTER ROLE :"owner" CREATEDB;' \
            'GRANT CONNECT ON DATABASE postgres TO :"owner";' \
            | "$PSQL" -X --no-psqlrc -q -v ON_ERROR_STOP=1 -v owner="${POSTGRES_USER:-$POSTGRES_DB}"
    fi
fi

for file in ${POSTGRES_ENV_FILES:-}; do
    [ -r "$file" ] || die "POSTGRES_ENV_FILES: cannot read $file"
    db=$(env_file_value "$file" POSTGRES_DB)
    [ -n "$db" ] || die "$file: no POSTGRES_DB"
    owner=$(env_file_value "$file" POSTGRES_USER)
    create_app_database "$db" "${owner:-$db}" "$(env_file_value "$file" POSTGRES_PASSWORD)" \
        "$file"
done
