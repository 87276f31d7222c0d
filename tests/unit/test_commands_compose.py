"""docker compose command lines, by exact argv."""

from __future__ import annotations

import pytest

from opskit.commands.compose import LOCAL, SERVER, Compose, UnknownEnvironment, target

LOCAL_BASE = ["docker", "compose", "--file", "docker-compose.local.yml"]
SERVER_BASE = ["docker", "compose", "--file", "docker-compose.yml"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(LOCAL.up(), [*LOCAL_BASE, "up", "--detach"], id="up"),
        pytest.param(
            LOCAL.up(build=True, wait=True),
            [*LOCAL_BASE, "up", "--detach", "--build", "--wait"],
            id="up-build-wait",
        ),
        pytest.param(
            SERVER.up(["nginx"]), [*SERVER_BASE, "up", "--detach", "nginx"], id="up-one-service"
        ),
        pytest.param(LOCAL.down(), [*LOCAL_BASE, "down", "--remove-orphans"], id="down-keeps-data"),
        pytest.param(
            LOCAL.down(volumes=True),
            [*LOCAL_BASE, "down", "--remove-orphans", "--volumes"],
            id="down-volumes",
        ),
        pytest.param(LOCAL.build(["django"]), [*LOCAL_BASE, "build", "django"], id="build"),
        pytest.param(
            LOCAL.build(no_cache=True, pull=True),
            [*LOCAL_BASE, "build", "--pull", "--no-cache"],
            id="build-fresh",
        ),
        pytest.param(LOCAL.logs(), [*LOCAL_BASE, "logs", "--no-color"], id="logs"),
        pytest.param(
            SERVER.logs(["django_prod"], follow=True, since="10m", lines=50),
            [
                *SERVER_BASE,
                *["logs", "--no-color", "--follow", "--since", "10m", "--tail", "50"],
                "django_prod",
            ],
            id="logs-follow-since-lines",
        ),
        pytest.param(LOCAL.ps(), [*LOCAL_BASE, "ps"], id="ps"),
        pytest.param(LOCAL.ps(all=True), [*LOCAL_BASE, "ps", "--all"], id="ps-all"),
        pytest.param(SERVER.images(), [*SERVER_BASE, "images"], id="images"),
        pytest.param(LOCAL.volumes(), [*LOCAL_BASE, "config", "--volumes"], id="volumes"),
    ],
)
def test_compose_builders(argv, expected):
    assert argv == expected


def test_project_name_and_several_files():
    stack = Compose(("a.yml", "b.yml"), project="aiia_test_1")
    assert stack.base() == [
        *("docker", "compose", "--project-name", "aiia_test_1"),
        *("--file", "a.yml", "--file", "b.yml"),
    ]


def test_exec_without_tty_passes_env_names_only():
    argv = LOCAL.exec("django", ["python", "manage.py", "check"], env_names=["A", "B"])
    assert argv == [*LOCAL_BASE, "exec", "-T", "-e", "A", "-e", "B", "django"] + [
        "python",
        "manage.py",
        "check",
    ]


def test_exec_with_tty_and_user():
    argv = LOCAL.exec("django", ["bash"], tty=True, user="app")
    assert argv == [*LOCAL_BASE, "exec", "--user", "app", "django", "bash"]


def test_exec_refuses_a_value_in_env_names():
    with pytest.raises(ValueError, match="name only"):
        LOCAL.exec("django", ["true"], env_names=["PASSWORD=hunter2"])


def test_one_off_container():
    argv = SERVER.one_off("django_prod", ["python", "manage.py", "migrate"], env_names=["A"])
    assert argv == [
        *SERVER_BASE,
        *("run", "--rm", "--no-deps", "-T", "-e", "A", "django_prod"),
        *("python", "manage.py", "migrate"),
    ]
    assert SERVER.one_off("django_prod", ["bash"], tty=True) == [
        *SERVER_BASE,
        *("run", "--rm", "--no-deps", "django_prod", "bash"),
    ]
    with pytest.raises(ValueError, match="name only"):
        SERVER.one_off("django_prod", ["true"], env_names=["A=1"])


@pytest.mark.parametrize(
    ("env", "service", "how", "port"),
    [
        ("local", "django", [*LOCAL_BASE, "exec", "-T"], 8000),
        ("staging", "django_staging", [*SERVER_BASE, "run", "--rm", "--no-deps", "-T"], 8001),
        ("production", "django_prod", [*SERVER_BASE, "run", "--rm", "--no-deps", "-T"], 8000),
    ],
)
def test_targets_follow_the_guide(env, service, how, port):
    where = target(env)
    assert where.django == service
    assert where.app_port == port
    # locally in the running container; on a server in a one-off one (its own memory limit)
    assert where.manage(["migrate"]) == [*how, service, "python", "manage.py", "migrate"]


def test_unknown_environment_names_the_choices():
    with pytest.raises(UnknownEnvironment, match="local, staging, production"):
        target("prod")
