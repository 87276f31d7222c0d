"""The vps tier's servers: containers that behave like fresh 512 MB / 2 vCPU Debian 12 VPS.

A VPS here is systemd as PID 1 with sshd and nothing else, run with the flags of the
recipe the project verified on this engine (see `RUN_FLAGS`): its inner Docker engine,
once something installs one, keeps its containers inside the VPS's own 512 MB because
the harness writes `/etc/docker/daemon.json` with `cgroup-parent` before anything else
runs, as a cloud image's vendor config would.

Use it through the session fixtures of tests/harness/fixtures_vps.py:

- `vps_cluster`: a `Cluster` (one user-defined network per test session);
  `vps_cluster.boot("web1")` boots a VPS once per session and returns the same `VPS`
  on every later call; `boot(name, docker=True)` starts from an image that already has
  Debian's docker.io (for tiers that are not about provisioning, such as Swarm).
- `vps_cluster.registry`: a `Registry` container on the same network (Debian's
  docker-registry). `registry.push("aiia/app:v1")` pushes an image of this engine and
  returns the reference a VPS pulls (`registry:5000/aiia/app:v1`); every VPS trusts it
  (`insecure-registries`).
- `vps`: the bare VPS the setup tests provision (`vps_cluster.boot("server")`).

A `VPS` gives `ssh_port`, `http_port`, `https_port` (published on 127.0.0.1), `ip` on
the network, `connection()` (Fabric, as root with a generated key), `fab_argv(...)`,
`exec(...)` (docker exec, for the harness's own look inside) and `memory()` (its
cgroup's usage, limit and OOM kills, read on this machine).

Names carry a per-session id, so sessions running at once on one engine never collide;
everything is labelled with the session and the pid of the test process, removed at the
end of the session, removed by a reaper process if the test process dies, and removed
at the start of a later session if both of those failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.core import (
    PrerequisiteError,
    Service,
    free_port,
    port_open,
    wait_until,
)

HERE = Path(__file__).resolve().parent / "vps"
BASE = "debian:bookworm-slim"
LABEL = "org.eduaiia.test.vps"
MEMORY = "512m"
CPUS = "2"
REGISTRY_ALIAS = "registry"
REGISTRY_PORT = 5000
BOOT_TIMEOUT_S = 90
BUILD_TIMEOUT_S = 900

# The recipe of the VPS container (verified on this engine): not --privileged, whose
# capability set this host's runtime cannot grant; all capabilities but SYS_RESOURCE,
# the host's cgroups mounted read-write with the host's cgroup namespace (so the inner
# engine can nest its containers under the VPS's cgroup), and /var/lib/docker on a volume
# (overlay on overlay fails). No swap: --memory-swap equals --memory.
RUN_FLAGS = (
    "--memory", MEMORY, "--memory-swap", MEMORY, "--cpus", CPUS,
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-e", "container=docker",
)  # fmt: skip


def docker(*args: str, check: bool = True, timeout: float = 120, input=None):
    proc = subprocess.run(
        ["docker", *args], capture_output=True, timeout=timeout, input=input,
        text=not isinstance(input, bytes),
    )  # fmt: skip
    if check and proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        raise PrerequisiteError(
            f"docker {' '.join(args[:6])} failed ({proc.returncode}):\n{err[-3000:]}"
        )
    return proc


def _image_tag(name: str, *parts: str) -> str:
    """A tag that changes when the Dockerfile, its files, the base or the args change."""
    h = hashlib.sha256()
    base_id = docker("image", "inspect", "--format", "{{.Id}}", BASE).stdout.strip()
    h.update(base_id.encode())
    for path in sorted(HERE.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    for part in parts:
        h.update(part.encode())
    return f"{name}:{h.hexdigest()[:12]}"


def build_image(name: str, dockerfile: str, **args: str) -> str:
    """Build (once per content) an image of tests/harness/vps/ from the one base image."""
    if subprocess.run(["docker", "image", "inspect", BASE], capture_output=True).returncode:
        raise PrerequisiteError(f"{BASE} missing: run scripts/ensure.sh base-image")
    tag = _image_tag(name, dockerfile, *(f"{k}={v}" for k, v in sorted(args.items())))
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    argv = ["build", "-q", "-t", tag, "-f", str(HERE / dockerfile)]
    for key, value in args.items():
        argv += ["--build-arg", f"{key}={value}"]
    # the legacy builder: these images need no build secret, and `docker build` with
    # BuildKit needs the buildx plugin, which Debian's engine does not ship
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    proc = subprocess.run(
        ["docker", *argv, str(HERE)], capture_output=True, text=True, env=env,
        timeout=BUILD_TIMEOUT_S,
    )  # fmt: skip
    if proc.returncode != 0:
        raise PrerequisiteError(
            f"building {tag} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return tag


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vps-test", "-f", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> None:
    """Remove what sessions whose test process is gone left behind (killed with -9)."""
    fmt = '{{.ID}} {{.Label "' + LABEL + '.pid"}}'
    rows = docker("ps", "-a", "--filter", f"label={LABEL}.pid", "--format", fmt).stdout.split("\n")
    dead_sessions = set()
    for row in filter(None, rows):
        cid, _, pid = row.partition(" ")
        if pid.isdigit() and not _pid_alive(int(pid)):
            label = docker("inspect", "--format", '{{index .Config.Labels "' + LABEL + '"}}', cid)
            dead_sessions.add(label.stdout.strip())
    for session in dead_sessions:
        if session:
            _remove_session(session)


def _remove_session(session: str) -> None:
    flt = f"label={LABEL}={session}"
    ids = docker("ps", "-aq", "--filter", flt, check=False).stdout.split()
    if ids:
        docker("rm", "-f", "-v", *ids, check=False, timeout=180)
    vols = docker("volume", "ls", "-q", "--filter", flt, check=False).stdout.split()
    if vols:
        docker("volume", "rm", "-f", *vols, check=False)
    nets = docker("network", "ls", "-q", "--filter", flt, check=False).stdout.split()
    if nets:
        docker("network", "rm", *nets, check=False)


def oom_kills(cgroup: str) -> int:
    """OOM kills of processes in `cgroup` or below, from the kernel's log.

    cgroup v1 counts a kill only in the victim's own cgroup (memory.oom_control), which
    an inner container's `--rm` removes with it; the kernel's `oom-kill:` line names the
    victim's cgroup path and stays.
    """
    proc = subprocess.run(["dmesg"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PrerequisiteError(f"dmesg failed: {proc.stderr.strip()}")
    marks = (f"task_memcg={cgroup},", f"task_memcg={cgroup}/")
    return sum(
        1
        for line in proc.stdout.splitlines()
        if "oom-kill:" in line and any(m in line for m in marks)
    )


@dataclass
class Memory:
    usage_bytes: int
    limit_bytes: int
    max_usage_bytes: int
    oom_kills: int

    @property
    def usage_mb(self) -> float:
        return self.usage_bytes / 2**20


@dataclass
class VPS:
    """One VPS container: its name, id, ports on 127.0.0.1 and SSH access as root."""

    name: str
    container: str
    id: str
    ip: str
    ssh_port: int
    http_port: int
    https_port: int
    key_filename: str
    known_hosts: str
    user: str = "root"

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1:{self.ssh_port}"

    def connection(self, user: str | None = None, **kwargs):
        """A Fabric connection to the VPS's published SSH port."""
        from fabric import Config, Connection

        kwargs.setdefault("config", Config(overrides={"run": {"in_stream": False}}))
        return Connection(
            "127.0.0.1",
            user=user or self.user,
            port=self.ssh_port,
            connect_kwargs={
                "key_filename": [self.key_filename],
                "look_for_keys": False,
                "allow_agent": False,
            },
            **kwargs,
        )

    def fab_argv(self, *args: str, user: str | None = None) -> list[str]:
        """argv of `fab -H user@127.0.0.1:PORT -i KEY ARGS` with the project's fab."""
        from tests.harness.core import ROOT

        fab = str(ROOT / ".venv" / "bin" / "fab")
        return [fab, "-H", f"{user or self.user}@127.0.0.1:{self.ssh_port}",
                "-i", self.key_filename, *args]  # fmt: skip

    def exec(self, *argv: str, input=None, check: bool = True, timeout: float = 300):
        """Run argv inside the VPS as root (the harness's own look, not the operator's)."""
        flags = ["-i"] if input is not None else []
        return docker("exec", *flags, self.container, *argv, input=input, check=check,
                      timeout=timeout)  # fmt: skip

    def sh(self, script: str, check: bool = True, timeout: float = 300):
        return self.exec("sh", "-c", script, check=check, timeout=timeout)

    def cgroup_dir(self, controller: str = "memory") -> Path:
        """The VPS's cgroup on this machine (cgroup v1, cgroupfs driver: /docker/<id>)."""
        return Path("/sys/fs/cgroup") / controller / "docker" / self.id

    def memory(self) -> Memory:
        """Usage, limit and peak of the VPS's cgroup, and the OOM kills inside it."""
        d = self.cgroup_dir()

        def num(name: str) -> int:
            return int((d / name).read_text().split()[0])

        return Memory(
            num("memory.usage_in_bytes"),
            num("memory.limit_in_bytes"),
            num("memory.max_usage_in_bytes"),
            oom_kills(f"/docker/{self.id}"),
        )

    def daemon_json(self) -> dict:
        out = self.exec("cat", "/etc/docker/daemon.json").stdout
        return json.loads(out)


@dataclass
class Registry:
    """docker-registry on the VPS network, published on 127.0.0.1 for pushes from here."""

    container: str
    port: int
    inner: str = f"{REGISTRY_ALIAS}:{REGISTRY_PORT}"

    @property
    def outer(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push(self, image: str, name: str | None = None) -> str:
        """Push an image of this engine; returns the reference a VPS pulls it by."""
        if name is None:
            first, _, rest = image.partition("/")
            # drop a registry host (it has a dot or a port) from the name
            name = rest if rest and ("." in first or ":" in first) else image
        if ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"
        outer = f"{self.outer}/{name}"
        docker("tag", image, outer)
        docker("push", "--quiet", outer, timeout=900)
        docker("image", "rm", outer, check=False)
        return f"{self.inner}/{name}"


@dataclass
class Pebble:
    """pebble (Let's Encrypt's test CA) and pebble-challtestsrv in one container.

    Its DNS answers every name with the target VPS's address, so pebble validates each
    HTTP-01 challenge by a real request to that VPS's port 80. certbot reaches the ACME
    directory by IP (`directory_url`) and trusts its listener with `listener_ca`.
    """

    container: str
    ip: str
    listener_ca: str  # PEM text
    management_port: int  # published on 127.0.0.1

    @property
    def directory_url(self) -> str:
        return f"https://{self.ip}:14000/dir"

    def roots(self) -> str:
        """PEM of pebble's issuing root (it changes with every start of pebble)."""
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cadata=self.listener_ca)
        ctx.check_hostname = False
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as r:  # noqa: S310 - loopback
            return r.read().decode()


@dataclass
class Cluster:
    """VPS containers on one user-defined network, each booted once per session."""

    base: Path
    session: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    network: str = ""
    vps: dict[str, VPS] = field(default_factory=dict)
    _registry: Registry | None = None
    _pebble: Pebble | None = None
    _reaper: Service | None = None
    key_filename: str = ""

    def __post_init__(self) -> None:
        self.network = f"aiia-vps-{self.session}"

    def labels(self) -> list[str]:
        return ["--label", f"{LABEL}={self.session}", "--label", f"{LABEL}.pid={os.getpid()}"]

    def start(self) -> Cluster:
        if not shutil.which("ssh-keygen"):
            raise PrerequisiteError("ssh-keygen missing: run scripts/ensure.sh packages")
        if not Path("/sys/fs/cgroup/memory/docker").is_dir():
            raise PrerequisiteError(
                "the VPS recipe needs the engine's cgroup v1 memory hierarchy at "
                "/sys/fs/cgroup/memory/docker (cgroupfs driver)"
            )
        remove_leftovers()
        key = self.base / "id_ed25519"
        _keygen(key)
        self.key_filename = str(key)
        docker("network", "create", *self.labels(), self.network)
        # if this process dies without its teardown, the reaper (which dies with it)
        # removes the session's containers, volumes and network
        flt = f"label={LABEL}={self.session}"
        script = (
            "cleanup() { "
            f'ids=$(docker ps -aq --filter {flt}); [ -n "$ids" ] && docker rm -f -v $ids; '
            f"vols=$(docker volume ls -q --filter {flt}); "
            '[ -n "$vols" ] && docker volume rm -f $vols; '
            f"docker network rm {self.network}; exit 0; }}; "
            "trap cleanup TERM INT; while :; do sleep 3600 & wait $!; done"
        )
        self._reaper = Service(["sh", "-c", script], log=self.base / "reaper.log").start()
        return self

    def stop(self) -> None:
        _remove_session(self.session)
        if self._reaper is not None:
            # it would only find nothing left to remove
            self._reaper.stop(timeout=5)

    # --- the registry ----------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            image = build_image("aiia-vps-registry", "Dockerfile.registry")
            name = f"aiia-vps-{self.session}-registry"
            port = free_port()
            docker("run", "-d", "--name", name, *self.labels(), "--network", self.network,
                   "--network-alias", REGISTRY_ALIAS, "--memory", "128m",
                   "-p", f"127.0.0.1:{port}:{REGISTRY_PORT}", image)  # fmt: skip
            wait_until(lambda: self._registry_answers(port), timeout=30, what=f"registry {name}")
            self._registry = Registry(name, port)
        return self._registry

    @staticmethod
    def _registry_answers(port: int) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:  # noqa: S310 - loopback
                return r.status == 200
        except OSError:
            return False

    # --- ACME -------------------------------------------------------------------------

    def pebble(self, target: VPS) -> Pebble:
        """A pebble whose DNS points every name at `target` (one per session)."""
        if self._pebble is not None:
            return self._pebble
        from opskit import tls

        image = build_image("aiia-vps-pebble", "Dockerfile.pebble")
        name = f"aiia-vps-{self.session}-pebble"
        cfg = self.base / "pebble"
        cfg.mkdir()
        cfg.chmod(0o755)
        mgmt = free_port()
        # pebble starts once its config is there: the listener's certificate names the
        # container's address, known only after it joined the network
        script = (
            "while [ ! -f /cfg/ready ]; do sleep 0.2; done; "
            "pebble-challtestsrv -dns01 :8053 -defaultIPv4 \"$(cat /cfg/target)\" -defaultIPv6 '' "
            "-http01 '' -https01 '' -tlsalpn01 '' -management :8055 & "
            "exec pebble -config /cfg/pebble.json -dnsserver 127.0.0.1:8053"
        )
        docker("run", "-d", "--name", name, *self.labels(), "--network", self.network,
               "--network-alias", "pebble", "--memory", "128m",
               "-e", "PEBBLE_VA_NOSLEEP=1", "-e", "PEBBLE_WFE_NONCEREJECT=0",
               "-v", f"{cfg}:/cfg:ro", "-p", f"127.0.0.1:{mgmt}:15000",
               image, "sh", "-c", script)  # fmt: skip
        info = json.loads(docker("inspect", name).stdout)[0]
        ip = info["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        ca = tls.create_ca("pebble listener test CA")
        leaf = tls.issue_leaf(ca, [ip, "pebble", "127.0.0.1"])
        (cfg / "cert.pem").write_bytes(leaf.cert_pem())
        (cfg / "key.pem").write_bytes(leaf.key_pem())
        (cfg / "key.pem").chmod(0o644)  # a throwaway test key, read by the container's nobody
        config = {
            "pebble": {
                "listenAddress": "0.0.0.0:14000",
                "managementListenAddress": "0.0.0.0:15000",
                "certificate": "/cfg/cert.pem",
                "privateKey": "/cfg/key.pem",
                "httpPort": 80,
                "tlsPort": 443,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (cfg / "pebble.json").write_text(json.dumps(config))
        (cfg / "target").write_text(target.ip)
        (cfg / "ready").write_text("")
        pem = ca.cert_pem().decode()
        self._pebble = Pebble(name, ip, pem, mgmt)
        wait_until(lambda: self._pebble_answers(self._pebble), timeout=30, what="pebble")
        return self._pebble

    @staticmethod
    def _pebble_answers(p: Pebble) -> bool:
        try:
            return "BEGIN CERTIFICATE" in p.roots()
        except OSError:
            return False

    # --- VPS -------------------------------------------------------------------------

    def boot(self, name: str, *, docker_installed: bool = False) -> VPS:
        """The VPS called `name` in this session, booted on first use."""
        if name in self.vps:
            return self.vps[name]
        args = {"EXTRA_PACKAGES": "docker.io"} if docker_installed else {}
        image = build_image("aiia-vps", "Dockerfile", **args)
        container = f"aiia-vps-{self.session}-{name}"
        volume = f"{container}-docker"
        docker("volume", "create", *self.labels(), volume)
        ssh_port, http_port, https_port = free_port(), free_port(), free_port()
        docker(
            "run", "-d", "--name", container, "--hostname", name, *self.labels(),
            *RUN_FLAGS,
            "--network", self.network, "--network-alias", name,
            "-v", f"{volume}:/var/lib/docker",
            "-p", f"127.0.0.1:{ssh_port}:22",
            "-p", f"127.0.0.1:{http_port}:80",
            "-p", f"127.0.0.1:{https_port}:443",
            image,
        )  # fmt: skip
        info = json.loads(docker("inspect", container).stdout)[0]
        cid = info["Id"]
        ip = info["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        self._wait_booted(container)
        # what a cloud image's vendor config would hold: the inner engine nests its
        # containers in this VPS's cgroup, and trusts the test registry
        daemon = {
            "cgroup-parent": f"/docker/{cid}",
            "insecure-registries": [f"{REGISTRY_ALIAS}:{REGISTRY_PORT}"],
        }
        docker("exec", "-i", container, "sh", "-c",
               "mkdir -p /etc/docker && cat > /etc/docker/daemon.json",
               input=json.dumps(daemon, indent=2) + "\n")  # fmt: skip
        if docker_installed:
            docker("exec", container, "systemctl", "restart", "docker", timeout=120)
        pub = Path(self.key_filename + ".pub").read_text()
        docker("exec", "-i", container, "sh", "-c",
               "install -d -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys "
               "&& chmod 600 /root/.ssh/authorized_keys", input=pub)  # fmt: skip
        wait_until(lambda: port_open("127.0.0.1", ssh_port), timeout=30, what=f"{name} ssh")
        known = self.base / f"known_hosts-{name}"
        host_key = docker("exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
        kind, blob = host_key.stdout.split()[:2]
        known.write_text(f"[127.0.0.1]:{ssh_port} {kind} {blob}\n")
        vps = VPS(name, container, cid, ip, ssh_port, http_port, https_port,
                  self.key_filename, str(known))  # fmt: skip
        wait_until(lambda: _ssh_ok(vps), timeout=30, what=f"{name}: ssh root@127.0.0.1:{ssh_port}")
        self.vps[name] = vps
        return vps

    @staticmethod
    def _wait_booted(container: str) -> None:
        def state() -> bool:
            proc = docker("exec", container, "systemctl", "is-system-running", check=False)
            out = proc.stdout.strip()
            if out == "degraded":
                failed = docker("exec", container, "systemctl", "--failed", "--no-legend",
                                check=False).stdout  # fmt: skip
                raise PrerequisiteError(f"{container} booted degraded:\n{failed}")
            return out == "running"

        try:
            wait_until(state, timeout=BOOT_TIMEOUT_S, what=f"{container} (systemd)", interval=0.5)
        except TimeoutError:
            logs = docker("logs", "--tail", "40", container, check=False)
            raise PrerequisiteError(
                f"{container} did not boot: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"
            ) from None


def _ssh_ok(vps: VPS) -> bool:
    with vps.connection() as c:
        return c.run("true", hide=True, warn=True, timeout=10).ok
