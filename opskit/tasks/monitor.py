"""`inv monitor`: a live view of every container against the guide's alert thresholds."""

from __future__ import annotations

import json
import sys
import time

from invoke import Collection, Exit, task

from opskit import health
from opskit import monitor as mon
from opskit.monitor.probe import MonitorError, take
from opskit.tasks._common import ENV_HELP, ask, compose_project, environment, project_root

CLEAR = "\x1b[H\x1b[2J"


@task(
    help={
        "env": ENV_HELP + "; picks the stack whose PostgreSQL, PgBouncer, Redis are asked",
        "once": "print one snapshot and exit (1 when past a threshold), for scripts",
        "interval": "seconds between refreshes (default 5)",
        "prefix": "only containers whose name starts with this (default: all)",
        "json": "with --once: the snapshot as JSON",
    }
)
def monitor(c, env=None, once=False, interval=5.0, prefix="", json_=False):
    """Live view of every container (state, health, memory, CPU) with the guide's alerts."""
    lay = health.layout(environment(env, project_root()), project=compose_project())
    color = sys.stdout.isatty() and not json_

    def snapshot() -> mon.Snapshot:
        try:
            return take(lambda a: ask(c, a), lay, prefix=prefix)
        except (MonitorError, mon.ParseError) as exc:
            raise Exit(f"monitor: {exc}", code=2) from None

    if once:
        shot = snapshot()
        print(json.dumps(mon.as_dict(shot), indent=2) if json_ else mon.render(shot, color=color))
        alerts = shot.alerts()
        if alerts:
            raise Exit(f"monitor: past a threshold: {'; '.join(alerts)}", code=1)
        return
    try:
        while True:
            shot = snapshot()
            print(CLEAR + mon.render(shot, color=color), flush=True)
            print(f"\nrefreshing every {interval:g}s; Ctrl-C to stop", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        print()


ns = Collection(monitor)
