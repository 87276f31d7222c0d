#!/usr/bin/env bash
# The status collector, in a small container: once (run), every minute (start), or shown.
#
# Usage: scripts/status.sh [run | start [--check] | stop | show [--json]]
#
#   `start` (what `fab setup` and `fab install-cron` run, and cron each hour:
#     7 * * * * /home/ubuntu/main/ai-ia-backend/scripts/status.sh start)
#   keeps one container, aiia_status_collector, that runs the collector at the start of
#   every minute (a shell loop; restart policy unless-stopped): nothing but that shell and
#   its sleep stays between runs, and no docker CLI runs each minute (measured in the
#   512 MB VPS: a `docker run` from cron each minute left 16-19 MiB of the CLI's pages
#   in the active page cache, docs/server.md). It changes nothing when that container
#   runs with this script's settings and the image's current build; otherwise it
#   replaces it. `start --check` only says which (exit 0 running as configured, 3 not).
#   `stop` removes it. Each run's lines are
#   appended to logs/status.log, the one file it may write outside its volumes.
#
#   One run reads the box (/proc), every container (the Docker API), nginx's access log
#   since the last run, /health/ of both environments through nginx, PostgreSQL,
#   PgBouncer and Redis, the certificate, logs/deploys.log, the backups and the last
#   restore drill; keeps the minute in SQLite (volume status_history), sends the alerts
#   to SLACK_WEBHOOK_URL of the env file, and writes the devstatus page (volume status).
#   Each run is a new python3 process that exits. `show` (what `fab monitor` runs) reads the same
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
check=
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|run) ;;
  start)
    mode=start
    case "${2:-}" in
      "") ;;
      --check) check=1 ;;
      *) usage; die "unexpected argument '$2' after start (only --check)" ;;
    esac
    ;;
  stop) mode=stop ;;
  show)
    mode=show
    case "${2:-}" in
      "") ;;
      --json) show_args=(--json) ;;
      *) usage; die "unexpected argument '$2' after show (only --json)" ;;
    esac
    ;;
  *) usage; die "unexpected argument '$1': run it without one, or with start, stop or show [--json]" ;;
esac
command -v docker >/dev/null 2>&1 || die "docker not found: install Docker (the server needs only Docker, Compose v2 and git)"
COLLECTOR=aiia_status_collector
if [ "$mode" = stop ]; then
  docker rm -f "$COLLECTOR" >/dev/null 2>&1 || true
  printf 'status.sh: %s removed\n' "$COLLECTOR" >&2
  exit 0
fi
[ -S "$DOCKER_SOCKET" ] || die "no Docker socket at $DOCKER_SOCKET: start the engine (systemctl start docker) or set DOCKER_SOCKET"
image_present() {
  docker image inspect "$STATUS_IMAGE" >/dev/null 2>&1 \
    || die "image $STATUS_IMAGE not found: build it from the checkout (docker compose build backup) or set STATUS_IMAGE"
}
# `start` reads the image's ID itself (a rebuilt image is other settings)
[ "$mode" = start ] || image_present

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
container_opts=(--network "$NETWORK"
  --security-opt no-new-privileges:true --cap-drop ALL
  --memory 48m --read-only --tmpfs /tmp:size=4m
  --user "$(id -u):10002" --group-add "$(stat -c %g "$DOCKER_SOCKET")"
  -v "$DOCKER_SOCKET:/var/run/docker.sock" -v /sys/fs/cgroup:/host/cgroup:ro
  -v "$ROOT:/opt/aiia:ro" -w /opt/aiia -e PYTHONPATH=/opt/aiia -e HOME=/tmp
  -v "$(realpath "$LOG_DIR"):/opt/aiia-logs:ro" "${staging_mount[@]}"
  -v "${VOLUME_PREFIX}status:/var/www/status"
  -v "$HISTORY_VOLUME:/var/lib/aiia-status"
  -v "${VOLUME_PREFIX}nginx_logs:/var/log/aiia-nginx")
collector=(python3 -m opskit.status run --db /var/lib/aiia-status/status.db --page-dir /var/www/status
  --access-log /var/log/aiia-nginx/access.log --nginx "$NGINX" --cgroup-root /host/cgroup
  --deploy-log /opt/aiia-logs/deploys.log "${staging_arg[@]}" --drill-file /opt/aiia-logs/drill.json)

if [ "$mode" = start ]; then
  # The env file is read at every run: inside the checkout (mounted read-only already) it
  # is read through that mount, so an edited file (a new inode) is seen at the next run;
  # a file elsewhere is mounted by itself (run `start` again after replacing it).
  env_real=
  [ -f "$ENV_FILE" ] && env_real=$(realpath "$ENV_FILE")
  case "$env_real" in
    "") ;;
    "$ROOT"/*) env_mount=(); env_arg=(--env-file "/opt/aiia/${env_real#"$ROOT"/}") ;;
  esac
  # one run at the start of every minute, as cron did; its stderr and a failure's exit
  # status appended to logs/status.log; TERM (docker stop) ends the loop between runs
  # shellcheck disable=SC2016 # expanded by the container's shell
  {
  loop='trap "exit 0" TERM INT; while :; do "$@" 2>>/var/log/aiia-status.log'
  loop+=' || echo "status.sh: the collector FAILED (exit $?)" >>/var/log/aiia-status.log;'
  loop+=' sleep $((60 - $(date +%s) % 60)) & wait $!; done'
  }
  args=(--restart unless-stopped "${container_opts[@]}"
    -v "$(realpath "$LOG_DIR")/status.log:/var/log/aiia-status.log"
    "${env_mount[@]}" "${backup_mount[@]}" "$STATUS_IMAGE"
    sh -c "$loop" collector "${collector[@]}" "${env_arg[@]}" "${backup_arg[@]}" "${extra[@]}")
  # the settings it runs with and the image's ID, as a label: `start` replaces a container
  # that has others (a rebuilt image included); two docker calls when nothing changed
  image_id=$(docker image inspect --format '{{.Id}}' "$STATUS_IMAGE" 2>/dev/null || true)
  config=$({ printf '%s\0' "${args[@]}"; printf '%s' "$image_id"; } | sha256sum | cut -c1-16)
  current=$(docker inspect --type container \
    --format '{{.State.Running}} {{index .Config.Labels "aiia.status.config"}}' "$COLLECTOR" \
    2>/dev/null || true)
  if [ -n "$image_id" ] && [ "$current" = "true $config" ]; then
    [ -n "$check" ] || printf 'status.sh: %s runs the collector every minute\n' "$COLLECTOR" >&2
    exit 0
  fi
  if [ -n "$check" ]; then
    printf 'status.sh: %s %s\n' "$COLLECTOR" \
      "$([ -n "$current" ] && echo "runs with other settings or is stopped" || echo "does not exist")" >&2
    exit 3
  fi
  [ -n "$image_id" ] || image_present
  touch "$LOG_DIR/status.log"
  docker rm -f "$COLLECTOR" >/dev/null 2>&1 || true
  docker run -d --name "$COLLECTOR" --label "aiia.status.config=$config" "${args[@]}" >/dev/null
  printf 'status.sh: %s started: the collector runs every minute, its lines in %s\n' \
    "$COLLECTOR" "$LOG_DIR/status.log" >&2
  exit 0
fi

status=0
docker run --rm --name "aiia_status_$$" "${container_opts[@]}" \
  "${env_mount[@]}" "${backup_mount[@]}" \
  "$STATUS_IMAGE" \
  "${collector[@]}" "${env_arg[@]}" "${backup_arg[@]}" "${extra[@]}" \
  2> >(tee -a "$LOG_DIR/status.log" >&2) || status=$?

[ "$status" -eq 0 ] || printf 'status.sh: the collector FAILED (exit %s); see %s\n' "$status" "$LOG_DIR/status.log" >&2
exit "$status"
