#!/bin/sh
# Render Redis' ACL file from the environment.
#
# Usage: render-acl.sh OUTPUT
#
# Reads (each *_PASSWORD may instead be given as *_PASSWORD_FILE, a file holding it):
#   REDIS_ADMIN_PASSWORD      user "admin": ops, health checks, CONFIG GET, INFO
#   REDIS_PROD_PASSWORD       user REDIS_PROD_USER (aiia_prod), keys REDIS_PROD_KEY_PREFIX:* (prod)
#   REDIS_STAGING_PASSWORD    user REDIS_STAGING_USER (aiia_staging), keys ...:* (staging)
#   ENVIRONMENT=local         with no admin password: a development server whose default
#                             user has no password (the guide's local Redis), nothing else
#
# OUTPUT is written with mode 0600 and holds only SHA-256 hashes of the passwords.
# The passwords are hashed with shell builtins feeding sha256sum's stdin, so they
# never appear in a process's argv.
set -o errexit -o nounset

die() { printf 'render-acl.sh: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: render-acl.sh OUTPUT"
out=$1

# value of $1, or the content of the file named by ${1}_FILE
secret() {
  eval "v=\${$1:-}; f=\${$1_FILE:-}"
  if [ -z "$v" ] && [ -n "$f" ]; then
    [ -r "$f" ] || die "$1_FILE: cannot read $f"
    v=$(cat "$f")
  fi
  printf '%s' "$v"
}

sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

check_name() {
  case "$2" in
    ''|*[!A-Za-z0-9_.-]*) die "$1: '$2' may only use letters, digits, '_', '.', '-'" ;;
  esac
}

# An application user: its own key prefix and pub/sub channels, data commands only.
#  -@all first, then the data families; -@dangerous takes back KEYS, FLUSHALL, FLUSHDB,
#  CONFIG, DEBUG, SHUTDOWN, MONITOR, SWAPDB, MIGRATE, SORT, CLIENT KILL/LIST, INFO ...;
#  the explicit list repeats the ones operators ask about, and SCAN/RANDOMKEY go too:
#  they list key names of the whole db, which key patterns do not filter.
app_user() {
  name=$1 password=$2 prefix=$3
  printf 'user %s on #%s resetkeys ~%s:* resetchannels &%s:* ' \
    "$name" "$(sha256 "$password")" "$prefix" "$prefix"
  printf '%s\n' "-@all +@read +@write +@keyspace +@connection +@transaction +@pubsub \
-@dangerous -@admin -@scripting \
-flushall -flushdb -config -debug -keys -scan -randomkey -shutdown -monitor -swapdb \
-migrate -save -bgsave -bgrewriteaof -replicaof -slaveof -acl -module -client|kill \
-client|list -client|pause -failover -cluster -sync -psync"
}

admin=$(secret REDIS_ADMIN_PASSWORD)
prod=$(secret REDIS_PROD_PASSWORD)
staging=$(secret REDIS_STAGING_PASSWORD)
prod_user=${REDIS_PROD_USER:-aiia_prod}
staging_user=${REDIS_STAGING_USER:-aiia_staging}
prod_prefix=${REDIS_PROD_KEY_PREFIX:-prod}
staging_prefix=${REDIS_STAGING_KEY_PREFIX:-staging}
for pair in "REDIS_PROD_USER=$prod_user" "REDIS_STAGING_USER=$staging_user" \
  "REDIS_PROD_KEY_PREFIX=$prod_prefix" "REDIS_STAGING_KEY_PREFIX=$staging_prefix"; do
  check_name "${pair%%=*}" "${pair#*=}"
done
[ "$prod_prefix" != "$staging_prefix" ] || die "production and staging need different key prefixes"
[ "$prod_user" != "$staging_user" ] || die "production and staging need different Redis users"

umask 077
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
if [ -z "$admin" ] && [ -z "$prod" ] && [ -z "$staging" ] && [ "${ENVIRONMENT:-}" = local ]; then
  # development only: the guide's local Redis has no user and no password
  printf '%s\n' 'user default on nopass ~* &* +@all' > "$tmp"
else
  for var in REDIS_ADMIN_PASSWORD REDIS_PROD_PASSWORD REDIS_STAGING_PASSWORD; do
    val=$(secret "$var")
    case "$val" in
      '') die "$var (or ${var}_FILE) is empty: set it in the production env file" ;;
      CHANGE_ME|changeme|password) die "$var is still the placeholder '$val'" ;;
    esac
  done
  {
    # no password-less way in: the default user is switched off and can do nothing
    printf '%s\n' 'user default off resetkeys resetchannels -@all'
    printf 'user admin on #%s ~* &* +@all\n' "$(sha256 "$admin")"
    app_user "$prod_user" "$prod" "$prod_prefix"
    app_user "$staging_user" "$staging" "$staging_prefix"
  } > "$tmp"
fi
chmod 0600 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
