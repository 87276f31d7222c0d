"""Django management in the environment's container: migrate, makemigrations, superuser, ..."""

from __future__ import annotations

import os
import time

from invoke import Collection, Exit, task

from opskit import settings as settings_mod
from opskit.commands import django as dj
from opskit.commands.compose import target
from opskit.tasks._common import (
    DRY_HELP,
    ENV_HELP,
    child_env,
    environment,
    in_root,
    interactive,
    project_root,
    run,
    say,
)
from opskit.tasks.config import refresh_app_env


def _manage(c, env: str | None, args: list[str], *, dry_run=False, what: str) -> None:
    root = project_root()
    where = target(environment(env, root))
    say(f"{what} ({where.environment}): manage.py {' '.join(args)} in {where.django}")
    if not where.local:  # a one-off container of the service: its env file, fresh
        refresh_app_env("server", dry_run=dry_run)
    started = time.monotonic()
    with in_root(c, root):
        result = run(c, where.manage(args), dry_run=dry_run, warn=True, timed=False)
    if result is not None and not result.ok:
        raise Exit(
            f"{what} failed in {where.django} (exit {result.exited}); its output is above "
            f"(`inv ps --env {where.environment}` shows whether the stack is up)",
            code=result.exited or 1,
        )
    if result is not None:
        say(f"{what}: ok in {time.monotonic() - started:.1f}s")


@task(help={"env": ENV_HELP, "dry-run": DRY_HELP})
def migrate(c, env=None, dry_run=False):
    """Apply the database migrations (manage.py migrate)."""
    _manage(c, env, dj.migrate(), dry_run=dry_run, what="migrate")


@task(
    help={
        "check": "write nothing; fail when models changed without a migration",
        "dry-run": DRY_HELP,
    }
)
def makemigrations(c, check=False, dry_run=False):
    """Create migrations for model changes (local stack; --check for CI)."""
    _manage(c, "local", dj.makemigrations(check=check), dry_run=dry_run, what="makemigrations")


def _superuser_values(env: str, root) -> dict[str, str]:
    """DJANGO_SUPERUSER_* from this process's environment, else from the env file."""
    names = dj.SUPERUSER_ENV
    if all(os.environ.get(n) for n in names):
        return {n: os.environ[n] for n in names}
    try:
        loaded = settings_mod.load(env, root=root)
    except settings_mod.SettingsError as exc:
        raise Exit(f"superuser: {exc}", code=1) from None
    return child_env(names, {n: loaded.reveal(n) for n in names if n in loaded.values})


@task(help={"env": ENV_HELP, "dry-run": DRY_HELP})
def superuser(c, env=None, dry_run=False):
    """Create the admin user from DJANGO_SUPERUSER_* (environment or .env), else ask."""
    root = project_root()
    where = target(environment(env, root))
    values = _superuser_values(where.environment, root)
    missing = [n for n, v in values.items() if not v]
    if not where.local:
        refresh_app_env("server", dry_run=dry_run)
    with in_root(c, root):
        if not missing:
            argv = where.manage(dj.createsuperuser(interactive=False), env_names=dj.SUPERUSER_ENV)
            say(f"superuser ({where.environment}): {values['DJANGO_SUPERUSER_USERNAME']}")
            result = run(c, argv, dry_run=dry_run, env=values, secret=dj.SUPERUSER_ENV, warn=True)
            if result is None or result.ok:
                return
            if "already taken" in result.stderr + result.stdout:
                say(f"superuser: {values['DJANGO_SUPERUSER_USERNAME']} exists already; unchanged")
                return
            raise Exit(f"superuser: createsuperuser failed (exit {result.exited})", code=1)
        if not interactive():
            raise Exit(
                f"superuser: {', '.join(missing)} not set and no terminal to ask; set them "
                "in the environment or in .env (inv setup fills the local ones)",
                code=1,
            )
        say(f"superuser ({where.environment}): {', '.join(missing)} not set; asking")
        run(
            c,
            where.manage(dj.createsuperuser(interactive=True), tty=True),
            pty=True,
            dry_run=dry_run,
        )


def _test(c, labels: str | None, failfast: bool) -> None:
    args = dj.test(labels.split() if labels else (), failfast=failfast)
    _manage(c, "local", args, what="test-fast" if failfast else "test")


TEST_HELP = {"labels": "what to test, e.g. core or core.tests.test_health (default: all)"}


@task(help=TEST_HELP)
def test(c, labels=None):
    """Run the app's tests inside the local django container (manage.py test)."""
    _test(c, labels, failfast=False)


@task(help=TEST_HELP)
def test_fast(c, labels=None):
    """Run the app's tests, stopping at the first failure (--failfast)."""
    _test(c, labels, failfast=True)


@task(help={"env": ENV_HELP, "deploy": "add the deployment checks (always on for servers)"})
def check(c, env=None, deploy=False):
    """Run Django's system checks (with --deploy on staging and production)."""
    chosen = environment(env, project_root())
    _manage(c, chosen, dj.check(deploy=deploy or chosen != "local"), what="check")


ns = Collection(migrate, makemigrations, superuser, test, test_fast, check)
