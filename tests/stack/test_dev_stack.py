"""The local stack from a fresh clone: the app answers, and an edited view is served live.

The stack comes up through `inv dev` itself, run in the clone (what a new user types):

    docker compose -f docker-compose.local.yml up -d --build --wait
    docker compose -f docker-compose.local.yml exec -T django python manage.py migrate --noinput

so every page, the ones reading the database included, answers with no other command.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit import appenv, settings
from tests.harness.core import free_port, venv_tool, wait_until
from tests.stack.stackkit import (
    TEST_PROJECT_PREFIX,
    Compose,
    build_variables,
    container_state,
    fresh_copy,
)


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@dataclass
class DevStack:
    compose: Compose
    clone: Path
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def dev_stack(docker_engine, tmp_path_factory) -> Iterator[DevStack]:
    clone = fresh_copy(tmp_path_factory.mktemp("fresh-clone"))
    assert not (clone / ".env").exists()
    project = f"{TEST_PROJECT_PREFIX}dev_{uuid.uuid4().hex[:8]}"
    port = free_port()
    compose = Compose(
        project,
        (clone / "docker-compose.local.yml",),
        variables={**build_variables(project), "DEV_PORT": str(port)},
    )
    env = {k: v for k, v in os.environ.items() if k not in ("COMPOSE_FILE", "COMPOSE_PROFILES")}
    # compose takes the project name from COMPOSE_PROJECT_NAME over the file's `name:`
    env.update(compose.variables, COMPOSE_PROJECT_NAME=project)
    try:
        proc = subprocess.run(
            [venv_tool("inv"), "dev", "--port", str(port)],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"inv dev failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                f"{proc.stderr[-3000:]}\n--- logs ---\n{compose.logs()}"
            )
        yield DevStack(compose, clone, port)
    finally:
        compose.run("down", "-v", "--remove-orphans", "--timeout", "10", check=False, timeout=300)


def test_app_answers_on_the_dev_port(dev_stack):
    status, body = get(dev_stack.url("/health/"))
    assert status == 200, body
    doc = json.loads(body)
    assert doc["environment"] == "local"
    assert doc["checks"]["database"]["ok"] and doc["checks"]["cache"]["ok"]
    # the guide's development database and credentials
    django = dev_stack.compose.run("ps", "-q", "django").stdout.strip()
    env = container_state(django)["Config"]["Env"]
    assert {"POSTGRES_DB=aiia_dev", "POSTGRES_USER=aiia_dev", "POSTGRES_HOST=postgresql"} <= set(
        env
    )


def test_the_app_container_holds_only_the_keys_django_reads(dev_stack):
    """`inv dev` rendered .env.app/django.env from the example and the fresh .env: the
    container has the generated secret key, and not even the name of a withheld key (the
    superuser password `inv setup` generated, S3, backup, webhook)."""
    django = dev_stack.compose.run("ps", "-q", "django").stdout.strip()
    env = dict(e.partition("=")[::2] for e in container_state(django)["Config"]["Env"])
    withheld = set(settings.withheld_from("django"))
    assert not withheld & set(env), sorted(withheld & set(env))
    dot_env = appenv.parse((dev_stack.clone / ".env").read_text())
    assert dot_env["DJANGO_SUPERUSER_PASSWORD"]  # inv setup made one: it stays out
    assert env["DJANGO_SECRET_KEY"] == dot_env["DJANGO_SECRET_KEY"]
    rendered = dev_stack.clone / ".env.app" / "django.env"
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o600


def test_pages_reading_the_database_answer_at_once(dev_stack):
    # no `inv migrate` in between: `inv dev` applied the migrations
    status, body = get(dev_stack.url("/api/notes/"))
    assert status == 200, body[:2000]


def test_an_edited_view_is_served_without_a_restart(dev_stack):
    django = dev_stack.compose.run("ps", "-q", "django").stdout.strip()
    before = container_state(django)["State"]
    marker = uuid.uuid4().hex
    path = f"/api/reload-{marker[:8]}/"
    assert get(dev_stack.url(path))[0] == 404

    views = dev_stack.clone / "app" / "core" / "views.py"
    views.write_text(
        views.read_text()
        + f"\n\ndef reload_probe(request):\n    return JsonResponse({{'marker': '{marker}'}})\n"
    )
    urls = dev_stack.clone / "app" / "core" / "urls.py"
    urls.write_text(
        urls.read_text().rstrip()
        + f'\nurlpatterns.append(path("reload-{marker[:8]}/", views.reload_probe))\n'
    )

    def served() -> bool:
        status, body = get(dev_stack.url(path))
        return status == 200 and json.loads(body) == {"marker": marker}

    wait_until(served, timeout=60, what="the edited view", interval=0.5)
    after = container_state(django)["State"]
    assert after["StartedAt"] == before["StartedAt"]
    assert container_state(django)["RestartCount"] == 0
    assert after["Running"]
