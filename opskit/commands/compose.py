"""`docker compose` command lines for the two stacks of the project.

The local stack (the guide's `docker-compose.local.yml`, project `aiia_local`) runs
Django's runserver as service `django` next to PostgreSQL and Redis. The server stack
(production and staging side by side) runs `django_prod` and `django_staging` behind
nginx, with PostgreSQL, PgBouncer and Redis shared.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opskit.environments import NAMES as ENVIRONMENTS


class UnknownEnvironment(ValueError):
    """An environment name the stacks do not know."""


def _terminal_and_env(tty: bool, env_names: Iterable[str]) -> list[str]:
    """-T without a terminal; each env name as a bare `-e NAME` (its value is copied from
    the docker client's environment, so a password never appears in argv)."""
    argv = [] if tty else ["-T"]
    for name in env_names:
        if "=" in name:
            raise ValueError(f"env_names: {name!r} must be a name only, never NAME=value")
        argv += ["-e", name]
    return argv


@dataclass(frozen=True)
class Compose:
    """One compose project: its files (and optional project name), as `docker compose` sees it."""

    files: tuple[str, ...]
    project: str | None = None

    def base(self) -> list[str]:
        argv = ["docker", "compose"]
        if self.project:
            argv += ["--project-name", self.project]
        for path in self.files:
            argv += ["--file", path]
        return argv

    def up(self, services: Sequence[str] = (), *, build: bool = False, wait: bool = False):
        argv = [*self.base(), "up", "--detach"]
        if build:
            argv.append("--build")
        if wait:
            argv.append("--wait")
        return [*argv, *services]

    def down(self, *, volumes: bool = False) -> list[str]:
        argv = [*self.base(), "down", "--remove-orphans"]
        if volumes:
            argv.append("--volumes")
        return argv

    def build(self, services: Sequence[str] = (), *, pull: bool = False, no_cache: bool = False):
        argv = [*self.base(), "build"]
        if pull:
            argv.append("--pull")
        if no_cache:
            argv.append("--no-cache")
        return [*argv, *services]

    def logs(
        self,
        services: Sequence[str] = (),
        *,
        follow: bool = False,
        since: str | None = None,
        lines: int | None = None,
        timestamps: bool = False,
    ) -> list[str]:
        argv = [*self.base(), "logs", "--no-color"]
        if follow:
            argv.append("--follow")
        if since:
            argv += ["--since", since]
        if lines is not None:
            argv += ["--tail", str(lines)]
        if timestamps:
            argv.append("--timestamps")
        return [*argv, *services]

    def exec(
        self,
        service: str,
        command: Sequence[str],
        *,
        tty: bool = False,
        env_names: Iterable[str] = (),
        user: str | None = None,
    ) -> list[str]:
        """Run `command` in the running `service`.

        `env_names` are passed as bare `-e NAME`: the value is copied from the environment
        of the docker client, so a password given that way never appears in argv.
        """
        argv = [*self.base(), "exec", *_terminal_and_env(tty, env_names)]
        if user:
            argv += ["--user", user]
        return [*argv, service, *command]

    def one_off(
        self,
        service: str,
        command: Sequence[str],
        *,
        tty: bool = False,
        env_names: Iterable[str] = (),
    ) -> list[str]:
        """Run `command` in a new, removed-after container of `service` (`compose run`).

        It has the service's image, env file, volumes, network and its own memory limit,
        so a management command does not have to fit beside the server it would share a
        container with (staging's limit holds one Django, not two); `--no-deps` leaves
        the rest of the stack as it is.
        """
        argv = [*self.base(), "run", "--rm", "--no-deps", *_terminal_and_env(tty, env_names)]
        return [*argv, service, *command]

    def ps(self, *, all: bool = False) -> list[str]:  # noqa: A002 - docker's own flag name
        argv = [*self.base(), "ps"]
        if all:
            argv.append("--all")
        return argv

    def images(self) -> list[str]:
        return [*self.base(), "images"]

    def volumes(self) -> list[str]:
        """The named volumes the project declares (one per line), from its files alone."""
        return [*self.base(), "config", "--volumes"]


# the guide's file names, at the repository root
LOCAL = Compose(("docker-compose.local.yml",))
SERVER = Compose(("docker-compose.yml",))


@dataclass(frozen=True)
class Target:
    """Where an environment's Django runs: the compose stack and the service's name."""

    environment: str
    compose: Compose
    django: str
    app_port: int

    @property
    def local(self) -> bool:
        return self.environment == "local"

    def manage(self, args: Sequence[str], *, tty: bool = False, env_names=()) -> list[str]:
        """`python manage.py ARGS` for this environment.

        Locally in the running `django` container (the guide's `docker-compose exec
        django ...`); on a server in a one-off container of the service, as a deploy runs
        its migrations, so the serving container's memory limit is not shared.
        """
        command = ["python", "manage.py", *args]
        if self.local:
            return self.compose.exec(self.django, command, tty=tty, env_names=env_names)
        return self.compose.one_off(self.django, command, tty=tty, env_names=env_names)


TARGETS = {
    "local": Target("local", LOCAL, "django", 8000),
    "staging": Target("staging", SERVER, "django_staging", 8001),
    "production": Target("production", SERVER, "django_prod", 8000),
}


def target(environment: str) -> Target:
    try:
        return TARGETS[environment]
    except KeyError:
        raise UnknownEnvironment(
            f"unknown environment {environment!r}: use {', '.join(ENVIRONMENTS)}"
        ) from None
