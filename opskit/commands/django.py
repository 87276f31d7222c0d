"""`manage.py` arguments for the Django tasks (run in a container by compose.Target.manage)."""

from __future__ import annotations

from collections.abc import Sequence

# createsuperuser --noinput reads these from its environment (Django's documented contract)
SUPERUSER_ENV = (
    "DJANGO_SUPERUSER_USERNAME",
    "DJANGO_SUPERUSER_EMAIL",
    "DJANGO_SUPERUSER_PASSWORD",
)


def migrate(*, check: bool = False) -> list[str]:
    """Apply migrations; with `check`, only fail when some are unapplied."""
    argv = ["migrate", "--noinput"]
    if check:
        argv.append("--check")
    return argv


def makemigrations(apps: Sequence[str] = (), *, check: bool = False) -> list[str]:
    """Create migrations; with `check`, write nothing and fail when models changed."""
    argv = ["makemigrations", "--noinput"]
    if check:
        argv += ["--check", "--dry-run"]
    return [*argv, *apps]


def createsuperuser(*, interactive: bool) -> list[str]:
    return ["createsuperuser"] if interactive else ["createsuperuser", "--noinput"]


def check(*, deploy: bool = False) -> list[str]:
    argv = ["check", "--fail-level", "WARNING"]
    if deploy:
        argv.append("--deploy")
    return argv


def test(labels: Sequence[str] = (), *, failfast: bool = False, keepdb: bool = False):
    argv = ["test", "--noinput"]
    if failfast:
        argv.append("--failfast")
    if keepdb:
        argv.append("--keepdb")
    return [*argv, *labels]


def shell() -> list[str]:
    return ["shell"]
