"""The server stack's application logs: `inv prod-logs`, `inv staging-logs`."""

from __future__ import annotations

from invoke import Collection, task

from opskit.commands.compose import target
from opskit.tasks._common import in_root, interactive, project_root, run

LOG_HELP = {
    "follow": "keep printing new lines (Ctrl-C to stop)",
    "since": "only lines since a time: 10m, 2h, 2024-01-01T12:00:00",
    "lines": "how many lines from the end (default 100)",
}


def _logs(c, environment: str, follow: bool, since: str | None, lines: int) -> None:
    where = target(environment)
    with in_root(c, project_root()):
        argv = where.compose.logs([where.django], follow=follow, since=since, lines=lines)
        run(c, argv, pty=follow and interactive(), hide=False)


@task(help=LOG_HELP)
def prod_logs(c, follow=False, since=None, lines=100):
    """Show production's Django logs (django_prod; -f to follow)."""
    _logs(c, "production", follow, since, lines)


@task(help=LOG_HELP)
def staging_logs(c, follow=False, since=None, lines=100):
    """Show staging's Django logs (django_staging; -f to follow)."""
    _logs(c, "staging", follow, since, lines)


ns = Collection(prod_logs, staging_logs)
