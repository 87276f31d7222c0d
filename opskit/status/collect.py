"""One run of the collector: read everything once, keep it, alert on it, write the page.

The same `collect` serves `python -m opskit.status run` (every minute, in the container
scripts/status.sh start keeps), `inv monitor` and `fab monitor`. A source that cannot
be read becomes a line in `problems` and a grey card, never a crash: the page and the
alerts still go out.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opskit.status import accesslog, cgroups, procfs
from opskit.status import rules as R
from opskit.status.docker_api import Docker, DockerError

MIB = 1024 * 1024
PREFIX = "aiia_"
DOMAINS = {"production": "eduaiia.com", "staging": "staging.eduaiia.com"}
DJANGO = {"production": "aiia_django_prod", "staging": "aiia_django_staging"}
NGINX = "aiia_nginx"
# the data services probed in their containers, by kind
SERVICES = {"postgresql": "aiia_postgresql", "pgbouncer": "aiia_pgbouncer", "redis": "aiia_redis"}
USER_AGENT = "aiia-status/1"
# rotate nginx's access log past this size (then USR1: nginx reopens it)
ROTATE_BYTES = 16 * MIB

SECRET_PATTERNS = (
    # NAME=value / NAME: value for names that hold secrets
    re.compile(
        r"(?i)\b([A-Z0-9_]*(?:PASSWORD|SECRET|TOKEN|PASSWD|API_?KEY)[A-Z0-9_]*\s*[=:]\s*)(\S+)"
    ),
    re.compile(r"(?i)(authorization:\s*(?:basic|bearer)\s+)(\S+)"),
    re.compile(r"(://[^/\s:@]+:)([^@\s/]+)(@)"),
    re.compile(r"(?i)(hooks\.slack\.com/services/)(\S+)"),
)


def mask(line: str) -> str:
    for pattern in SECRET_PATTERNS:
        line = pattern.sub(
            lambda m: m.group(1) + "***" + (m.group(3) if m.lastindex == 3 else ""), line
        )
    return line


@dataclass
class Options:
    db: Path
    page_dir: Path | None = None
    access_log: Path | None = None
    deploy_logs: Sequence[Path] = ()
    backup_dir: Path | None = None
    drill_file: Path | None = None
    nginx_host: str = "nginx"
    nginx_port: int = 443
    domains: dict[str, str] = field(default_factory=lambda: dict(DOMAINS))
    prefix: str = PREFIX
    proc: Path = Path("/proc")
    disk_path: Path = Path("/")
    docker_socket: str = "/var/run/docker.sock"
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # containers of the collector itself (scripts/status.sh) are not services
    own_prefix: str = "aiia_status_"
    webhook: object = None  # a Secret, or None: alerts are only logged
    rotate_bytes: int = ROTATE_BYTES
    services: dict[str, str] = field(default_factory=lambda: dict(SERVICES))
    log_lines: int = 50


@dataclass
class Container:
    name: str
    status: str
    health: str
    memory_used: int
    memory_limit: int
    cpu_percent: float | None
    restarts: int
    oom_killed: bool
    started_at: str = ""


@dataclass
class Probe:
    name: str
    status: str  # green | yellow | red | grey
    summary: str


@dataclass
class Snapshot:
    now: float
    cpu: float | None = None
    mem_mb: float | None = None
    mem_total_mb: float | None = None
    swap_mb: float | None = None
    disk_pct: float | None = None
    load1: float | None = None
    containers: list[Container] = field(default_factory=list)
    uptime: dict[str, tuple[bool, float, str]] = field(default_factory=dict)
    services: list[Probe] = field(default_factory=list)
    cert_days: int | None = None
    cert_name: str = ""
    deploys: list[dict] = field(default_factory=list)
    backups: dict[str, float | None] = field(default_factory=dict)  # env -> age in hours
    drill: dict | None = None
    requests: dict[int, accesslog.Minute] = field(default_factory=dict)
    logs: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --- sources ---------------------------------------------------------------------------


def _box(snap: Snapshot, opts: Options, state: dict) -> None:
    try:
        box = procfs.read(opts.proc, opts.disk_path)
    except (OSError, ValueError) as exc:
        snap.problems.append(f"/proc: {exc}")
        return
    before = state.get("cpu_times")
    prev = procfs.CpuTimes(*before) if before else None
    snap.cpu = procfs.cpu_percent(prev, box.cpu)
    state["cpu_times"] = [box.cpu.busy, box.cpu.total]
    snap.mem_mb = box.memory.used / MIB
    snap.mem_total_mb = box.memory.total / MIB
    snap.swap_mb = box.memory.swap_used / MIB
    snap.disk_pct = box.disk.percent
    snap.load1 = box.load1


def _memory_used(stats: dict) -> int:
    mem = stats.get("memory_stats") or {}
    usage = int(mem.get("usage") or 0)
    inner = mem.get("stats") or {}
    # what `docker stats` shows: usage less the inactive page cache (cgroup v1 and v2)
    cache = inner.get("total_inactive_file", inner.get("inactive_file", 0))
    return max(usage - int(cache or 0), 0)


def _containers(snap: Snapshot, opts: Options, docker: Docker, state: dict) -> None:
    try:
        found = docker.containers(opts.prefix)
    except DockerError as exc:
        snap.problems.append(f"docker: {exc}")
        return
    prev_cpu = state.get("container_cpu", {})
    real_now = time.time()
    cpu_now = {}
    for c in found:
        name = c["Name"].lstrip("/")
        if name.startswith(opts.own_prefix):
            continue
        st = c.get("State") or {}
        used, cpu = 0, None
        if st.get("Running"):
            try:
                used, total = cgroups.usage(
                    opts.cgroup_root, c["Id"], (c.get("HostConfig") or {}).get("CgroupParent") or ""
                )
                if used is None or total is None:
                    stats = docker.stats(name)
                    used = _memory_used(stats)
                    cpu_usage = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
                    total = int(cpu_usage.get("total_usage") or 0)
                cpu_now[name] = [total, real_now, st.get("StartedAt", "")]
                before = prev_cpu.get(name)
                if before and before[2] == st.get("StartedAt", "") and real_now > before[1]:
                    # per core, like docker stats: 200 % is both cores of the box
                    cpu = 100.0 * (total - before[0]) / ((real_now - before[1]) * 1e9)
            except DockerError as exc:
                snap.problems.append(f"stats {name}: {exc}")
        snap.containers.append(
            Container(
                name,
                st.get("Status", "unknown"),
                ((st.get("Health") or {}).get("Status")) or "",
                used,
                int(((c.get("HostConfig") or {}).get("Memory")) or 0),
                cpu,
                int(c.get("RestartCount") or 0),
                bool(st.get("OOMKilled")),
                st.get("StartedAt", ""),
            )
        )
    state["container_cpu"] = cpu_now


def _service_probes(snap: Snapshot, opts: Options, docker: Docker) -> None:
    from opskit import health
    from opskit.commands import probes

    running = {c.name for c in snap.containers if c.status == "running"}
    kinds = {
        "postgresql": (probes.postgres_connections(), health.postgres_check),
        "pgbouncer": (probes.pgbouncer_pools(), health.pgbouncer_check),
        "redis": (probes.redis_info("memory"), health.redis_check),
    }
    for name, container in opts.services.items():
        argv, parse = kinds[name]
        if container not in running:
            snap.services.append(Probe(name, "red", f"{container} is not running"))
            continue
        try:
            out = docker.exec(container, argv)
            if not out.ok:
                text = (out.stderr or out.stdout).strip().splitlines()
                snap.services.append(
                    Probe(name, "red", f"probe failed: {text[-1] if text else out.exit_code}")
                )
                continue
            check = parse(out.stdout, name)
            snap.services.append(Probe(name, check.status, check.summary))
        except (DockerError, health.ProbeError, KeyError) as exc:
            snap.services.append(Probe(name, "grey", f"probe failed: {exc}"))


def http_health(
    host: str, port: int, server_name: str, timeout_s: float = 5.0
) -> tuple[bool, float, str, bytes | None]:
    """GET /health/ through nginx as a visitor would: (ok, ms, detail, certificate DER)."""
    # only availability and the certificate's dates are read: a test CA or an expired
    # certificate must be reported, not refused. No CA store is loaded for a check that
    # verifies nothing (create_default_context() loads the system's: 1 MiB a probe, each
    # minute; measured in the backup image's python3)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    der = None
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                der = tls.getpeercert(binary_form=True)
                tls.sendall(
                    f"GET /health/ HTTP/1.1\r\nHost: {server_name}\r\nUser-Agent: {USER_AGENT}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                data = b""
                while len(data) < 65536:
                    chunk = tls.recv(8192)
                    if not chunk:
                        break
                    data += chunk
    except (OSError, ssl.SSLError) as exc:
        return False, (time.monotonic() - started) * 1000, f"{type(exc).__name__}: {exc}", der
    ms = (time.monotonic() - started) * 1000
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return code == 200, ms, f"HTTP {code or '?'} in {ms:.0f} ms", der


def _tlv(data: bytes, i: int) -> tuple[int, int, int]:
    """One DER element at `i`: (tag, start of its content, end of its content)."""
    tag, length, start = data[i], data[i + 1], i + 2
    if length & 0x80:
        n = length & 0x7F
        length, start = int.from_bytes(data[i + 2 : i + 2 + n], "big"), i + 2 + n
    return tag, start, start + length


def not_after(der: bytes) -> dt.datetime:
    """A certificate's notAfter, read from its DER with no library: the cryptography
    package alone would cost this job a third of its 20 MB."""
    _, start, _ = _tlv(der, 0)  # Certificate
    _, i, _ = _tlv(der, start)  # tbsCertificate
    tag, _, end = _tlv(der, i)
    if tag == 0xA0:  # [0] version
        i = end
    for _ in range(3):  # serialNumber, signature, issuer
        i = _tlv(der, i)[2]
    _, validity, _ = _tlv(der, i)
    after = _tlv(der, validity)[2]  # past notBefore
    tag, start, end = _tlv(der, after)
    fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"  # UTCTime / GeneralizedTime
    return dt.datetime.strptime(der[start:end].decode(), fmt).replace(tzinfo=dt.UTC)


def _uptime(snap: Snapshot, opts: Options) -> None:
    for env, name in opts.domains.items():
        ok, ms, detail, der = http_health(opts.nginx_host, opts.nginx_port, name)
        snap.uptime[env] = (ok, ms, detail)
        if der and snap.cert_days is None:
            try:
                left = not_after(der) - dt.datetime.fromtimestamp(snap.now, dt.UTC)
                snap.cert_days = left.days
                snap.cert_name = name
            except (IndexError, ValueError) as exc:
                snap.problems.append(f"certificate: {exc}")


def read_deploys(paths: Sequence[Path], last: int = 10) -> list[dict]:
    entries = []
    for path in paths:
        for line in accesslog.tail(Path(path), last):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "when" in row:
                entries.append(row)
    return sorted(entries, key=lambda r: r.get("when", ""))[-last:]


def _backups(snap: Snapshot, opts: Options) -> None:
    if opts.backup_dir is None:
        return
    from opskit.backup import rotation

    try:
        sets = rotation.inspect(opts.backup_dir)
    except OSError as exc:
        snap.problems.append(f"backups: {exc}")
        return
    for env, short in (("production", "prod"), ("staging", "staging")):
        good = [s.timestamp for s in sets if s.env_short == short and s.state == rotation.GOOD]
        snap.backups[env] = (snap.now - max(good).timestamp()) / 3600 if good else None


def _drill(snap: Snapshot, opts: Options) -> None:
    if opts.drill_file is None or not opts.drill_file.exists():
        return
    try:
        snap.drill = json.loads(opts.drill_file.read_text())
    except (OSError, ValueError) as exc:
        snap.drill = {"ok": False, "detail": f"unreadable drill result: {exc}", "when": ""}


def _logs(snap: Snapshot, opts: Options, docker: Docker) -> None:
    if not opts.log_lines:
        return
    present = {c.name for c in snap.containers}
    for name in (*DJANGO.values(), NGINX):
        if name not in present:
            continue
        try:
            # nginx: its errors only (stderr); its access log is read from the file
            text = docker.logs(name, opts.log_lines, stdout=name != NGINX, stderr=True)
        except DockerError as exc:
            snap.problems.append(f"logs {name}: {exc}")
            continue
        snap.logs[name] = [mask(line) for line in text.splitlines()[-opts.log_lines :]]


def _access_log(snap: Snapshot, opts: Options, docker: Docker, state: dict) -> None:
    if opts.access_log is None:
        return
    pos = accesslog.Position.from_dict(state.get("access_log"))
    agg = accesslog.Aggregate()
    try:
        pos = accesslog.follow(opts.access_log, pos, agg.add)
    except OSError as exc:
        snap.problems.append(f"access log: {exc}")
        return
    snap.requests = agg.minutes
    if agg.bad:
        snap.problems.append(f"access log: {agg.bad} line(s) not in nginx's aiia_json format")
    try:
        if opts.access_log.stat().st_size > opts.rotate_bytes:
            opts.access_log.replace(opts.access_log.with_name(opts.access_log.name + ".1"))
            docker.signal(NGINX, "USR1")
    except (OSError, DockerError) as exc:
        snap.problems.append(f"access log rotation: {exc}")
    state["access_log"] = pos.as_dict()


def prime(opts: Options, state: dict, docker: Docker | None = None) -> None:
    """A first reading of the CPU counters, for a one-off look (`show`)."""
    docker = docker or Docker(opts.docker_socket)
    snap = Snapshot(time.time())
    _box(snap, opts, state)
    _containers(snap, opts, docker, state)


def collect(opts: Options, state: dict, now: float, docker: Docker | None = None) -> Snapshot:
    """Everything one run reads; `state` (the previous run's) is updated in place."""
    docker = docker or Docker(opts.docker_socket)
    snap = Snapshot(now)
    _box(snap, opts, state)
    _containers(snap, opts, docker, state)
    if snap.containers:
        _service_probes(snap, opts, docker)
    _uptime(snap, opts)
    snap.deploys = read_deploys(opts.deploy_logs)
    _backups(snap, opts)
    _drill(snap, opts)
    _access_log(snap, opts, docker, state)
    _logs(snap, opts, docker)
    return snap


# --- rules -----------------------------------------------------------------------------


def readings(snap: Snapshot, state: dict) -> list[R.Reading]:
    """This run's reading of every rule; `state` keeps what a rule compares across runs."""
    out = []
    if snap.cpu is not None:
        out.append(R.cpu(snap.cpu))
    if snap.mem_mb is not None:
        out.append(R.memory(snap.mem_mb))
    if snap.disk_pct is not None:
        out.append(R.disk(snap.disk_pct))
    if snap.requests:
        last = max(snap.requests)
        minute = snap.requests[last]
        out.append(R.errors(minute.requests, minute.s5xx))
    for env, (ok, _ms, detail) in snap.uptime.items():
        out.append(R.health(env, ok, detail))
    if snap.cert_days is not None:
        out.append(R.certificate(snap.cert_days, snap.cert_name))
    if "production" in snap.backups:
        out.append(R.backup(snap.backups["production"]))
    if snap.drill is not None:
        out.append(R.drill(bool(snap.drill.get("ok")), str(snap.drill.get("detail", ""))))
    latest: dict[str, dict] = {}
    for entry in snap.deploys:
        latest[entry.get("env", "?")] = entry
    for env, entry in latest.items():
        who, when = entry.get("who", "?"), entry.get("when", "?")
        detail = f"{entry.get('action', 'deploy')} by {who} at {when}"
        if entry.get("reason"):
            detail += f": {entry['reason']}"
        out.append(R.deploy(env, entry.get("result") == "ok", detail))
    restarts = state.get("restarts", {})
    seen = {}
    for c in snap.containers:
        before = restarts.get(c.name, [c.restarts, c.started_at])
        # a recreated container (a deploy) starts counting from 0 again
        more = c.restarts - before[0] if c.restarts >= before[0] else c.restarts
        out.append(R.container(c.name, more, c.oom_killed))
        seen[c.name] = [c.restarts, c.started_at]
    state["restarts"] = seen
    return out


def sample_of(snap: Snapshot) -> dict[str, float | None]:
    return {
        "cpu": snap.cpu,
        "mem_mb": snap.mem_mb,
        "swap_mb": snap.swap_mb,
        "disk_pct": snap.disk_pct,
        "load1": snap.load1,
    }


def request_figures(snap: Snapshot) -> dict[int, dict[str, float | None]]:
    return {
        ts: {
            "requests": m.requests,
            "s4xx": m.s4xx,
            "s5xx": m.s5xx,
            "s429": m.s429,
            "p50_ms": m.percentile(50),
            "p95_ms": m.percentile(95),
        }
        for ts, m in snap.requests.items()
    }


Sender = Callable[[str], str | None]
