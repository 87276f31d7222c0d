"""`fab monitor`: the status collector's readings of the server, over SSH.

The same collector as the devstatus page and its alerts (opskit/status), run on the
server by `scripts/status.sh show` in its small container: the box, every container,
/health/ of both environments, PostgreSQL, PgBouncer, Redis and the certificate.
"""

from __future__ import annotations

import shlex

from fabric import task
from invoke import Collection, Exit

from opskit.remote.backup import checkout

PATH_HELP = "the production checkout on the server (default: the guide's)"


def show_argv(path: str, *, json_: bool = False) -> list[str]:
    return ["bash", f"{path}/scripts/status.sh", "show", *(["--json"] if json_ else [])]


@task(help={"path": PATH_HELP, "json": "the readings as JSON"})
def monitor(c, path=None, json_=False):
    """One look at the server through the status collector; exits 1 past a threshold."""
    root = checkout("production", path)
    result = c.run(shlex.join(show_argv(root, json_=json_)), warn=True, in_stream=False)
    if result.exited == 1:
        raise Exit("monitor: past a threshold (the ALERT lines above)", 1)
    if not result.ok:
        raise Exit(f"monitor: scripts/status.sh show failed on {c.host} (exit {result.exited})",
                   result.exited or 2)  # fmt: skip


ns = Collection(monitor)
