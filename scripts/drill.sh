#!/usr/bin/env bash
# The weekly restore drill, from cron: the newest good backup set restored into a scratch
# database, checked (tables, migrations) and dropped, in the backup container.
#
# Usage: scripts/drill.sh production|staging
#
#   The cron entry (installed by `fab install-cron`):
#     30 3 * * 0 /home/ubuntu/main/ai-ia-backend/scripts/drill.sh production
#
#   The result goes to logs/drill.json (when, ok, set, detail), which the status page
#   shows and the status collector alerts on when the drill failed. Backups are encrypted
#   to BACKUP_AGE_RECIPIENT: the drill needs the matching secret key on the server
#   (DRILL_IDENTITY, mode 0600). Without it the drill fails and says so: a backup that
#   was never restored is not known to be good.
#
# Environment (all optional):
#   ENV_FILE        the environment's env file (default: .env; staging: .env.staging if present)
#   DRILL_IDENTITY  the age secret key file (default: backup.key in the checkout)
#   BACKUP_IMAGE    (default: aiia/backup:latest)     NETWORK  (default: aiia_network)
#   BACKUP_DIR      (default: backups/ in the checkout) LOG_DIR  (default: logs/)
#
# Exit status: 0 the drill passed, 1 it failed, 2 wrong usage/setup.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BACKUP_IMAGE=${BACKUP_IMAGE:-aiia/backup:latest}
NETWORK=${NETWORK:-aiia_network}
BACKUP_DIR=${BACKUP_DIR:-$ROOT/backups}
LOG_DIR=${LOG_DIR:-$ROOT/logs}
DRILL_IDENTITY=${DRILL_IDENTITY:-$ROOT/backup.key}

usage() { sed -n '2,/^set -o/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
die() { printf 'drill.sh: %s\n' "$*" >&2; exit 2; }

[ $# -eq 1 ] || { usage; die "expected one argument, production or staging (got $#)"; }
case "$1" in
  production) ENVIRONMENT=production; default_env_file="$ROOT/.env" ;;
  staging)
    ENVIRONMENT=staging
    default_env_file="$ROOT/.env"
    [ -f "$ROOT/.env.staging" ] && default_env_file="$ROOT/.env.staging"
    ;;
  -h|--help) usage; exit 0 ;;
  *) usage; die "unknown environment '$1': use production or staging" ;;
esac
ENV_FILE=${ENV_FILE:-$default_env_file}
mkdir -p "$LOG_DIR"
result="$LOG_DIR/drill.json"

write_result() {  # ok detail
  local tmp
  tmp=$(mktemp "$LOG_DIR/.drill.XXXXXX")
  printf '{"detail": "%s", "env": "%s", "ok": %s, "when": "%s"}\n' \
    "$2" "$ENVIRONMENT" "$1" "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)" > "$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$result"
}

[ -f "$ENV_FILE" ] || die "no env file $ENV_FILE: create it or set ENV_FILE"
if [ ! -f "$DRILL_IDENTITY" ]; then
  write_result false "no age secret key at $DRILL_IDENTITY: copy the key matching BACKUP_AGE_RECIPIENT there (mode 0600) or set DRILL_IDENTITY"
  printf 'drill.sh: no identity %s; the failure is recorded in %s\n' "$DRILL_IDENTITY" "$result" >&2
  exit 1
fi
docker image inspect "$BACKUP_IMAGE" >/dev/null 2>&1 \
  || die "image $BACKUP_IMAGE not found: build it from the checkout (docker compose build backup)"

tmp=$(mktemp "$LOG_DIR/.drill.XXXXXX")
status=0
docker run --rm --name "aiia_drill_${ENVIRONMENT}" --network "$NETWORK" \
  --security-opt no-new-privileges:true --cap-drop ALL \
  --memory 64m --read-only --tmpfs /tmp:size=16m \
  --user "$(id -u):$(id -g)" \
  -v "$ROOT:/opt/aiia:ro" -w /opt/aiia -e PYTHONPATH=/opt/aiia -e HOME=/tmp \
  -v "$(realpath "$ENV_FILE"):/run/aiia/env:ro" \
  -v "$(realpath "$DRILL_IDENTITY"):/run/aiia/identity:ro" \
  -v "$(realpath "$BACKUP_DIR"):/backups:ro" \
  "$BACKUP_IMAGE" \
  python3 -m opskit.backup drill --env "$ENVIRONMENT" --env-file /run/aiia/env \
    --backup-dir /backups --identity /run/aiia/identity > "$tmp" || status=$?
if [ -s "$tmp" ]; then
  chmod 644 "$tmp"
  mv -f "$tmp" "$result"
else
  rm -f "$tmp"
  write_result false "the drill container exited $status without a result"
fi
exit "$status"
