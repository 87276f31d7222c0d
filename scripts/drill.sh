#!/usr/bin/env bash
# The weekly restore drill, from cron: the newest local backup set restored into a scratch
# database, checked and dropped. The result goes to logs/drill.json, which the status page
# shows and alerts on.
#
# Usage: scripts/drill.sh production|staging
#
#   The weekly entry (installed by `fab install-cron`; Sundays, after the night's backups):
#     30 3 * * 0 /home/ubuntu/main/ai-ia-backend/scripts/drill.sh production
#
#   The drill is the code of `fab restore SET --verify-only` (opskit/backup/restore.py),
#   run in a container of the backup image with no network and no Docker socket; the sets,
#   the env file and the drill's key are mounted read-only. Its PostgreSQL commands,
#   `docker exec -i aiia_postgresql psql|pg_restore` (the superuser over the container's
#   socket: pg_hba refuses it over the network), are run here on the host by this script,
#   their input and output streamed through FIFOs in a private directory
#   (opskit/backup/relay.py), so the decrypted dump is never stored. Nothing else is run.
#
#   It decrypts with the server's drill key, DRILL_IDENTITY (default
#   ~/.config/aiia/drill.key, mode 0600, made once by `fab setup` or `fab install-cron`; the
#   operator's key never comes to the server). scripts/backup.sh encrypts each database dump to its public
#   key (the same path with .pub) as well as to BACKUP_AGE_RECIPIENT.
#
# Environment (all optional):
#   ENV_FILE            the environment's env file (default: .env; staging: .env.staging)
#   BACKUP_IMAGE        the image (default: aiia/backup:latest; docker compose build backup)
#   BACKUP_DIR          where the sets are (default: backups/ in the checkout)
#   LOG_DIR             drill.json and the run logs (default: logs/ in the checkout)
#   DRILL_IDENTITY      the drill's secret key (default: ~/.config/aiia/drill.key)
#   POSTGRES_CONTAINER  (default: aiia_postgresql)
#   DRILL_TIMEOUT_S     the whole drill's time limit (default: 3600)
#
# Output: progress on stderr, also in logs/drill_<env>_<UTC time>.log; the result in
# logs/drill.json: a failed drill says what failed and the command that fixes it.
# Exit status: 0 the drill passed, 1 it failed, 2 wrong usage.
set -o errexit -o pipefail -o nounset
# logs are the operator's alone (0600 files, 0700 directories)
umask 077

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BACKUP_IMAGE=${BACKUP_IMAGE:-aiia/backup:latest}
BACKUP_DIR=${BACKUP_DIR:-$ROOT/backups}
LOG_DIR=${LOG_DIR:-$ROOT/logs}
DRILL_IDENTITY=${DRILL_IDENTITY:-${HOME:-}/.config/aiia/drill.key}
POSTGRES_CONTAINER=${POSTGRES_CONTAINER:-aiia_postgresql}
DRILL_TIMEOUT_S=${DRILL_TIMEOUT_S:-3600}

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
case "$DRILL_TIMEOUT_S" in ''|*[!0-9]*) die "DRILL_TIMEOUT_S=$DRILL_TIMEOUT_S: give whole seconds" ;; esac

mkdir -p "$LOG_DIR"
chmod 700 "$LOG_DIR"
LOG="$LOG_DIR/drill_${ENVIRONMENT}_$(date -u +%Y%m%d_%H%M%S).log"
exec 2> >(tee -a "$LOG" >&2)
when=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)

json_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/ }
  s=${s//$'\t'/ }
  printf '"%s"' "$s"
}

# logs/drill.json, replaced at once: the status job may read it at any moment
install_result() {
  local tmp
  tmp=$(mktemp "$LOG_DIR/.drill.XXXXXX")
  cat > "$tmp"
  chmod 644 "$tmp"
  mv -f -- "$tmp" "$LOG_DIR/drill.json"
}

fail() {
  printf 'drill.sh: %s drill FAILED: %s (log: %s)\n' "$ENVIRONMENT" "$1" "$LOG" >&2
  printf '{"detail": %s, "env": %s, "ok": false, "set": "", "when": %s}\n' \
    "$(json_string "$1")" "$(json_string "$ENVIRONMENT")" "$(json_string "$when")" | install_result
  exit 1
}

[ -f "$ENV_FILE" ] || fail "no env file $ENV_FILE: create it (cp config/prod.env.example .env && chmod 600 .env) or set ENV_FILE"
[ -s "$DRILL_IDENTITY" ] \
  || fail "no drill key at $DRILL_IDENTITY: make it with \`fab -H HOST install-cron\` from the operator's machine (then take a backup: \`fab -H HOST backup\`)"
[ -d "$BACKUP_DIR" ] \
  || fail "no backup directory $BACKUP_DIR: take a backup with \`fab -H HOST backup --env $ENVIRONMENT\` (or scripts/backup.sh $ENVIRONMENT)"
command -v docker >/dev/null 2>&1 || fail "docker not found on the server: install Docker"
docker info >/dev/null 2>&1 || fail "the Docker engine does not answer: start it (systemctl start docker)"
docker image inspect "$BACKUP_IMAGE" >/dev/null 2>&1 \
  || fail "image $BACKUP_IMAGE not found: build it in the checkout (docker compose build backup)"
[ "$(docker inspect --type container --format '{{.State.Running}}' "$POSTGRES_CONTAINER" 2>/dev/null)" = true ] \
  || fail "$POSTGRES_CONTAINER is not running: start the stack (docker compose up -d, in the checkout)"

relay=$(mktemp -d "${TMPDIR:-/tmp}/aiia-drill.XXXXXX")
name="aiia_drill_${ENVIRONMENT}"
started=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  # a drill cut short by its time limit: its container goes too (never another drill's)
  if [ "$started" = stuck ]; then docker rm -f "$name" >/dev/null 2>&1 || true; fi
  rm -rf -- "$relay"
}
trap cleanup EXIT
mkfifo "$relay/requests"
# read and write: the requests never see an end of file while the drill runs
exec 3<> "$relay/requests"

# The container's uid:gid is the host user's, who owns the sets and the key (both 0600).
# The drill's name is fixed: a second drill at the same time cannot start.
(
  rc=0
  docker run --rm --name "$name" --network none \
    --security-opt no-new-privileges:true --cap-drop ALL \
    --memory 64m --read-only --tmpfs /tmp:size=16m \
    --user "$(id -u):$(id -g)" \
    -v "$ROOT:/opt/aiia:ro" -w /opt/aiia -e PYTHONPATH=/opt/aiia -e HOME=/tmp \
    -v "$(realpath "$ENV_FILE"):/run/aiia/env:ro" \
    -v "$(realpath "$DRILL_IDENTITY"):/run/aiia/drill.key:ro" \
    -v "$(realpath "$BACKUP_DIR"):/backups:ro" \
    -v "$relay:/run/aiia/relay" \
    "$BACKUP_IMAGE" \
    python3 -m opskit.backup drill --env "$ENVIRONMENT" --env-file /run/aiia/env \
      --backup-dir /backups --identity /run/aiia/drill.key --relay /run/aiia/relay \
      --container "$POSTGRES_CONTAINER" > "$relay/result.json" || rc=$?
  printf 'exit %s\n' "$rc" > "$relay/requests"
) &
drill_pid=$!

# The vocabulary: the PostgreSQL client tools in the PostgreSQL container, nothing else.
allowed() {
  [ "${#argv[@]}" -ge 5 ] && [ "${argv[0]}" = docker ] && [ "${argv[1]}" = exec ] \
    && [ "${argv[2]}" = -i ] && [ "${argv[3]}" = "$POSTGRES_CONTAINER" ] \
    && { [ "${argv[4]}" = psql ] || [ "${argv[4]}" = pg_restore ]; }
}

left() { local n=$((DRILL_TIMEOUT_S - SECONDS)); [ "$n" -gt 0 ] && echo "$n" || echo 1; }

status=
while :; do
  if ! read -r -t "$(left)" -u 3 word code; then
    started=stuck
    fail "the drill took longer than DRILL_TIMEOUT_S=${DRILL_TIMEOUT_S}s and was stopped; see $LOG"
  fi
  case "$word" in
    exit) status=$code; break ;;
    *[!0-9-]* | '') fail "unexpected request from the drill's container: $word" ;;
  esac
  req="$relay/$word"
  mapfile -d '' -t argv < "$req.argv"
  set +o errexit
  if allowed; then
    timeout "$(left)" "${argv[@]}" < "$req.in" > "$req.out" 2> "$req.err"
    rc=$?
  else
    printf 'drill.sh: REFUSED a command outside the drill'"'"'s vocabulary: %q\n' "${argv[0]:-}" >&2
    { printf 'drill.sh refused it: not in the drill'"'"'s vocabulary\n' >&2; } \
      < "$req.in" > "$req.out" 2> "$req.err"
    rc=126
  fi
  set -o errexit
  printf '%s\n' "$rc" > "$req.rc.tmp"
  mv -f -- "$req.rc.tmp" "$req.rc"
done
wait "$drill_pid" 2>/dev/null || true

if [ -s "$relay/result.json" ] && [ "$(head -c1 "$relay/result.json")" = "{" ]; then
  install_result < "$relay/result.json"
else
  case "$status" in
    137) why="was killed (out of memory? its limit is 64m)" ;;
    *) why="exited with status $status" ;;
  esac
  fail "the drill's container $why without a result; see $LOG"
fi
if [ "$status" = 0 ]; then
  printf 'drill.sh: %s drill passed (logs/drill.json)\n' "$ENVIRONMENT" >&2
  exit 0
fi
printf 'drill.sh: %s drill FAILED; see logs/drill.json and %s\n' "$ENVIRONMENT" "$LOG" >&2
exit 1
