"""One snapshot as text (a terminal table) or JSON, for `inv monitor` and `fab monitor`."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict

from opskit.status import rules as R
from opskit.status.collect import Snapshot

MIB = 1024 * 1024


def alerts(snap: Snapshot) -> list[str]:
    """The thresholds this one snapshot is past (no windows: a single look)."""
    found = []
    if snap.cpu is not None and snap.cpu > R.CPU_RAISE:
        found.append(f"CPU {snap.cpu:.1f} % of the box is above {R.CPU_RAISE:g} %")
    if snap.mem_mb is not None and snap.mem_mb > R.MEMORY_RAISE_MB:
        found.append(
            f"memory {snap.mem_mb:.0f} MB in use (daemons included) "
            f"is above {R.MEMORY_RAISE_MB:g} MB"
        )
    if snap.disk_pct is not None and snap.disk_pct > R.DISK_RAISE:
        found.append(f"disk {snap.disk_pct:.0f} % is above {R.DISK_RAISE:g} %")
    for env, (ok, _ms, detail) in snap.uptime.items():
        if not ok:
            found.append(f"{env} /health/ failing: {detail}")
    for c in snap.containers:
        if c.status != "running":
            found.append(f"container {c.name} is {c.status}")
        elif c.oom_killed:
            found.append(f"container {c.name} was OOM-killed")
    return found


def render_text(snap: Snapshot) -> str:
    stamp = dt.datetime.fromtimestamp(snap.now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    width = max([len(c.name) for c in snap.containers] + [len("CONTAINER")])
    lines = [
        f"monitor {stamp}  alerts: CPU > {R.CPU_RAISE:g} %, memory > {R.MEMORY_RAISE_MB:g} MB "
        "(the whole box, daemons included)",
        "",
        f"{'CONTAINER'.ljust(width)}  {'STATE'.ljust(10)}  {'HEALTH'.ljust(9)}  "
        f"{'MEMORY'.ljust(22)}  CPU %",
    ]
    for c in snap.containers:
        mem = f"{c.memory_used / MIB:.1f}" + (
            f" / {c.memory_limit / MIB:.0f} MB" if c.memory_limit else " MB"
        )
        cpu = "-" if c.cpu_percent is None else f"{c.cpu_percent:.1f}"
        state = c.status + (f" x{c.restarts}" if c.restarts else "")
        lines.append(
            f"{c.name.ljust(width)}  {state.ljust(10)}  {(c.health or '-').ljust(9)}  "
            f"{mem.ljust(22)}  {cpu}"
        )
    box = []
    if snap.cpu is not None:
        box.append(f"CPU {snap.cpu:.1f} %")
    if snap.mem_mb is not None:
        box.append(
            f"memory {snap.mem_mb:.0f} of {snap.mem_total_mb:.0f} MB, swap {snap.swap_mb:.0f} MB"
        )
    if snap.disk_pct is not None:
        box.append(f"disk {snap.disk_pct:.0f} %")
    if snap.load1 is not None:
        box.append(f"load {snap.load1:.2f}")
    lines += ["", "box: " + ", ".join(box)]
    for env, (ok, _ms, detail) in snap.uptime.items():
        lines.append(f"{env} /health/: {'up' if ok else 'DOWN'} ({detail})")
    if snap.services:
        lines.append("")
        width = max(len(p.name) for p in snap.services)
        lines += [f"{p.name.ljust(width)}  {p.status.ljust(6)}  {p.summary}" for p in snap.services]
    if snap.cert_days is not None:
        lines.append(f"certificate {snap.cert_name}: {snap.cert_days} days left")
    lines += [f"problem: {p}" for p in snap.problems]
    found = alerts(snap)
    if found:
        lines.append("")
        lines += [f"ALERT: {a}" for a in found]
    return "\n".join(lines)


def as_dict(snap: Snapshot) -> dict[str, object]:
    return {
        "taken_at": dt.datetime.fromtimestamp(snap.now, dt.UTC).isoformat(),
        "cpu_percent": snap.cpu,
        "memory_used_mb": snap.mem_mb,
        "memory_total_mb": snap.mem_total_mb,
        "swap_used_mb": snap.swap_mb,
        "disk_percent": snap.disk_pct,
        "load1": snap.load1,
        "containers": [asdict(c) for c in snap.containers],
        "uptime": {
            env: {"ok": ok, "ms": ms, "detail": d} for env, (ok, ms, d) in snap.uptime.items()
        },
        "services": [asdict(p) for p in snap.services],
        "certificate_days": snap.cert_days,
        "problems": snap.problems,
        "alerts": alerts(snap),
    }
