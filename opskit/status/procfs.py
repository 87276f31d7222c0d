"""The whole box from /proc: CPU, memory and swap (daemons included), load, disk.

Inside a container /proc/stat, /proc/meminfo and /proc/loadavg are the host's, so the
collector's small container sees the whole box. Parsers take text (tested on saved
files); CPU is a share of the time between two readings, the previous one kept by the
caller (the SQLite state between two cron runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class CpuTimes:
    busy: int
    total: int


def parse_stat(text: str) -> CpuTimes:
    """The `cpu` line of /proc/stat: jiffies busy and in total (iowait counts as idle)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            # guest time is already part of user time
            total = sum(values[:8])
            return CpuTimes(total - idle, total)
    raise ValueError("no 'cpu' line in /proc/stat")


def cpu_percent(before: CpuTimes | None, after: CpuTimes) -> float | None:
    if before is None or after.total <= before.total:
        return None
    return 100.0 * (after.busy - before.busy) / (after.total - before.total)


@dataclass(frozen=True)
class Memory:
    total: int
    used: int  # MemTotal - MemAvailable: what every process holds, daemons included
    swap_used: int


def parse_meminfo(text: str) -> Memory:
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name] = int(parts[0]) * KIB
    try:
        total, available = values["MemTotal"], values["MemAvailable"]
    except KeyError as exc:
        raise ValueError(f"/proc/meminfo has no {exc.args[0]}") from None
    swap = values.get("SwapTotal", 0) - values.get("SwapFree", 0)
    return Memory(total, total - available, swap)


def parse_loadavg(text: str) -> float:
    return float(text.split()[0])


@dataclass(frozen=True)
class Disk:
    total: int
    used: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


def disk(path: str | Path) -> Disk:
    """The filesystem holding `path` (the status volume lives on the box's disk)."""
    st = os.statvfs(path)
    # like df: space reserved for root counts as neither free nor usable
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    usable = used + st.f_bavail * st.f_frsize
    return Disk(usable, used)


@dataclass(frozen=True)
class Box:
    cpu: CpuTimes
    memory: Memory
    load1: float
    disk: Disk


def read(proc: Path = Path("/proc"), disk_path: str | Path = "/") -> Box:
    return Box(
        parse_stat((proc / "stat").read_text()),
        parse_meminfo((proc / "meminfo").read_text()),
        parse_loadavg((proc / "loadavg").read_text()),
        disk(disk_path),
    )
