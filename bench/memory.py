"""Memory of the running stack: each container's limit and use, plus the Docker daemons.

Usage:
    python bench/memory.py [--project NAME] [--samples N] [--interval S]
                           [--budget-mb 512] [--goal-mb 350] [--json FILE]
                           [--load URL ... --resolve HOST:PORT:ADDRESS --cafile PEM
                            --requests N --concurrency C --max-seconds S]

Containers are read from the engine: `docker inspect` for the limit, `docker stats
--no-stream` for the use (what the kernel charges the container minus inactive page
cache, the figure the OOM killer goes by). Daemons are read from /proc on this host:
dockerd, containerd, and of the shims (one per container) and docker-proxy processes
(one per published port) those of the measured containers only, as RSS and as PSS
(shared pages divided among the processes sharing them: the shims are one binary, and
their RSS summed counts it once per container). The total is containers plus daemons by
PSS, so nothing is counted twice.

Idle: the highest of --samples readings, --interval seconds apart. With --load, a
bounded load follows (--requests in all, over --concurrency kept-alive HTTPS
connections, the URLs taken in turn, stopped after --max-seconds at the latest) and the
table gains the highest reading taken while it ran. --resolve sends a URL's host to
another address, like curl's; --cafile verifies the server against that CA.

Prints a table, then the same figures as one JSON document; --json also writes that
document to FILE. It never fails on a figure: it reports.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from opskit.units import parse_size

MIB = 1024 * 1024
# the containers of the operators' guide, in the order the table shows them
GUIDE_CONTAINERS = (
    "aiia_nginx",
    "aiia_django_prod",
    "aiia_django_staging",
    "aiia_postgresql",
    "aiia_pgbouncer",
    "aiia_redis",
)
# /proc/PID/comm is cut at 15 characters: containerd-shim-runc-v2 shows as containerd-shim
DAEMONS = ("dockerd", "containerd", "containerd-shim", "docker-proxy")


def parse_stats_line(line: str) -> tuple[str, int]:
    """(container name, bytes used) from one `docker stats --format '{{json .}}'` line."""
    row = json.loads(line)
    used = row["MemUsage"].split("/")[0]
    return row["Name"], parse_size(used)


@dataclass
class Daemon:
    name: str
    processes: int
    rss_mb: float
    pss_mb: float

    @property
    def fair_mb(self) -> float:
        return self.pss_mb


def docker(*args: str) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def stack_containers(project: str | None) -> list[str]:
    """Names of the running containers to measure, in the guide's order where it has one."""
    if project:
        label = f"label=com.docker.compose.project={project}"
        out = docker("ps", "--filter", label, "--format", "{{.Names}}")
    else:
        out = docker("ps", "--format", "{{.Names}}")
    running = set(out.split())
    if not project:
        running &= set(GUIDE_CONTAINERS)
    order = {name: i for i, name in enumerate(GUIDE_CONTAINERS)}
    return sorted(running, key=lambda n: (order.get(n, len(order)), n))


def limits(names: list[str]) -> dict[str, int]:
    """Memory limit in bytes per container (0: none)."""
    out = docker("inspect", "--format", "{{.Name}} {{.HostConfig.Memory}}", *names)
    result = {}
    for line in out.splitlines():
        name, limit = line.split()
        result[name.lstrip("/")] = int(limit)
    return result


def usage(names: list[str]) -> dict[str, int]:
    out = docker("stats", "--no-stream", "--no-trunc", "--format", "{{json .}}", *names)
    return dict(parse_stats_line(line) for line in out.splitlines() if line.strip())


def proc_memory_kb(pid: str, proc: Path = Path("/proc")) -> tuple[int, int]:
    """(VmRSS, Pss) of a process in kB; Pss falls back to RSS where it cannot be read."""
    rss = 0
    for line in (proc / pid / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    pss = rss
    try:
        for line in (proc / pid / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def belongs(comm: str, argv: list[str], ids: set[str], addresses: set[str]) -> bool:
    """Whether a daemon process serves the measured stack.

    dockerd and containerd serve every container; a shim serves the container after its
    `-id`, a docker-proxy the container address after `-container-ip`. On an engine that
    runs other containers too, theirs are left out.
    """
    if comm in ("dockerd", "containerd"):
        return True
    flag = "-id" if comm == "containerd-shim" else "-container-ip"
    wanted = ids if comm == "containerd-shim" else addresses
    for i, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[i + 1] in wanted
    return False


def daemons(
    ids: set[str] | None = None, addresses: set[str] | None = None, proc: Path = Path("/proc")
) -> list[Daemon]:
    """Daemon memory by kind; with `ids`/`addresses`, only the shims and proxies of those."""
    found: dict[str, list[tuple[int, int]]] = {name: [] for name in DAEMONS}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in found:
                continue
            if ids is not None:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if not belongs(comm, argv, ids, addresses or set()):
                    continue
            found[comm].append(proc_memory_kb(entry.name, proc))
        except OSError:  # the process ended while we looked
            continue
    rows = []
    for name in DAEMONS:
        mems = found[name]
        if mems:
            rss = sum(r for r, _ in mems) / 1024
            rows.append(Daemon(name, len(mems), rss, sum(p for _, p in mems) / 1024))
    return rows


def identities(names: list[str]) -> tuple[set[str], set[str]]:
    """Full ids and network addresses of the containers."""
    fmt = "{{.Id}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
    ids, addresses = set(), set()
    for line in docker("inspect", "--format", fmt, *names).splitlines():
        first, *rest = line.split()
        ids.add(first)
        addresses.update(rest)
    return ids, addresses


class Peaks:
    """The highest reading per container and per daemon over several samples."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.ids, self.addresses = identities(names)
        self.used: dict[str, int] = {}
        self.daemons: dict[str, Daemon] = {}
        self.samples = 0

    def sample(self) -> None:
        for name, used in usage(self.names).items():
            self.used[name] = max(used, self.used.get(name, 0))
        for d in daemons(self.ids, self.addresses):
            seen = self.daemons.get(d.name)
            if seen is None or d.fair_mb > seen.fair_mb:
                self.daemons[d.name] = d
        self.samples += 1

    def phase(self) -> dict:
        rows = [self.daemons[n] for n in DAEMONS if n in self.daemons]
        used = {n: round(self.used.get(n, 0) / MIB, 1) for n in self.names}
        containers_mb = sum(used.values())
        daemons_mb = sum(d.fair_mb for d in rows)
        return {
            "samples": self.samples,
            "used_mb": used,
            "daemons": [
                {
                    "name": d.name,
                    "processes": d.processes,
                    "rss_mb": round(d.rss_mb, 1),
                    "pss_mb": round(d.pss_mb, 1),
                }
                for d in rows
            ],
            "containers_mb": round(containers_mb, 1),
            "daemons_mb": round(daemons_mb, 1),
            "daemons_rss_mb": round(sum(d.rss_mb for d in rows), 1),
            "total_mb": round(containers_mb + daemons_mb, 1),
        }


# --- load --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    address: str


def targets(urls: list[str], resolve: list[str]) -> list[Target]:
    mapping = {}
    for entry in resolve:
        host, port, address = entry.rsplit(":", 2) if entry.count(":") >= 2 else ("", "", "")
        if not host:
            raise SystemExit(f"--resolve {entry}: expected HOST:PORT:ADDRESS")
        mapping[(host, int(port))] = address
    out = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise SystemExit(f"--load {url}: expected an https:// URL")
        port = parts.port or 443
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        address = mapping.get((parts.hostname, port), parts.hostname)
        out.append(Target(parts.hostname, port, path, address))
    return out


class _Connection(http.client.HTTPSConnection):
    """HTTPS to `address`, with the URL's host in SNI and Host."""

    def __init__(self, target: Target, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(target.host, target.port, context=context, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def run_load(
    urls: list[Target],
    requests: int,
    concurrency: int,
    rate: float,
    max_seconds: float,
    cafile: str | None,
) -> dict:
    context = ssl.create_default_context(cafile=cafile)
    lock = threading.Lock()
    counter = iter(range(requests))
    statuses: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + max_seconds

    def worker() -> None:
        connections: dict[Target, _Connection] = {}
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            # request n leaves at n / rate seconds: an even pace, no bursts
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            target = urls[n % len(urls)]
            conn = connections.get(target) or _Connection(target, context, 10)
            connections[target] = conn
            try:
                conn.request("GET", target.path, headers={"Host": target.host})
                resp = conn.getresponse()
                resp.read()
                key = str(resp.status)
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    del connections[target]
            except (OSError, http.client.HTTPException) as exc:
                key = type(exc).__name__
                conn.close()
                connections.pop(target, None)
            with lock:
                statuses[key] += 1
        for conn in connections.values():
            conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    done = sum(statuses.values())
    return {
        "requests": done,
        "concurrency": concurrency,
        "rate_limit_per_second": rate,
        "seconds": round(elapsed, 1),
        "per_second": round(done / elapsed, 1) if elapsed else None,
        "statuses": dict(sorted(statuses.items())),
        "urls": [f"https://{t.host}:{t.port}{t.path} -> {t.address}" for t in urls],
    }


# --- report ----------------------------------------------------------------------


def report(
    names,
    limit,
    idle: dict,
    load: dict | None,
    after: dict | None,
    stats: dict | None,
    budget: float,
    goal: float,
) -> dict:
    containers = []
    for name in names:
        lim = limit.get(name, 0)
        row = {
            "name": name,
            "limit_mb": round(lim / MIB, 1) if lim else None,
            "idle_mb": idle["used_mb"][name],
            "load_mb": load["used_mb"][name] if load else None,
            "after_mb": after["used_mb"][name] if after else None,
        }
        peak = max(row["idle_mb"], row["load_mb"] or 0)
        row["peak_percent_of_limit"] = round(100 * peak * MIB / lim, 1) if lim else None
        containers.append(row)
    return {
        "containers": containers,
        "containers_limit_mb": round(sum(c["limit_mb"] or 0 for c in containers), 1),
        "containers_without_limit": [c["name"] for c in containers if c["limit_mb"] is None],
        "idle": idle,
        "load": load,
        "after_load": after,
        "load_run": stats,
        "budget_mb": budget,
        "goal_mb": goal,
        "idle_within_goal": idle["total_mb"] <= goal,
        "idle_within_budget": idle["total_mb"] <= budget,
        "load_within_budget": None if load is None else load["total_mb"] <= budget,
        "after_load_within_goal": None if after is None else after["total_mb"] <= goal,
    }


def table(doc: dict) -> str:
    def fmt(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    idle, load, after = doc["idle"], doc["load"], doc["after_load"]
    lines = [
        f"{'container':<22} {'limit MB':>9} {'idle MB':>9} {'load MB':>9} {'after MB':>9} "
        f"{'peak %':>7}",
        "-" * 70,
    ]
    for c in doc["containers"]:
        lines.append(
            f"{c['name']:<22} {fmt(c['limit_mb']):>9} {fmt(c['idle_mb']):>9} "
            f"{fmt(c['load_mb']):>9} {fmt(c['after_mb']):>9} "
            f"{fmt(c['peak_percent_of_limit']):>7}"
        )
    lines.append(
        f"{'containers':<22} {doc['containers_limit_mb']:>9.1f} {idle['containers_mb']:>9.1f} "
        f"{fmt(load['containers_mb'] if load else None):>9} "
        f"{fmt(after['containers_mb'] if after else None):>9}"
    )
    lines += ["", f"{'daemon (processes)':<22} {'RSS MB':>9} {'PSS MB':>9}", "-" * 42]
    for d in idle["daemons"]:
        label = f"{d['name']} ({d['processes']})"
        lines.append(f"{label:<22} {fmt(d['rss_mb']):>9} {fmt(d['pss_mb']):>9}")
    lines.append(
        f"{'daemons (idle)':<22} {idle['daemons_rss_mb']:>9.1f} {idle['daemons_mb']:>9.1f}"
    )
    if load:
        lines.append(
            f"{'daemons (load)':<22} {load['daemons_rss_mb']:>9.1f} {load['daemons_mb']:>9.1f}"
        )
    lines += [
        "",
        f"idle total (containers + daemons by PSS): {idle['total_mb']:.1f} MB of "
        f"{doc['budget_mb']:.0f} MB; goal {doc['goal_mb']:.0f} MB "
        f"{'met' if doc['idle_within_goal'] else 'NOT met'}",
    ]
    if load:
        run = doc["load_run"]
        lines.append(
            f"load total: {load['total_mb']:.1f} MB of {doc['budget_mb']:.0f} MB "
            f"({run['requests']} requests, {run['concurrency']} connections, "
            f"{run['seconds']} s, statuses {run['statuses']})"
        )
    if after:
        lines.append(
            f"idle total after the load: {after['total_mb']:.1f} MB; goal "
            f"{doc['goal_mb']:.0f} MB {'met' if doc['after_load_within_goal'] else 'NOT met'}"
        )
    lines.append(
        f"readings: idle highest of {idle['samples']}"
        + (f", load highest of {load['samples']}" if load else "")
        + (f", after highest of {after['samples']}" if after else "")
    )
    if doc["containers_without_limit"]:
        lines.append("no memory limit: " + ", ".join(doc["containers_without_limit"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", help="compose project (default: the guide's aiia_* names)")
    parser.add_argument("--samples", type=int, default=1, help="idle readings; highest counts")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--budget-mb", type=float, default=512, help="the server's RAM")
    parser.add_argument("--goal-mb", type=float, default=350, help="our idle goal")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    parser.add_argument("--load", action="append", default=[], metavar="URL")
    parser.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR")
    parser.add_argument("--cafile", help="CA bundle the load verifies the server with")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    # below nginx's 200 r/s per client address (the guide): the load reaches the apps
    parser.add_argument("--rate", type=float, default=150, help="requests per second, at most")
    parser.add_argument(
        "--settle-seconds", type=float, default=10, help="wait before the after-load readings"
    )
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args(argv)

    names = stack_containers(args.project)
    if not names:
        where = f"project {args.project}" if args.project else "any of the guide's containers"
        raise SystemExit(f"no running containers of {where}: start the stack first")
    limit = limits(names)
    idle = Peaks(names)
    for i in range(max(1, args.samples)):
        if i:
            time.sleep(args.interval)
        idle.sample()
    load_phase = after_phase = stats = None
    if args.load:
        urls = targets(args.load, args.resolve)
        peaks = Peaks(names)
        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(
                run_load(
                    urls,
                    args.requests,
                    args.concurrency,
                    args.rate,
                    args.max_seconds,
                    args.cafile,
                )
            )
        )
        runner.start()
        while runner.is_alive():
            peaks.sample()
            time.sleep(args.interval)
        peaks.sample()
        load_phase, stats = peaks.phase(), result
        time.sleep(args.settle_seconds)
        settled = Peaks(names)
        for i in range(max(1, args.samples)):
            if i:
                time.sleep(args.interval)
            settled.sample()
        after_phase = settled.phase()
    doc = report(
        names,
        limit,
        idle.phase(),
        load_phase,
        after_phase,
        stats,
        args.budget_mb,
        args.goal_mb,
    )
    print(table(doc))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
