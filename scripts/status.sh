#!/usr/bin/env bash
# Run the status collector once, in a small container: from cron every minute.
#
# Usage: scripts/status.sh [run | show [--json]]
#
#   The cron entry (installed by `fab install-cron`):
#     * * * * * /home/ubuntu/main/ai-ia-backend/scripts/status.sh run
#
#   One run reads the box (/proc), every container (the Docker API), nginx's access log
#   since the last run, /health/ of both environments through nginx, PostgreSQL,
#   PgBouncer and Redis, the certificate, logs/deploys.log, the backups and the last
#   restore drill; keeps the minute in SQLite (volume status_history), sends the alerts
#   to SLACK_WEBHOOK_URL of the env file, and writes the devstatus page (volume status).
#   Nothing stays running between runs. `show` (what `fab monitor` runs) reads the same
#   and prints it, as a table or JSON, keeping and sending nothing; it exits 1 when a
#   threshold is passed. The container uses the backup image (python3);
#   it reads the Docker socket, the env file and the checkout read-only.
#
# Environment (all optional):
#   ENV_FILE       production's env file, for SLACK_WEBHOOK_URL (default: .env)
#   STATUS_IMAGE   the image (default: BACKUP_IMAGE, aiia/backup:latest)
#   NETWORK        the stack's network (default: aiia_network)
#   NGINX          nginx's TLS address as seen from that network (default: nginx:443)
#   VOLUME_PREFIX  the compose project's volume prefix (default: aiia_)
#   HISTORY_VOLUME the history's volume (default: ${VOLUME_PREFIX}status_history)
#   LOG_DIR        deploys.log and drill.json (default: logs/ in the checkout)
#   STAGING_LOG_DIR staging's checkout's logs/, whose deploys.log is read too (default:
#                  ~/staging/ai-ia-backend/logs beside ~/main/ai-ia-backend; skipped
#                  when it does not exist)
#   BACKUP_DIR     the backup sets (default: backups/ in the checkout)
#   DOCKER_SOCKET  (default: /var/run/docker.sock)
#   STATUS_ARGS    more arguments for `python3 -m opskit.status run` (e.g. --now for tests)
#
# Output: one line per run and per alert on stderr, appended to logs/status.log.
# Exit status: 0 the run completed; 1 it failed; 2 wrong usage/setup.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE=${ENV_FILE:-$ROOT/.env}
STATUS_IMAGE=${STATUS_IMAGE:-${BACKUP_IMAGE:-aiia/backup:latest}}
NETWORK=${NETWORK:-aiia_network}
NGINX=${NGINX:-nginx:443}
VOLUME_PREFIX=${VOLUME_PREFIX:-aiia_}
HISTORY_VOLUME=${HISTORY_VOLUME:-${VOLUME_PREFIX}status_history}
LOG_DIR=${LOG_DIR:-$ROOT/logs}
STAGING_LOG_DIR=${STAGING_LOG_DIR:-$(dirname "$(dirname "$ROOT")")/staging/ai-ia-backend/logs}
BACKUP_DIR=${BACKUP_DIR:-$ROOT/backups}
DOCKER_SOCKET=${DOCKER_SOCKET:-/var/run/docker.sock}
STATUS_ARGS=${STATUS_ARGS:-}

usage() { sed -n '2,/^set -o/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }
die() { printf 'status.sh: %s\n' "$*" >&2; exit 2; }

mode=run
show_args=()
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|run) ;;
  show)
    mode=show
    case "${2:-}" in
      "") ;;
      --json) show_args=(--json) ;;
      *) usage; die "unexpected argument '$2' after show (only --json)" ;;
    esac
    ;;
  *) usage; die "unexpected argument '$1': run it without one, or with show [--json]" ;;
esac
command -v docker >/dev/null 2>&1 || die "docker not found: install Docker (the server needs only Docker, Compose v2 and git)"
[ -S "$DOCKER_SOCKET" ] || die "no Docker socket at $DOCKER_SOCKET: start the engine (systemctl start docker) or set DOCKER_SOCKET"
docker image inspect "$STATUS_IMAGE" >/dev/null 2>&1 \
  || die "image $STATUS_IMAGE not found: build it from the checkout (docker compose build backup) or set STATUS_IMAGE"

mkdir -p "$LOG_DIR"
env_mount=()
env_arg=()
if [ -f "$ENV_FILE" ]; then
  env_mount=(-v "$(realpath "$ENV_FILE"):/run/aiia/env:ro")
  env_arg=(--env-file /run/aiia/env)
fi
backup_mount=()
backup_arg=()
if [ -d "$BACKUP_DIR" ]; then
  backup_mount=(-v "$(realpath "$BACKUP_DIR"):/backups:ro")
  backup_arg=(--backup-dir /backups)
fi
# staging deploys from its own checkout and logs there: its failures alert too
staging_mount=()
staging_arg=()
if [ -d "$STAGING_LOG_DIR" ] && [ "$(realpath "$STAGING_LOG_DIR")" != "$(realpath "$LOG_DIR")" ]; then
  staging_mount=(-v "$(realpath "$STAGING_LOG_DIR"):/opt/aiia-logs-staging:ro")
  staging_arg=(--deploy-log /opt/aiia-logs-staging/deploys.log)
fi
# shellcheck disable=SC2206 # STATUS_ARGS is a list of words on purpose
extra=($STATUS_ARGS)

if [ "$mode" = show ]; then
  exec docker run --rm --name "aiia_status_show_$$" --network "$NETWORK" \
    --security-opt no-new-privileges:true --cap-drop ALL \
    --memory 48m --read-only --tmpfs /tmp:size=4m \
    --user "$(id -u):10002" --group-add "$(stat -c %g "$DOCKER_SOCKET")" \
    -v "$DOCKER_SOCKET:/var/run/docker.sock" -v /sys/fs/cgroup:/host/cgroup:ro \
    -v "$ROOT:/opt/aiia:ro" -w /opt/aiia -e PYTHONPATH=/opt/aiia -e HOME=/tmp \
    -v "$(realpath "$LOG_DIR"):/opt/aiia-logs:ro" "${staging_mount[@]}" "${backup_mount[@]}" \
    "$STATUS_IMAGE" \
    python3 -m opskit.status show --nginx "$NGINX" --cgroup-root /host/cgroup --deploy-log /opt/aiia-logs/deploys.log \
      "${staging_arg[@]}" --drill-file /opt/aiia-logs/drill.json "${backup_arg[@]}" "${show_args[@]}"
fi

# The host user (it owns the backups), group 10002 (it owns the page, history and log
# volumes, nginx/Dockerfile and compose/backup/Dockerfile) and the socket's group.
# 48 MB: the run's measured peak is in README.md (bench/status.py).
status=0
docker run --rm --name "aiia_status_$$" --network "$NETWORK" \
  --security-opt no-new-privileges:true --cap-drop ALL \
  --memory 48m --read-only --tmpfs /tmp:size=4m \
  --user "$(id -u):10002" --group-add "$(stat -c %g "$DOCKER_SOCKET")" \
  -v "$DOCKER_SOCKET:/var/run/docker.sock" -v /sys/fs/cgroup:/host/cgroup:ro \
  -v "$ROOT:/opt/aiia:ro" -w /opt/aiia -e PYTHONPATH=/opt/aiia -e HOME=/tmp \
  -v "$(realpath "$LOG_DIR"):/opt/aiia-logs:ro" "${staging_mount[@]}" \
  -v "${VOLUME_PREFIX}status:/var/www/status" \
  -v "$HISTORY_VOLUME:/var/lib/aiia-status" \
  -v "${VOLUME_PREFIX}nginx_logs:/var/log/aiia-nginx" \
  "${env_mount[@]}" "${backup_mount[@]}" \
  "$STATUS_IMAGE" \
  python3 -m opskit.status run --db /var/lib/aiia-status/status.db --page-dir /var/www/status \
    --access-log /var/log/aiia-nginx/access.log --nginx "$NGINX" --cgroup-root /host/cgroup \
    --deploy-log /opt/aiia-logs/deploys.log "${staging_arg[@]}" --drill-file /opt/aiia-logs/drill.json \
    "${env_arg[@]}" "${backup_arg[@]}" "${extra[@]}" \
  2> >(tee -a "$LOG_DIR/status.log" >&2) || status=$?

[ "$status" -eq 0 ] || printf 'status.sh: the collector FAILED (exit %s); see %s\n' "$status" "$LOG_DIR/status.log" >&2
exit "$status"
