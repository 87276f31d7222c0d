"""The inv tasks against the real stacks, run as an operator runs them: `inv ...` in a checkout.

Local stack, from a fresh copy of the tree without .env: setup -> dev -> migrate ->
makemigrations --check -> superuser (from .env, no terminal) -> check -> test ->
healthcheck green -> Redis stopped -> healthcheck red naming Redis, exit 1 -> Redis back ->
green; then `inv clean` without --yes and without a terminal refuses and deletes nothing.

Server stack (the session's `server_stack`, which holds the engine-wide lock for the
guide's container names): healthcheck of all seven checks green, red naming Redis while it
is stopped, green again; migrate and check --deploy in django_prod; monitor --once.

Each compose project gets its own name through COMPOSE_PROJECT_NAME, which compose and the
tasks both honour, so nothing here touches a stack it did not start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.core import ROOT, free_port, wait_until
from tests.stack.stackkit import (
    SERVER_CONTAINERS,
    TEST_PROJECT_PREFIX,
    ServerStack,
    build_variables,
    docker,
    fresh_copy,
)

INV = [sys.executable, "-m", "invoke"]
# what an operator's shell must not lend the tasks: the test decides these
SCRUBBED = (
    "DJANGO_SUPERUSER_USERNAME",
    "DJANGO_SUPERUSER_EMAIL",
    "DJANGO_SUPERUSER_PASSWORD",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
    "COMPOSE_PROFILES",
    "COMPOSE_ENV_FILES",
    "DEV_PORT",
)


@dataclass
class Checkout:
    """A folder holding the project, and the environment `inv` runs with there."""

    path: Path
    env: dict[str, str] = field(default_factory=dict)

    def inv(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        return subprocess.run(
            [*INV, *args],
            cwd=self.path,
            env={**base, **self.env},
            stdin=subprocess.DEVNULL,  # no terminal, like cron or CI
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ok(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = self.inv(*args, timeout=timeout)
        assert proc.returncode == 0, (
            f"inv {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
        return proc


def project_volumes(project: str) -> list[str]:
    out = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}")
    return out.stdout.split()


def service_container(project: str, service: str) -> str:
    out = docker(
        "ps",
        "-aq",
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    )
    ids = out.stdout.split()
    assert len(ids) == 1, f"{project}/{service}: {ids}"
    return ids[0]


def statuses(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """The SERVICE -> STATUS columns of healthcheck's table."""
    rows = [line.split() for line in proc.stdout.splitlines()[1:] if line.strip()]
    return {row[0]: row[1] for row in rows}


def login(container: str, username: str, password: str) -> subprocess.CompletedProcess:
    """Django's authenticate() in `container`: prints "LOGIN <is a superuser> <email>".

    The password reaches the probe through its environment, never its argv.
    """
    return subprocess.run(
        [
            *("docker", "exec", "-e", "PROBE_PASSWORD", container),
            *("python", "manage.py", "shell", "-c"),
            "import os; from django.contrib.auth import authenticate; "
            f"u = authenticate(username={username!r}, password=os.environ['PROBE_PASSWORD']); "
            "print('LOGIN', u is not None and u.is_superuser, u and u.email)",
        ],
        env={**os.environ, "PROBE_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def local_checkout(docker_engine, tmp_path_factory) -> Iterator[Checkout]:
    path = fresh_copy(tmp_path_factory.mktemp("tasks-checkout"))
    assert not (path / ".env").exists()
    project = f"{TEST_PROJECT_PREFIX}tasks_{uuid.uuid4().hex[:8]}"
    checkout = Checkout(path, {**build_variables(project), "COMPOSE_PROJECT_NAME": project})
    try:
        yield checkout
    finally:
        subprocess.run(
            ["docker", "compose", "-p", project, "down", "-v", "--remove-orphans", "-t", "10"],
            capture_output=True,
            timeout=300,
        )


def test_operator_sequence_on_the_local_stack(local_checkout):
    checkout, project = local_checkout, local_checkout.env["COMPOSE_PROJECT_NAME"]
    port = free_port()

    setup = checkout.ok("setup")
    assert "generated DJANGO_SECRET_KEY, DJANGO_SUPERUSER_PASSWORD" in setup.stderr
    env_file = checkout.path / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert (checkout.path / "certs" / "cert.pem").is_file()
    values = dict(
        line.split("=", 1)
        for line in env_file.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    password = values["DJANGO_SUPERUSER_PASSWORD"]

    up = checkout.ok("dev", "--port", str(port), timeout=1800)
    assert f"Django: http://localhost:{port}" in up.stdout

    assert "migrate: ok" in checkout.ok("migrate").stderr
    made = checkout.ok("makemigrations", "--check")
    assert "No changes detected" in made.stdout

    # non-interactive from .env: stdin is not a terminal here
    created = checkout.ok("superuser")
    assert "Superuser created successfully." in created.stdout
    assert password not in created.stdout + created.stderr
    again = checkout.ok("superuser")
    assert "admin exists already; unchanged" in again.stderr
    # the password reaches the probe through its environment, as it reached createsuperuser
    probe = login(service_container(project, "django"), "admin", password)
    assert "LOGIN True admin@localhost" in probe.stdout, probe.stderr

    checked = checkout.ok("check")
    assert "System check identified no issues" in checked.stdout

    tested = checkout.ok("test", timeout=900)
    assert "\nOK" in tested.stderr + tested.stdout

    green = checkout.ok("healthcheck")
    assert statuses(green) == {
        "django": "green",
        "postgresql": "green",
        "redis": "green",
        "tls": "green",
    }

    redis = service_container(project, "redis")
    docker("stop", redis)
    try:
        red = checkout.inv("healthcheck")
        assert red.returncode == 1, red.stdout + red.stderr
        assert statuses(red)["redis"] == "red"
        assert statuses(red)["postgresql"] == "green"
        assert "healthcheck: red:" in red.stderr and "redis (container" in red.stderr
        report = json.loads(checkout.inv("healthcheck", "--json").stdout)
        assert report["status"] == "red" and "redis" in report["red"]
    finally:
        docker("start", redis)

    def green_again() -> bool:
        return checkout.inv("healthcheck").returncode == 0

    wait_until(green_again, timeout=90, what="healthcheck green with Redis back", interval=1)

    volumes_before = project_volumes(project)
    assert volumes_before, "the local stack should have its database volume"
    refused = checkout.inv("clean")
    assert refused.returncode == 1
    assert "refusing to delete the local volumes without a terminal" in refused.stderr
    assert project_volumes(project) == volumes_before
    postgres = service_container(project, "postgresql")
    assert docker("inspect", "-f", "{{.State.Running}}", postgres).stdout.strip() == "true"


# --- the server stack ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_checkout(server_stack: ServerStack) -> Checkout:
    """The tasks in this checkout, pointed at the test's server stack and its env files."""
    compose = server_stack.compose
    env = {
        **compose.variables,
        "COMPOSE_PROJECT_NAME": compose.project,
        # compose reads the production file for ${...} (what .env is on a server)
        "COMPOSE_ENV_FILES": str(compose.env_file),
    }
    return Checkout(ROOT, env)


def test_healthcheck_of_the_server_stack(server_checkout):
    green = server_checkout.ok("healthcheck", "--env", "production")
    assert statuses(green) == {
        "nginx": "green",
        "django_prod": "green",
        "django_staging": "green",
        "postgresql": "green",
        "pgbouncer": "green",
        "redis": "green",
        "tls": "green",
    }, green.stdout
    report = json.loads(server_checkout.ok("healthcheck", "--env", "staging", "--json").stdout)
    assert report["status"] == "green"
    assert {c["name"] for c in report["checks"]} >= {"nginx", "tls", "pgbouncer"}

    docker("stop", SERVER_CONTAINERS["redis"])
    try:
        red = server_checkout.inv("healthcheck", "--env", "production")
        assert red.returncode == 1, red.stdout + red.stderr
        assert statuses(red)["redis"] == "red"
        assert "redis (container aiia_redis is exited" in red.stderr
    finally:
        docker("start", SERVER_CONTAINERS["redis"])

    def green_again() -> bool:
        return server_checkout.inv("healthcheck", "--env", "production").returncode == 0

    wait_until(
        green_again, timeout=120, what="server healthcheck green with Redis back", interval=2
    )


def test_migrate_superuser_and_deploy_checks_in_production(server_checkout):
    migrated = server_checkout.ok("migrate", "--env", "production")
    assert "migrate (production): manage.py migrate --noinput in django_prod" in migrated.stderr
    checked = server_checkout.ok("check", "--env", "production")
    assert "System check identified no issues" in checked.stdout

    # the operator's environment holds the admin's values; nothing is in the env file
    password = f"pw-{uuid.uuid4().hex}"
    admin = Checkout(
        server_checkout.path,
        {
            **server_checkout.env,
            "DJANGO_SUPERUSER_USERNAME": "ops",
            "DJANGO_SUPERUSER_EMAIL": "ops@eduaiia.com",
            "DJANGO_SUPERUSER_PASSWORD": password,
        },
    )
    created = admin.ok("superuser", "--env", "production")
    assert "Superuser created successfully." in created.stdout
    assert password not in created.stdout + created.stderr
    probe = login(SERVER_CONTAINERS["django_prod"], "ops", password)
    assert "LOGIN True" in probe.stdout, probe.stderr


def test_monitor_once_lists_the_server_containers(server_checkout):
    proc = server_checkout.inv("monitor", "--once", "--env", "production", "--prefix", "aiia_")
    assert proc.returncode in (0, 1), proc.stderr
    for name in SERVER_CONTAINERS.values():
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(name + " ")), "")
        assert " running " in line, f"{name} missing or not running:\n{proc.stdout}"
    assert "postgresql  green" in proc.stdout and "pgbouncer   green" in proc.stdout
    if proc.returncode == 1:
        assert "past a threshold" in proc.stderr
