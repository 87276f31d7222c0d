#!/usr/bin/env bash
# The operators' guide's manual deploy, run on the server from the environment's checkout:
#
#   cd /home/ubuntu/main/ai-ia-backend && bash scripts/deploy.sh production
#   cd /home/ubuntu/staging/ai-ia-backend && bash scripts/deploy.sh staging
#   tail -f logs/deploy_production_*.log
#
# Usage: scripts/deploy.sh production|staging [--ref REF | --image IMAGE | --rollback [RELEASE]]
#                          [--why TEXT] [--skip-backup] [--health-attempts N]
#                          [--health-interval S] [--extra-ca FILE] [--dry-run]
#
# The same steps as `fab deploy` (opskit/deploy/steps.py): lock, pre-flight, backup, image,
# migrations, a new release started beside the old one and gated on /health/, the nginx
# switch, the deploy log. Everything printed also goes to logs/deploy_<env>_<UTC time>.log.
#
# The host needs only Docker, bash and git (DESIGN.md, decision 5): the deploy engine, which
# is Python, runs in a container of the environment's current application image (it has
# python3 and python-dotenv), this checkout's opskit/ mounted read-only, no network. It
# asks this script for each command it needs (docker, git, df, ...), which runs it here on
# the host, as the user running the script, and hands back the exit code and output
# (the BridgeRunner protocol in opskit/runner.py). Commands and their input travel
# through a private directory (mode 0700) on a tmpfs, so the env file's values that a
# command reads on stdin never touch a disk: /dev/shm, or DEPLOY_EXCHANGE_DIR; when neither
# is a writable tmpfs the script says so and asks before it uses a disk directory.
#
# The engine's vocabulary: this script runs only the programs the engine uses (docker, git,
# df, cat), `sh -c` with one of the engine's own fixed scripts (their SHA-256 below),
# scripts/backup.sh of this checkout and the removal of a deploy build directory. Any
# other request is refused, named in the log, and answered with exit code 126.
set -o errexit -o pipefail -o nounset
# logs and the exchange directory are the operator's alone (0600 files, 0700 directories)
umask 077

usage() { sed -n '8,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { printf 'deploy.sh: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || usage
env=$1
shift
case "$env" in
  production) container=aiia_django_prod ;;
  staging) container=aiia_django_staging ;;
  -h|--help) usage ;;
  *) printf 'deploy.sh: unknown environment %q: use production or staging\n' "$env" >&2; usage ;;
esac
command -v docker >/dev/null || die "docker is not installed on this server"
(( BASH_VERSINFO[0] > 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 4) )) \
  || die "bash 4.4 or newer is needed (mapfile -d)"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -f "$root/opskit/deploy/__init__.py" ] || die "$root is not a checkout of the project (no opskit/)"
mkdir -p "$root/logs"
chmod 700 "$root/logs"
log="$root/logs/deploy_${env}_$(date -u +%Y%m%d_%H%M%S).log"
exec 2> >(tee -a "$log" >&2)
printf 'deploy.sh: %s, logging to %s\n' "$env" "$log" >&2

# the engine runs from the image the environment serves now (the first deploy after
# `docker compose up` finds compose's); it only needs python3 and python-dotenv from it
image=$(docker inspect --type container --format '{{.Image}}' "$container" 2>/dev/null) \
  || image=$(docker image inspect --format '{{.Id}}' "aiia/app:$env" 2>/dev/null) \
  || die "no application image: neither $container runs nor aiia/app:$env exists (docker compose up first)"

# the exchange directory: memory only, unless the operator agrees to a disk
on_tmpfs() { [ "$(stat -f -c %T "$1" 2>/dev/null)" = tmpfs ]; }
shm=${DEPLOY_EXCHANGE_DIR:-/dev/shm}
if ! { [ -d "$shm" ] && [ -w "$shm" ] && on_tmpfs "$shm"; }; then
  disk=${TMPDIR:-/tmp}
  printf 'deploy.sh: %s is not a writable tmpfs; the commands the engine hands over, with
' "$shm" >&2
  printf '  values of the env file on their stdin, would be written to a disk (%s)
' "$disk" >&2
  if [ -t 0 ]; then
    read -r -p "Use $disk on disk for this deploy? Type 'yes' to go on: " answer
    [ "$answer" = yes ] || die "stopped: nothing was changed (set DEPLOY_EXCHANGE_DIR to a writable tmpfs)"
  else
    die "no terminal to ask on: set DEPLOY_EXCHANGE_DIR to a writable tmpfs (mount -t tmpfs), or run from a terminal to agree to $disk"
  fi
  shm=$disk
fi
bridge=$(mktemp -d "$shm/aiia-deploy.XXXXXX")
chmod 700 "$bridge"
engine_pid=
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$engine_pid" ]; then kill "$engine_pid" 2>/dev/null || true; fi
  rm -rf -- "$bridge"
}
trap cleanup EXIT

who="${SUDO_USER:-${USER:-$(id -un)}}@$(hostname) (scripts/deploy.sh)"
# The engine needs no network but to deliver the Slack-compatible webhook: when the
# checkout's env file sets SLACK_WEBHOOK_URL it gets Docker's default bridge (outbound
# only, no stack network); otherwise none. The URL itself stays in the env file.
network=none
if grep -qsE '^[[:space:]]*SLACK_WEBHOOK_URL=["'"'"']?[^[:space:]"'"'"'#]' "$root/.env"; then
  network=bridge
fi
coproc ENGINE {
  docker run --rm -i --network "$network" --read-only --user "$(id -u):$(id -g)" \
    --memory 96m --cap-drop ALL --security-opt no-new-privileges:true --no-healthcheck \
    -v "$root/opskit:/opt/aiia/opskit:ro" -v "$bridge:$bridge" \
    -e PYTHONPATH=/opt/aiia -e PYTHONDONTWRITEBYTECODE=1 -w /opt/aiia \
    --entrypoint python "$image" -m opskit.deploy "$env" \
    --path "$root" --bridge "$bridge" --who "$who" --holder-pid "$$" "$@"
}
# shellcheck disable=SC2153 # set by coproc
engine_pid=$ENGINE_PID
to_engine=${ENGINE[1]}
from_engine=${ENGINE[0]}
# Ctrl-C reaches the engine too (docker run forwards it): it stops, removes what it
# started and releases the lock, through this loop, which therefore keeps running
trap 'printf "deploy.sh: interrupted; the deploy cleans up and stops\n" >&2' INT TERM

# SHA-256 of each fixed script the engine runs with `sh -c` (opskit/commands/lock.py,
# opskit/commands/deploy.py, opskit/remote/history.py); tests/unit/test_deploy_script.py
# prints this list when the engine's scripts change
ENGINE_SCRIPTS="
09e144403e885f49d88e410c959750592e31194771c33a5bb0649691e9ec5aad
65df3517f97b69b3c544a76c4a8dba512adcd918acf738d04b332c09470676db
71b1146502890f51917621e8643d0b53c2fffff49b8e2e8b5f5d6f996bb58946
a0961756cf272b9a7092dfe395fd475b1eb654a3a1cdf28f2406b69f2752d4bc
ac5318568df7d93b64ce43361752db8150fcc6d7cb51c41f32f755a0b38626b0
bb14dd15482d9ec6be94559b080986647ba02f9198ec4c0ba8417804ec4ecdaf
bea03dde8010c8db14f314496fb945f69113253189d98c35b9f64d42213c419d
fbb9d26ab66c9025c6cadafd2196e1c05f2de2afd903be053d3dfb5a40e93043
"

# Is argv a request of the engine's vocabulary?
allowed() {
  case "${argv[0]}" in
    docker | git | df | cat) return 0 ;;
    sh)
      [ "${#argv[@]}" -ge 3 ] && [ "${argv[1]}" = -c ] || return 1
      local sum
      sum=$(printf '%s' "${argv[2]}" | sha256sum | cut -d' ' -f1)
      case "$ENGINE_SCRIPTS" in *"$sum"*) return 0 ;; esac
      ;;
    bash) [ "${#argv[@]}" -eq 3 ] && [ "${argv[1]}" = "$root/scripts/backup.sh" ] && return 0 ;;
    rm)
      if [ "${#argv[@]}" -eq 4 ] && [ "${argv[1]}" = -rf ] && [ "${argv[2]}" = -- ]; then
        case "${argv[3]}" in "$root"/.deploy/build/*/* | *..*) ;; "$root"/.deploy/build/?*) return 0 ;; esac
      fi
      ;;
  esac
  return 1
}

status=
while IFS=' ' read -r verb n limit <&"$from_engine"; do
  case "$verb" in
    run)
      mapfile -d '' -t argv < "$bridge/$n.argv"
      if [ "${#argv[@]}" -eq 0 ] || ! allowed; then
        shown=$(printf '%q ' "${argv[@]:0:3}")
        printf 'deploy.sh: REFUSED a command outside the deploy engine'"'"'s vocabulary: %s\n' "${shown% }" >&2
        printf 'deploy.sh refused %s: not in the deploy engine'"'"'s vocabulary\n' "${argv[0]:-(empty)}" > "$bridge/$n.err"
        : > "$bridge/$n.out"
        rm -f -- "$bridge/$n.in"
        printf 'done %s 126\n' "$n" >&"$to_engine"
        continue
      fi
      wrap=()
      if [ "$limit" != 0 ]; then wrap=(timeout "$limit"); fi
      set +o errexit
      "${wrap[@]}" "${argv[@]}" < "$bridge/$n.in" > "$bridge/$n.out" 2> "$bridge/$n.err"
      rc=$?
      set -o errexit
      rm -f -- "$bridge/$n.in"
      printf 'done %s %s\n' "$n" "$rc" >&"$to_engine"
      ;;
    exit)
      status=$n
      break
      ;;
    *)
      die "unexpected request from the deploy engine: $verb"
      ;;
  esac
done
wait "$engine_pid" 2>/dev/null || true
engine_pid=
[ -n "$status" ] || die "the deploy engine stopped without an answer (see the log above)"
exit "$status"
