"""One monitor snapshot from the engine: runs the read-only commands, hands output to parsers."""

from __future__ import annotations

import datetime as dt

from opskit import health
from opskit.commands import docker as docker_cmd
from opskit.monitor import Snapshot, merge, parse_inspect, parse_stats

DATA_SERVICES = frozenset({"postgresql", "pgbouncer", "redis"})


class MonitorError(RuntimeError):
    """The engine could not be asked; the message says what failed."""


def take(
    run: health.Run,
    lay: health.Layout | None = None,
    *,
    prefix: str = "",
    now: dt.datetime | None = None,
) -> Snapshot:
    """Every container (those whose name starts with `prefix`) plus the data services of `lay`."""
    stats = run(docker_cmd.stats())
    if not stats.ok:
        raise MonitorError(f"docker stats failed: {stats.error()}")
    usage = {k: v for k, v in parse_stats(stats.stdout).items() if k.startswith(prefix)}
    states = {}
    if usage:
        inspected = run(docker_cmd.inspect(sorted(usage)))
        # a container removed since `docker stats` makes inspect exit 1; the rest still count
        if inspected.stdout.strip():
            states = parse_inspect(inspected.stdout)
    ncpu_out = run(docker_cmd.info("NCPU"))
    try:
        ncpu = int(ncpu_out.stdout.strip()) if ncpu_out.ok else 1
    except ValueError:
        ncpu = 1
    services = health.collect(lay, run, kinds=DATA_SERVICES) if lay is not None else []
    return Snapshot(now or dt.datetime.now(dt.UTC), merge(usage, states), ncpu, tuple(services))
