"""`inv monitor`: every container's state, health, memory and CPU, against the guide's alerts.

Data come from `docker stats --no-stream` (CPU %, memory in use) and `docker inspect`
(state, health, memory limit, restarts), each parsed by a pure function tested on saved
output, plus PostgreSQL connections, PgBouncer waiting clients and Redis memory from the
health check's probes. The guide's alert thresholds: CPU above 80 % and memory above
400 MB for the whole box (MB as the guide and Docker count them: 1024 x 1024 bytes).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from opskit.health import Check
from opskit.units import MIB, ParseError, parse_size

CPU_ALERT_PERCENT = 80.0
MEMORY_ALERT_MB = 400.0
# a container this close to its own limit is about to be OOM-killed: highlighted
CONTAINER_MEMORY_WARN = 0.90


def parse_percent(text: str) -> float:
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        raise ParseError(f"expected a percentage such as 12.5%, got {text!r}") from None


def _json_lines(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise ParseError(f"expected one JSON object per line, got {line[:80]!r}") from None
    return rows


@dataclass(frozen=True)
class Usage:
    cpu_percent: float
    memory_used: int


def parse_stats(text: str) -> dict[str, Usage]:
    """`docker stats --no-stream --format '{{json .}}'`: usage by container name."""
    usage = {}
    for row in _json_lines(text):
        used = row.get("MemUsage", "0B / 0B").split("/")[0]
        usage[row["Name"]] = Usage(parse_percent(row.get("CPUPerc", "0%")), parse_size(used))
    return usage


@dataclass(frozen=True)
class State:
    status: str
    health: str
    memory_limit: int
    restarts: int
    oom_killed: bool
    exit_code: int


def parse_inspect(text: str) -> dict[str, State]:
    """`docker inspect --format INSPECT_FORMAT`: state by container name."""
    states = {}
    for row in _json_lines(text):
        states[row["name"].lstrip("/")] = State(
            row["status"],
            row.get("health") or "",
            int(row.get("memory_limit") or 0),
            int(row.get("restarts") or 0),
            bool(row.get("oom_killed")),
            int(row.get("exit_code") or 0),
        )
    return states


@dataclass(frozen=True)
class ContainerRow:
    name: str
    status: str
    health: str
    cpu_percent: float
    memory_used: int
    memory_limit: int
    restarts: int = 0
    oom_killed: bool = False

    @property
    def memory_share(self) -> float | None:
        return self.memory_used / self.memory_limit if self.memory_limit else None

    @property
    def cpu_alert(self) -> bool:
        return self.cpu_percent > CPU_ALERT_PERCENT

    @property
    def memory_warn(self) -> bool:
        share = self.memory_share
        return share is not None and share >= CONTAINER_MEMORY_WARN


def merge(usage: dict[str, Usage], states: dict[str, State]) -> list[ContainerRow]:
    rows = []
    for name in sorted(set(usage) | set(states)):
        u = usage.get(name, Usage(0.0, 0))
        s = states.get(name, State("unknown", "", 0, 0, False, 0))
        rows.append(
            ContainerRow(
                name,
                s.status,
                s.health,
                u.cpu_percent,
                u.memory_used,
                s.memory_limit,
                s.restarts,
                s.oom_killed,
            )
        )
    return rows


@dataclass(frozen=True)
class Snapshot:
    taken_at: dt.datetime
    containers: Sequence[ContainerRow]
    ncpu: int
    services: Sequence[Check] = field(default_factory=tuple)

    @property
    def memory_total(self) -> int:
        return sum(c.memory_used for c in self.containers)

    @property
    def cpu_total(self) -> float:
        """CPU of all containers as a share of the whole box (docker counts 100 % per core)."""
        return sum(c.cpu_percent for c in self.containers) / max(self.ncpu, 1)

    def alerts(self) -> list[str]:
        """Every threshold of the guide this snapshot is past, each in one line."""
        found = []
        if self.cpu_total > CPU_ALERT_PERCENT:
            found.append(
                f"CPU {self.cpu_total:.1f} % of {self.ncpu} CPUs is above {CPU_ALERT_PERCENT:g} %"
            )
        total_mb = self.memory_total / MIB
        if total_mb > MEMORY_ALERT_MB:
            found.append(f"memory {total_mb:.1f} MB in containers is above {MEMORY_ALERT_MB:g} MB")
        return found


RED_ON, BOLD_ON, YELLOW_ON, OFF = "\x1b[31;1m", "\x1b[1m", "\x1b[33m", "\x1b[0m"


def _paint(text: str, on: str, color: bool) -> str:
    return f"{on}{text}{OFF}" if color else text


def _memory(row: ContainerRow) -> str:
    used = f"{row.memory_used / MIB:.1f}"
    if not row.memory_limit:
        return f"{used} MB (no limit)"
    return f"{used} / {row.memory_limit / MIB:.0f} MB ({row.memory_share:.0%})"


def render(snapshot: Snapshot, *, color: bool = False) -> str:
    """The snapshot as a table; values past a threshold marked `!` (and red with color)."""
    width = max([len(c.name) for c in snapshot.containers] + [len("CONTAINER")])
    stamp = snapshot.taken_at.strftime("%Y-%m-%d %H:%M:%S %Z")
    lines = [
        f"monitor {stamp}  alerts: CPU > {CPU_ALERT_PERCENT:g} %, memory > {MEMORY_ALERT_MB:g} MB",
        "",
        f"{'CONTAINER'.ljust(width)}  {'STATE'.ljust(10)}  {'HEALTH'.ljust(9)}  "
        f"{'MEMORY'.ljust(26)}  CPU %",
    ]
    for row in snapshot.containers:
        memory = _memory(row) + (" !" if row.memory_warn else "")
        cpu = f"{row.cpu_percent:.1f}" + (" !" if row.cpu_alert else "")
        state = row.status + (f" x{row.restarts}" if row.restarts else "")
        health = row.health or "-"
        line_state = state.ljust(10)
        if row.status != "running":
            line_state = _paint(line_state, YELLOW_ON, color)
        if health == "unhealthy":
            health = _paint(health.ljust(9), RED_ON, color)
        else:
            health = health.ljust(9)
        memory = _paint(memory.ljust(26), RED_ON, color) if row.memory_warn else memory.ljust(26)
        cpu = _paint(cpu, RED_ON, color) if row.cpu_alert else cpu
        lines.append(f"{row.name.ljust(width)}  {line_state}  {health}  {memory}  {cpu}")
    total_mb = snapshot.memory_total / MIB
    memory_total = f"{total_mb:.1f} MB" + (" !" if total_mb > MEMORY_ALERT_MB else "")
    cpu_total = f"{snapshot.cpu_total:.1f} % of {snapshot.ncpu} CPUs" + (
        " !" if snapshot.cpu_total > CPU_ALERT_PERCENT else ""
    )
    if total_mb > MEMORY_ALERT_MB:
        memory_total = _paint(memory_total, RED_ON, color)
    if snapshot.cpu_total > CPU_ALERT_PERCENT:
        cpu_total = _paint(cpu_total, RED_ON, color)
    lines.append(f"{'TOTAL'.ljust(width)}  {'':10}  {'':9}  {memory_total.ljust(26)}  {cpu_total}")
    if snapshot.services:
        lines.append("")
        sw = max(len(c.name) for c in snapshot.services)
        for check in snapshot.services:
            mark = {"red": RED_ON, "yellow": YELLOW_ON}.get(check.status)
            status = _paint(check.status.ljust(6), mark, color) if mark else check.status.ljust(6)
            lines.append(f"{check.name.ljust(sw)}  {status}  {check.summary}")
    alerts = snapshot.alerts()
    if alerts:
        lines.append("")
        lines += [_paint(f"ALERT: {a}", RED_ON, color) for a in alerts]
    return "\n".join(lines)


def as_dict(snapshot: Snapshot) -> dict[str, object]:
    return {
        "taken_at": snapshot.taken_at.isoformat(),
        "ncpu": snapshot.ncpu,
        "cpu_total_percent": round(snapshot.cpu_total, 2),
        "memory_total_bytes": snapshot.memory_total,
        "alerts": snapshot.alerts(),
        "containers": [
            {
                "name": c.name,
                "status": c.status,
                "health": c.health,
                "cpu_percent": c.cpu_percent,
                "memory_used": c.memory_used,
                "memory_limit": c.memory_limit,
                "restarts": c.restarts,
                "oom_killed": c.oom_killed,
            }
            for c in snapshot.containers
        ],
        "services": [c.as_dict() for c in snapshot.services],
    }
