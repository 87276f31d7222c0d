"""The local stack: `inv dev`, `dev-down`, `dev-logs`, `dev-shell`, `dev-bash`, `build-dev`."""

from __future__ import annotations

import shutil

from invoke import Collection, Exit, task

from opskit.commands import django as dj
from opskit.commands.compose import LOCAL, target
from opskit.tasks import setup as setup_tasks
from opskit.tasks._common import DRY_HELP, ask, in_root, interactive, project_root, run, say
from opskit.tasks.config import refresh_app_env

BASE_IMAGE = "debian:bookworm-slim"
DJANGO = "django"


def _missing_steps(c) -> list[str]:
    """The scripts/ensure.sh steps this machine still needs before compose can build."""
    if not shutil.which("docker") or not ask(c, ["docker", "info"]).ok:
        return ["docker", "compose", "base-image"]
    steps = []
    if not ask(c, ["docker", "compose", "version"]).ok:
        steps.append("compose")
    if not ask(c, ["docker", "image", "inspect", BASE_IMAGE]).ok:
        steps.append("base-image")
    return steps


@task(
    help={
        "port": "host port for Django (default 8000; 9000 on Windows hosts)",
        "build": "rebuild the image before starting (default on; --no-build to skip)",
        "dry-run": DRY_HELP,
    }
)
def dev(c, port=8000, build=True, dry_run=False):
    """Start the local stack: Django on http://localhost:8000 with PostgreSQL and Redis."""
    root = project_root()
    if not (root / ".env").exists():
        say("dev: no .env yet: creating it first (inv setup)")
        setup_tasks.setup(c, dry_run=dry_run)
    if dry_run:
        say("dev: when docker, compose or the base image is missing, this runs first:")
        print("bash scripts/ensure.sh docker compose base-image")
    else:
        steps = _missing_steps(c)
        if steps:
            say(f"dev: {', '.join(steps)} missing: installing with scripts/ensure.sh (needs root)")
            with in_root(c, root):
                run(c, ["bash", "scripts/ensure.sh", *steps])
    # Django gets only the keys it reads: rendered afresh from the env files at each start
    refresh_app_env("local", dry_run=dry_run)
    say(f"dev: starting the local stack on port {port}")
    with in_root(c, root):
        env = {"DEV_PORT": str(port)}
        result = run(c, LOCAL.up(build=build, wait=True), env=env, dry_run=dry_run, warn=True)
        if result is not None and not result.ok:
            raise Exit(
                f"dev: the local stack did not come up (exit {result.exited}; output above). "
                f"Port {port} taken? try `inv dev --port 9000`; the logs: `inv dev-logs`",
                code=result.exited or 1,
            )
        # `up --wait` returned once PostgreSQL was healthy: migrate now, so the app's
        # pages work at once (as cookiecutter-django's start script does)
        say("dev: applying migrations")
        result = run(c, target("local").manage(dj.migrate()), dry_run=dry_run, warn=True)
    if result is None:
        return
    if not result.ok:
        raise Exit(
            f"dev: the stack is up but migrate failed (exit {result.exited}; output above); "
            "fix the migration, then `inv migrate`",
            code=result.exited or 1,
        )
    print(f"Django: http://localhost:{port}\nAdmin:  http://localhost:{port}/admin")


@task(help={"dry-run": DRY_HELP})
def dev_down(c, dry_run=False):
    """Stop the local stack (data stays in its volumes)."""
    with in_root(c, project_root()):
        run(c, LOCAL.down(), dry_run=dry_run)


@task(
    help={
        "follow": "keep printing new lines (Ctrl-C to stop)",
        "since": "only lines since a time: 10m, 2h, 2024-01-01T12:00:00",
        "lines": "how many lines from the end of each log (default 100)",
        "service": "one service only: django, postgresql or redis",
    }
)
def dev_logs(c, follow=False, since=None, lines=100, service=None):
    """Show the local stack's logs (-f to follow)."""
    with in_root(c, project_root()):
        argv = LOCAL.logs([service] if service else [], follow=follow, since=since, lines=lines)
        run(c, argv, pty=follow and interactive(), hide=False)


def _exec_interactive(c, command: list[str]) -> None:
    tty = interactive()
    with in_root(c, project_root()):
        result = run(c, LOCAL.exec(DJANGO, command, tty=tty), pty=tty, warn=True, hide=False)
    if result is not None and not result.ok:
        raise Exit(
            f"{command[0]} in the django container exited {result.exited}; "
            "is the local stack up? (inv dev)",
            code=result.exited or 1,
        )


@task
def dev_shell(c):
    """Open Django's shell (manage.py shell) in the local django container."""
    _exec_interactive(c, ["python", "manage.py", "shell"])


@task
def dev_bash(c):
    """Open bash in the local django container."""
    _exec_interactive(c, ["bash"])


@task(help={"no-cache": "build every layer again", "dry-run": DRY_HELP})
def build_dev(c, no_cache=False, dry_run=False):
    """Build the development image (aiia/app:dev) of the local stack."""
    with in_root(c, project_root()):
        run(c, LOCAL.build([DJANGO], no_cache=no_cache), dry_run=dry_run)


ns = Collection(dev, dev_down, dev_logs, dev_shell, dev_bash, build_dev)
