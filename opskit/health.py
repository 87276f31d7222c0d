"""`inv healthcheck`: is every service of a stack up and within its limits?

Each service is asked by a read-only command in its container (opskit.commands.probes)
or over HTTP/TLS on loopback; a pure parser turns each answer into a `Check` (green,
yellow or red, with one line of detail). The parsers are tested on saved output; the
probes are run by whatever `Run` the caller hands in (the task passes `c.run`).

Red means "act now" and makes the task exit non-zero; yellow means "look soon".
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from opskit.commands import docker as docker_cmd
from opskit.commands import probes

if TYPE_CHECKING:  # imported where used: the status collector's memory has no room for it
    from cryptography import x509
from opskit.runner import Result

GREEN, YELLOW, RED = "green", "yellow", "red"
SEVERITY = {GREEN: 0, YELLOW: 1, RED: 2}

# PostgreSQL: share of the connections an application may open (max_connections minus
# the superuser reserve). At 80 % a deploy's migrations and a backup may not get one;
# at 95 % the next gunicorn thread that needs one fails.
POSTGRES_YELLOW = 0.80
POSTGRES_RED = 0.95
# PgBouncer: any waiting client is yellow (the pool is saturated right now); a client
# waiting this long has already lost the guide's 200 ms p95 many times over, and at
# query_wait_timeout (30 s, pgbouncer.ini) PgBouncer starts failing requests.
PGBOUNCER_RED_WAIT_S = 5
# Redis is an LRU cache with maxmemory: sitting near the limit is its normal state under
# load (keys are evicted), so that is only yellow. Red is no limit at all on a 512 MB box,
# or use well past the limit (eviction not keeping up, or a noeviction policy).
REDIS_YELLOW = 0.90
REDIS_RED_OVER = 1.10
# certbot renews 30 days before expiry: fewer days left means renewal is failing.
CERT_YELLOW_DAYS = 30
CERT_RED_DAYS = 7


class ProbeError(ValueError):
    """A probe's output could not be understood; the message says what was expected."""


@dataclass(frozen=True)
class Check:
    """The state of one service: `status` is green, yellow or red."""

    name: str
    status: str
    summary: str
    details: Mapping[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "summary": self.summary, **self.details}


Run = Callable[[list[str]], Result]


def _worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=GREEN)


def overall(checks: Sequence[Check]) -> str:
    return _worst(c.status for c in checks)


def red(checks: Sequence[Check]) -> list[Check]:
    return [c for c in checks if c.status == RED]


# --- parsers: saved output in, Check out ------------------------------------------------


def parse_csv(text: str) -> list[dict[str, str]]:
    """psql --csv output (header line, then rows) as dicts."""
    if not text.strip():
        raise ProbeError("expected CSV with a header line, got nothing")
    return list(csv.DictReader(io.StringIO(text.strip())))


def _int(row: Mapping[str, str], key: str) -> int:
    try:
        return int(row[key])
    except (KeyError, TypeError, ValueError):
        raise ProbeError(
            f"expected a whole number in column {key!r}, got {row.get(key)!r}"
        ) from None


def postgres_check(text: str, name: str = "postgresql") -> Check:
    rows = parse_csv(text)
    if len(rows) != 1:
        raise ProbeError(f"expected one row of connection counts, got {len(rows)}")
    row = rows[0]
    used, limit = _int(row, "connections"), _int(row, "max_connections")
    reserved = _int(row, "reserved") if "reserved" in row else 0
    usable = max(limit - reserved, 1)
    share = used / usable
    status = RED if share >= POSTGRES_RED else YELLOW if share >= POSTGRES_YELLOW else GREEN
    summary = f"{used} of {usable} connections in use ({share:.0%}; max_connections {limit})"
    return Check(
        name,
        status,
        summary,
        {"connections": used, "max_connections": limit, "reserved": reserved},
    )


def pgbouncer_check(text: str, name: str = "pgbouncer") -> Check:
    rows = parse_csv(text)
    pools = [r for r in rows if r.get("database") != "pgbouncer"]  # the admin console
    waiting = sum(_int(r, "cl_waiting") for r in pools)
    active = sum(_int(r, "cl_active") for r in pools)
    max_wait = max((_int(r, "maxwait") for r in pools), default=0)
    busiest = [f"{r['database']}/{r['user']}" for r in pools if _int(r, "cl_waiting")]
    if waiting and max_wait >= PGBOUNCER_RED_WAIT_S:
        status = RED
    elif waiting:
        status = YELLOW
    else:
        status = GREEN
    summary = f"{len(pools)} pools, {active} active clients, {waiting} waiting"
    if waiting:
        summary += f" (longest {max_wait}s, in {', '.join(busiest)})"
    details = {"pools": len(pools), "active": active, "waiting": waiting, "max_wait_s": max_wait}
    return Check(name, status, summary, details)


def parse_info(text: str) -> dict[str, str]:
    """Redis INFO output (`key:value` lines, `# Section` headers) as a dict."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        info[key] = value
    if not info:
        raise ProbeError("expected Redis INFO lines (key:value), got none")
    return info


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def redis_check(text: str, name: str = "redis") -> Check:
    info = parse_info(text)
    used, limit = _int(info, "used_memory"), _int(info, "maxmemory")
    policy = info.get("maxmemory_policy", "?")
    details = {"used_memory": used, "maxmemory": limit, "policy": policy}
    if limit == 0:
        summary = f"{_mb(used)} used and no maxmemory: Redis may take the whole box"
        return Check(name, RED, summary, details)
    share = used / limit
    summary = f"{_mb(used)} of {_mb(limit)} ({share:.0%}, {policy})"
    if share >= REDIS_RED_OVER:
        return Check(name, RED, summary + ": over the limit", details)
    return Check(name, YELLOW if share >= REDIS_YELLOW else GREEN, summary, details)


# what each dependency of Django's /health/ is, for an operator reading the summary
DJANGO_DEPENDENCIES = {"database": "database (PgBouncer/PostgreSQL)", "cache": "cache (Redis)"}


def django_check(text: str, name: str = "django") -> Check:
    """Output of probes.django_health: `STATUS BODY`, STATUS 000 when nothing answered."""
    code, _, body = text.strip().partition(" ")
    if not code.isdigit():
        raise ProbeError(f"expected 'STATUS BODY' from the health probe, got {text[:80]!r}")
    if code == "000":
        return Check(name, RED, f"/health/ did not answer: {body.strip()}", {"http_status": 0})
    answer = probes.read_health(int(code), body)
    if not answer.is_json:
        return Check(
            name, RED, f"/health/ answered {code} without JSON", {"http_status": int(code)}
        )
    payload = answer.document
    details = {
        "http_status": int(code),
        "version": payload.get("version"),
        "environment": payload.get("environment"),
    }
    if answer.healthy:
        timing = ", ".join(f"{dep} {r.get('ms', '?')} ms" for dep, r in answer.checks.items())
        return Check(name, GREEN, f"/health/ 200 ({timing})", details)
    failing = [f"{DJANGO_DEPENDENCIES.get(dep, dep)} {error}" for dep, error in answer.failing]
    reason = "; ".join(failing) or f"status {payload.get('status')!r}"
    return Check(name, RED, f"/health/ {code}: {reason}", details)


def nginx_check(status: int, body: str, where: str, name: str = "nginx") -> Check:
    if status == 200:
        return Check(name, GREEN, f"/health 200 on {where}", {"http_status": status})
    shown = body.strip().splitlines()[0][:80] if body.strip() else "no body"
    return Check(
        name, RED, f"/health answered {status} on {where}: {shown}", {"http_status": status}
    )


def certificate_check(
    cert: x509.Certificate, now: dt.datetime, source: str, name: str = "tls"
) -> Check:
    left = cert.not_valid_after_utc - now
    days = left.days
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    details = {"days_left": days, "expires": expires, "source": source}
    if left.total_seconds() <= 0:
        return Check(name, RED, f"certificate from {source} expired on {expires}", details)
    status = RED if days < CERT_RED_DAYS else YELLOW if days < CERT_YELLOW_DAYS else GREEN
    return Check(name, status, f"{days} days left (until {expires}) on {source}", details)


@dataclass(frozen=True)
class Container:
    service: str
    name: str
    state: str
    status: str

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def unhealthy(self) -> bool:
        return "(unhealthy)" in self.status


def parse_containers(text: str) -> dict[str, Container]:
    """Output of `docker ps --format PS_FORMAT`: containers by compose service."""
    found: dict[str, Container] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ProbeError(f"expected one JSON object per line, got {line[:80]!r}") from None
        found[row["service"]] = Container(row["service"], row["name"], row["state"], row["status"])
    return found


def parse_port(text: str) -> int:
    """The host port from `docker port CONTAINER 80/tcp` (e.g. `0.0.0.0:8080`)."""
    for line in text.split():
        host, _, port = line.rpartition(":")
        if host and port.isdigit():
            return int(port)
    raise ProbeError(f"expected HOST:PORT from docker port, got {text.strip()[:80]!r}")


# --- the stacks -----------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """A compose service and how it is checked (`kind`), with Django's port."""

    name: str
    kind: str
    port: int | None = None


@dataclass(frozen=True)
class Layout:
    project: str
    services: tuple[Service, ...]
    domain: str | None = None  # the name nginx serves (Host header and TLS SNI)
    cert_file: str | None = None  # a certificate on this machine, when no nginx serves one


LOCAL_SERVICES = (
    Service("django", "django", 8000),
    Service("postgresql", "postgresql"),
    Service("redis", "redis"),
)
SERVER_SERVICES = (
    Service("nginx", "nginx"),
    Service("django_prod", "django", 8000),
    Service("django_staging", "django", 8001),
    Service("postgresql", "postgresql"),
    Service("pgbouncer", "pgbouncer"),
    Service("redis", "redis"),
)
DOMAINS = {"production": "eduaiia.com", "staging": "staging.eduaiia.com"}
LOCAL_PROJECT = "aiia_local"
SERVER_PROJECT = "aiia"
LOCAL_CERT = "certs/cert.pem"


def layout(environment: str, *, domain: str | None = None, project: str | None = None) -> Layout:
    if environment == "local":
        return Layout(project or LOCAL_PROJECT, LOCAL_SERVICES, cert_file=LOCAL_CERT)
    return Layout(project or SERVER_PROJECT, SERVER_SERVICES, domain=domain or DOMAINS[environment])


# --- probes over the network (loopback only) ------------------------------------------


def http_get(port: int, path: str, host: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH with a Host header; (0, reason) when nothing answers."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        # S310: the URL is built here, always http on loopback
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return 0, f"{type(exc).__name__}: {exc}"


def fetch_certificate(port: int, server_name: str, timeout_s: float = 5.0) -> x509.Certificate:
    """The certificate nginx presents on 127.0.0.1:PORT for `server_name` (SNI).

    Only its dates are read, so the chain is not verified here (a test CA or an expired
    certificate must still be reported, not refused).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ProbeError(f"no certificate presented on 127.0.0.1:{port}")
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


@dataclass(frozen=True)
class Network:
    """The loopback probes; tests may hand in their own."""

    http_get: Callable[[int, str, str], tuple[int, str]] = http_get
    fetch_certificate: Callable[[int, str], x509.Certificate] = fetch_certificate


# --- running the checks ---------------------------------------------------------------


def _probe(name: str, parse: Callable[[str], Check], out: Result) -> Check:
    if not out.ok:
        return Check(name, RED, f"probe failed: {out.error()}")
    try:
        return parse(out.stdout)
    except ProbeError as exc:
        return Check(name, RED, f"unexpected probe output: {exc}")


def _service_check(
    service: Service, container: Container, run: Run, net: Network, lay: Layout
) -> Check:
    name, target = service.name, container.name
    if service.kind == "postgresql":
        out = run(docker_cmd.exec_(target, probes.postgres_connections()))
        return _probe(name, lambda t: postgres_check(t, name), out)
    if service.kind == "pgbouncer":
        out = run(docker_cmd.exec_(target, probes.pgbouncer_pools()))
        return _probe(name, lambda t: pgbouncer_check(t, name), out)
    if service.kind == "redis":
        out = run(docker_cmd.exec_(target, probes.redis_info("memory")))
        return _probe(name, lambda t: redis_check(t, name), out)
    if service.kind == "django":
        out = run(docker_cmd.exec_(target, probes.django_health(service.port or 8000)))
        return _probe(name, lambda t: django_check(t, name), out)
    if service.kind == "nginx":
        out = run(docker_cmd.port(target, "80/tcp"))
        if not out.ok:
            return Check(name, RED, f"port 80 is not published: {out.error()}")
        port = parse_port(out.stdout)
        status, body = net.http_get(port, "/health", lay.domain or "localhost")
        return nginx_check(status, body, f"127.0.0.1:{port}", name)
    raise ValueError(f"unknown kind of service {service.kind!r}")


def _container_problem(service: Service, container: Container | None) -> Check | None:
    if container is None:
        return Check(service.name, RED, "no container: the service is not created (is it up?)")
    if not container.running:
        return Check(
            service.name,
            RED,
            f"container {container.name} is {container.state} ({container.status})",
            {"container": container.name, "state": container.state},
        )
    return None


def _tls_check(
    lay: Layout,
    containers: Mapping[str, Container],
    run: Run,
    net: Network,
    now: dt.datetime,
    root: Path,
) -> Check | None:
    nginx = containers.get("nginx")
    if lay.domain and nginx is not None and nginx.running:
        out = run(docker_cmd.port(nginx.name, "443/tcp"))
        if not out.ok:
            return Check("tls", RED, f"port 443 is not published: {out.error()}")
        port = parse_port(out.stdout)
        try:
            cert = net.fetch_certificate(port, lay.domain)
        except (OSError, ssl.SSLError, ProbeError, ValueError) as exc:
            return Check(
                "tls", RED, f"no TLS handshake for {lay.domain} on 127.0.0.1:{port}: {exc}"
            )
        return certificate_check(cert, now, f"{lay.domain} (127.0.0.1:{port})")
    if lay.cert_file and (root / lay.cert_file).is_file():
        from cryptography import x509

        cert = x509.load_pem_x509_certificate((root / lay.cert_file).read_bytes())
        return certificate_check(cert, now, lay.cert_file)
    return None  # nothing serves or holds a certificate here: nothing to check


def collect(
    lay: Layout,
    run: Run,
    *,
    net: Network | None = None,
    now: dt.datetime | None = None,
    kinds: frozenset[str] | None = None,
    root: Path | None = None,
) -> list[Check]:
    """Every check of the stack `lay` in the layout's order, TLS last.

    `kinds` limits the checks to some kinds of service (the monitor asks only for the
    data services), and leaves out TLS. `root` is where a layout's cert_file is (the
    checkout; default the current directory).
    """
    net = net or Network()
    now = now or dt.datetime.now(dt.UTC)
    listing = run(docker_cmd.project_containers(lay.project))
    if not listing.ok:
        return [Check("docker", RED, f"cannot list containers: {listing.error()}")]
    try:
        containers = parse_containers(listing.stdout)
    except ProbeError as exc:
        return [Check("docker", RED, f"unexpected container listing: {exc}")]
    checks: list[Check] = []
    for service in lay.services:
        if kinds is not None and service.kind not in kinds:
            continue
        container = containers.get(service.name)
        problem = _container_problem(service, container)
        if problem is not None:
            checks.append(problem)
            continue
        assert container is not None
        check = _service_check(service, container, run, net, lay)
        if container.unhealthy and check.status == GREEN:
            check = Check(
                check.name,
                YELLOW,
                check.summary + "; docker's health check says unhealthy",
                check.details,
            )
        checks.append(check)
    tls = None if kinds is not None else _tls_check(lay, containers, run, net, now, root or Path())
    if tls is not None:
        checks.append(tls)
    return checks


# --- output ---------------------------------------------------------------------------


def render_table(checks: Sequence[Check]) -> str:
    width = max([len(c.name) for c in checks] + [len("SERVICE")])
    lines = [f"{'SERVICE'.ljust(width)}  STATUS  DETAIL"]
    lines += [f"{c.name.ljust(width)}  {c.status.ljust(6)}  {c.summary}" for c in checks]
    return "\n".join(lines)


def report(environment: str, checks: Sequence[Check]) -> dict[str, object]:
    return {
        "environment": environment,
        "status": overall(checks),
        "red": [c.name for c in red(checks)],
        "checks": [c.as_dict() for c in checks],
    }
