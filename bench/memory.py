"""Memory of the running stack: each container's limit and use, plus the Docker daemons.

Usage:
    python bench/memory.py [--project NAME] [--samples N] [--interval S]
                           [--budget-mb 512] [--goal-mb 350] [--json FILE]

Containers are read from the engine (`docker inspect` for the limit, `docker stats
--no-stream` for the use, which is what the kernel charges the container minus page
cache); the daemons (dockerd, containerd, one containerd-shim per container, docker-proxy
per published port) from /proc on this host, as RSS and PSS. With --samples N the figure
per container and daemon is the highest of N readings, --interval seconds apart (use it
while a load runs). Prints a table, then the same figures as one JSON document; --json
also writes that document to FILE. It never fails on a figure: it reports.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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
UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "tib": 1024**4,
}


def parse_size(text: str) -> int:
    """Bytes in a docker stats figure such as '12.5MiB', '980kB' or '0B'."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"not a size: {text!r}")
    return round(float(match.group(1)) * UNITS[match.group(2).lower()])


def parse_stats_line(line: str) -> tuple[str, int]:
    """(container name, bytes used) from one `docker stats --format '{{json .}}'` line."""
    row = json.loads(line)
    used = row["MemUsage"].split("/")[0]
    return row["Name"], parse_size(used)


@dataclass
class Container:
    name: str
    limit_mb: float | None  # None: no limit set
    used_mb: float
    percent_of_limit: float | None


@dataclass
class Daemon:
    name: str
    processes: int
    rss_mb: float
    pss_mb: float | None  # None when smaps_rollup cannot be read


def docker(*args: str) -> str:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def stack_containers(project: str | None) -> list[str]:
    """Names of the running containers to measure, in the guide's order where it has one."""
    if project:
        out = docker(
            "ps",
            "--filter",
            f"label=com.docker.compose.project={project}",
            "--format",
            "{{.Names}}",
        )
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


def proc_memory_kb(pid: str, proc: Path = Path("/proc")) -> tuple[int, int | None]:
    """(VmRSS, Pss) of a process in kB; Pss is None where smaps_rollup is unreadable."""
    rss = 0
    for line in (proc / pid / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    pss: int | None = None
    try:
        for line in (proc / pid / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pss = None
    return rss, pss


def daemons(proc: Path = Path("/proc")) -> list[Daemon]:
    found: dict[str, list[tuple[int, int | None]]] = {name: [] for name in DAEMONS}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm in found:
                found[comm].append(proc_memory_kb(entry.name, proc))
        except OSError:  # the process ended while we looked
            continue
    rows = []
    for name, mems in found.items():
        if not mems:
            continue
        pss_values = [p for _, p in mems]
        pss = None if None in pss_values else sum(p for p in pss_values if p is not None) / 1024
        rows.append(Daemon(name, len(mems), sum(r for r, _ in mems) / 1024, pss))
    return rows


def measure(project: str | None, samples: int, interval: float) -> tuple[list, list]:
    names = stack_containers(project)
    if not names:
        where = f"project {project}" if project else "any of " + ", ".join(GUIDE_CONTAINERS)
        raise SystemExit(f"no running containers of {where}: start the stack first")
    limit = limits(names)
    peak_used: dict[str, int] = {}
    peak_daemons: dict[str, Daemon] = {}
    for i in range(samples):
        if i:
            time.sleep(interval)
        for name, used in usage(names).items():
            peak_used[name] = max(used, peak_used.get(name, 0))
        for d in daemons():
            seen = peak_daemons.get(d.name)
            if seen is None or d.rss_mb > seen.rss_mb:
                peak_daemons[d.name] = d
    containers = []
    for name in names:
        lim = limit.get(name, 0)
        used = peak_used.get(name, 0)
        containers.append(
            Container(
                name,
                round(lim / MIB, 1) if lim else None,
                round(used / MIB, 1),
                round(100 * used / lim, 1) if lim else None,
            )
        )
    daemon_rows = [
        Daemon(
            d.name,
            d.processes,
            round(d.rss_mb, 1),
            None if d.pss_mb is None else round(d.pss_mb, 1),
        )
        for d in (peak_daemons[n] for n in DAEMONS if n in peak_daemons)
    ]
    return containers, daemon_rows


def report(containers, daemon_rows, budget_mb: float, goal_mb: float, samples: int) -> dict:
    used = sum(c.used_mb for c in containers)
    daemon_rss = sum(d.rss_mb for d in daemon_rows)
    limits_known = [c.limit_mb for c in containers if c.limit_mb is not None]
    total = used + daemon_rss
    return {
        "samples": samples,
        "containers": [asdict(c) for c in containers],
        "daemons": [asdict(d) for d in daemon_rows],
        "containers_used_mb": round(used, 1),
        "containers_limit_mb": round(sum(limits_known), 1),
        "containers_without_limit": [c.name for c in containers if c.limit_mb is None],
        "daemons_rss_mb": round(daemon_rss, 1),
        "total_mb": round(total, 1),
        "budget_mb": budget_mb,
        "goal_mb": goal_mb,
        "within_budget": total <= budget_mb,
        "within_goal": total <= goal_mb,
    }


def table(doc: dict) -> str:
    def fmt(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"{'container':<22} {'limit MB':>9} {'used MB':>9} {'% limit':>8}",
        "-" * 51,
    ]
    for c in doc["containers"]:
        lines.append(
            f"{c['name']:<22} {fmt(c['limit_mb']):>9} {fmt(c['used_mb']):>9} "
            f"{fmt(c['percent_of_limit']):>8}"
        )
    lines.append(
        f"{'containers':<22} {doc['containers_limit_mb']:>9.1f} {doc['containers_used_mb']:>9.1f}"
    )
    lines += ["", f"{'daemon (processes)':<22} {'RSS MB':>9} {'PSS MB':>9}", "-" * 42]
    for d in doc["daemons"]:
        label = f"{d['name']} ({d['processes']})"
        lines.append(f"{label:<22} {fmt(d['rss_mb']):>9} {fmt(d['pss_mb']):>9}")
    lines.append(f"{'daemons':<22} {doc['daemons_rss_mb']:>9.1f}")
    lines += [
        "",
        f"total (containers used + daemons RSS): {doc['total_mb']:.1f} MB "
        f"of {doc['budget_mb']:.0f} MB "
        f"({'within' if doc['within_budget'] else 'OVER'} budget; goal {doc['goal_mb']:.0f} MB: "
        f"{'met' if doc['within_goal'] else 'not met'})",
    ]
    if doc["samples"] > 1:
        lines.append(f"figures are the highest of {doc['samples']} readings")
    if doc["containers_without_limit"]:
        lines.append("no memory limit: " + ", ".join(doc["containers_without_limit"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", help="compose project (default: the guide's aiia_* names)")
    parser.add_argument("--samples", type=int, default=1, help="readings; the highest counts")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    parser.add_argument("--budget-mb", type=float, default=512, help="the server's RAM")
    parser.add_argument("--goal-mb", type=float, default=350, help="our idle goal")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    containers, daemon_rows = measure(args.project, max(1, args.samples), args.interval)
    doc = report(containers, daemon_rows, args.budget_mb, args.goal_mb, max(1, args.samples))
    print(table(doc))
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
