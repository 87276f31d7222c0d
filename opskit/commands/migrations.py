"""Django's migrations in a deploy: the plan, `migrate` and `collectstatic`, and parsers
of what they printed (which migrations ran, which one failed, how to reverse them)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MANAGE = ("python", "manage.py")


def showmigrations() -> list[str]:
    return [*MANAGE, "showmigrations", "--plan"]


def migrate() -> list[str]:
    return [*MANAGE, "migrate", "--noinput"]


def collectstatic() -> list[str]:
    return [*MANAGE, "collectstatic", "--noinput", "-v", "0"]


@dataclass(frozen=True)
class MigrationPlan:
    applied: tuple[str, ...]  # app.name, in plan order
    pending: tuple[str, ...]

    def last_applied(self, app: str) -> str:
        names = [m.split(".", 1)[1] for m in self.applied if m.split(".", 1)[0] == app]
        return names[-1] if names else "zero"


def parse_plan(text: str) -> MigrationPlan:
    """`manage.py showmigrations --plan`: `[X]  app.name` or `[ ]  app.name` per line."""
    applied, pending = [], []
    for line in text.splitlines():
        m = re.match(r"^\s*\[(X| )\]\s+([\w]+\.[\w]+)", line)
        if m:
            (applied if m.group(1) == "X" else pending).append(m.group(2))
    return MigrationPlan(tuple(applied), tuple(pending))


def parse_migrate(text: str) -> tuple[list[str], str | None]:
    """Migrations `migrate` applied (`Applying app.name... OK`) and the one it failed on."""
    done, failed = [], None
    for line in text.splitlines():
        m = re.match(r"^\s*Applying ([\w]+\.[\w]+)\.\.\.(.*)$", line)
        if m:
            if m.group(2).strip().startswith("OK"):
                done.append(m.group(1))
            else:
                failed = m.group(1)
    if failed in done:
        failed = None
    return done, failed


def reverse_targets(before: MigrationPlan, applied: Sequence[str]) -> list[tuple[str, str]]:
    """(app, migration to go back to) for each app with newly applied migrations."""
    apps: list[str] = []
    for m in applied:
        app = m.split(".", 1)[0]
        if app not in apps:
            apps.append(app)
    return [(app, before.last_applied(app)) for app in apps]
