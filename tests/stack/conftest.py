"""Fixtures of the stack tier: the compose stacks of compose/ in the real Docker engine.

The guide fixes the server stack's container names (aiia_nginx, ...), so one server
stack can run per engine at a time: `server_stack` is session-scoped, holds an fcntl
lock on /tmp/aiia-stack.lock while it runs (whoever else starts a server stack on this
engine takes the same lock), removes a leftover test stack of an earlier run first, and
tears down what it started, volumes included. Images stay cached.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.harness.core import ROOT, free_port
from tests.stack.stackkit import (
    BUILD_TIMEOUT_S,
    SERVER_COMPOSE,
    TEST_PROJECT_PREFIX,
    UP_TIMEOUT_S,
    Compose,
    ServerStack,
    build_variables,
    env_from_example,
    letsencrypt_dir,
    remove_leftover_test_stacks,
    render_app_env,
    write_private,
)
from tests.stack.stackkit import (
    stack_lock as hold_stack_lock,
)


@pytest.fixture(scope="session")
def stack_lock() -> Iterator[None]:
    """The engine-wide lock of whoever runs a server stack with the guide's names."""
    with hold_stack_lock():
        yield


@pytest.fixture(scope="session")
def server_stack(docker_engine, stack_lock, tmp_path_factory) -> Iterator[ServerStack]:
    """The server stack of compose/server.yml, built and up with every container healthy.

    Env files come from config/*.env.example with fresh secrets; nginx gets a test CA's
    certificate where Let's Encrypt's would be; its ports go to free loopback ports.
    """
    remove_leftover_test_stacks()
    base = tmp_path_factory.mktemp("server-stack")
    project = f"{TEST_PROJECT_PREFIX}{uuid.uuid4().hex[:8]}"
    prod_env = write_private(
        base / "production.env", env_from_example(ROOT / "config" / "prod.env.example")
    )
    staging_env = write_private(
        base / "staging.env", env_from_example(ROOT / "config" / "staging.env.example")
    )
    letsencrypt, ca_file = letsencrypt_dir(base)
    override = base / "test-override.yml"
    override.write_text(
        "services:\n"
        "  nginx:\n"
        "    volumes:\n"
        "      - type: bind\n"
        f"        source: {letsencrypt}\n"
        "        target: /etc/letsencrypt\n"
    )
    http_port, https_port = free_port(), free_port()
    compose = Compose(
        project,
        (SERVER_COMPOSE, override),
        env_file=prod_env,
        variables={
            **build_variables(project),
            "PRODUCTION_ENV_FILE": str(prod_env),
            "STAGING_ENV_FILE": str(staging_env),
            "HTTP_PUBLISH": f"127.0.0.1:{http_port}",
            "HTTPS_PUBLISH": f"127.0.0.1:{https_port}",
        },
    )
    render_app_env(compose.variables)
    started = time.monotonic()
    compose.run("build", timeout=BUILD_TIMEOUT_S)
    build_s = time.monotonic() - started
    try:
        started = time.monotonic()
        proc = compose.run(
            "up",
            "-d",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT_S),
            check=False,
            timeout=UP_TIMEOUT_S + 120,
        )
        up_s = time.monotonic() - started
        if proc.returncode != 0:
            raise AssertionError(
                f"the server stack was not healthy within {UP_TIMEOUT_S}s:\n"
                f"{proc.stderr[-3000:]}\n--- logs ---\n{compose.logs()}"
            )
        # what a deploy does next: each environment's schema, through PgBouncer, in a
        # one-off container of the service (its own memory limit: an `exec` would share
        # the serving container's, and staging's 100 MB does not hold a second Django)
        for service in ("django_prod", "django_staging"):
            compose.run(
                "run",
                "--rm",
                "--no-deps",
                "-T",
                service,
                "python",
                "manage.py",
                "migrate",
                "--noinput",
            )
        yield ServerStack(compose, http_port, https_port, ca_file, base, build_s, up_s)
    finally:
        compose.run("down", "-v", "--remove-orphans", "--timeout", "30", check=False, timeout=300)
