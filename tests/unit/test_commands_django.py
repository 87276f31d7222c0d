"""manage.py arguments, docker, ruff and probe command lines, by exact argv."""

from __future__ import annotations

import sys

import pytest

from opskit.commands import django as dj
from opskit.commands import docker as d
from opskit.commands import probes, quality


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(dj.migrate(), ["migrate", "--noinput"], id="migrate"),
        pytest.param(
            dj.migrate(check=True), ["migrate", "--noinput", "--check"], id="migrate-check"
        ),
        pytest.param(dj.makemigrations(), ["makemigrations", "--noinput"], id="makemigrations"),
        pytest.param(
            dj.makemigrations(check=True),
            ["makemigrations", "--noinput", "--check", "--dry-run"],
            id="makemigrations-check",
        ),
        pytest.param(
            dj.createsuperuser(interactive=False),
            ["createsuperuser", "--noinput"],
            id="superuser-from-env",
        ),
        pytest.param(dj.createsuperuser(interactive=True), ["createsuperuser"], id="superuser-ask"),
        pytest.param(dj.check(), ["check", "--fail-level", "WARNING"], id="check"),
        pytest.param(
            dj.check(deploy=True),
            ["check", "--fail-level", "WARNING", "--deploy"],
            id="check-deploy",
        ),
        pytest.param(dj.test(), ["test", "--noinput"], id="test"),
        pytest.param(
            dj.test(["core"], failfast=True), ["test", "--noinput", "--failfast", "core"], id="fast"
        ),
        pytest.param(dj.shell(), ["shell"], id="shell"),
    ],
)
def test_manage_arguments(argv, expected):
    assert argv == expected


def test_superuser_env_is_djangos_contract():
    assert dj.SUPERUSER_ENV == (
        "DJANGO_SUPERUSER_USERNAME",
        "DJANGO_SUPERUSER_EMAIL",
        "DJANGO_SUPERUSER_PASSWORD",
    )


def test_docker_builders():
    assert d.stats() == ["docker", "stats", "--no-stream", "--all", "--format", "{{json .}}"]
    assert d.inspect(["a", "b"]) == ["docker", "inspect", "--format", d.INSPECT_FORMAT, "a", "b"]
    assert d.project_containers("aiia") == [
        *("docker", "ps", "--all", "--no-trunc"),
        *("--filter", "label=com.docker.compose.project=aiia", "--format", d.PS_FORMAT),
    ]
    assert d.exec_("aiia_redis", ["redis-cli", "ping"], env_names=["X"]) == [
        *("docker", "exec", "-e", "X", "aiia_redis", "redis-cli", "ping")
    ]
    assert d.port("aiia_nginx", "443/tcp") == ["docker", "port", "aiia_nginx", "443/tcp"]
    assert d.info("NCPU") == ["docker", "info", "--format", "{{json .NCPU}}"]
    with pytest.raises(ValueError, match="name only"):
        d.exec_("x", ["true"], env_names=["K=v"])


def test_prune_never_touches_volumes_or_tagged_images():
    steps = d.prune()
    assert steps == [
        ["docker", "container", "prune", "--force"],
        ["docker", "network", "prune", "--force"],
        ["docker", "image", "prune", "--force"],
        ["docker", "builder", "prune", "--force"],
    ]
    flat = [word for argv in steps for word in argv]
    assert "volume" not in flat and "--all" not in flat and "-a" not in flat


def test_ruff_from_the_running_interpreter():
    assert quality.lint() == [sys.executable, "-m", "ruff", "check", "."]
    assert quality.format_(["opskit"], python="py") == [
        ["py", "-m", "ruff", "check", "--select", "I", "--fix", "opskit"],
        ["py", "-m", "ruff", "format", "opskit"],
    ]
    assert quality.format_(check=True, python="py") == [
        ["py", "-m", "ruff", "format", "--check", "--diff", "."],
        ["py", "-m", "ruff", "check", "--select", "I", "."],
    ]


def test_probes_carry_no_secret_and_ask_over_sockets():
    assert probes.postgres_connections()[:6] == ["psql", "-X", "-U", "aiia", "-d", "postgres"]
    pools = probes.pgbouncer_pools()
    assert pools[pools.index("-h") + 1] == "/var/run/pgbouncer"
    assert pools[-1] == "SHOW POOLS" and "--csv" in pools
    # one constant script: the password is looked up inside the container (how it reaches
    # redis-cli is run for real in test_health_checks.py)
    assert probes.redis_info() == ["sh", "-c", probes.REDIS_INFO_SCRIPT, "memory"]
    assert probes.django_health(8001)[-2:] == ["8001", "8.0"]
