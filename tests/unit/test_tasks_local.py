"""Each task's commands by exact argv (invoke's MockContext), and with --dry-run none runs.

Tasks run in a throwaway project folder (tasks.py, opskit/, config/ like a checkout) so
that `inv setup` writes its .env and certificates there, never into this checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock

import pytest
from invoke import Exit, MockContext, Result

from opskit import devenv
from opskit.tasks import dev, django, docker, logs, quality, setup

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_LOCAL = "docker compose --file docker-compose.local.yml"
COMPOSE_SERVER = "docker compose --file docker-compose.yml"
ONE_OFF = "run --rm --no-deps -T"
SUPERUSER_NAMES = (
    "DJANGO_SUPERUSER_USERNAME",
    "DJANGO_SUPERUSER_EMAIL",
    "DJANGO_SUPERUSER_PASSWORD",
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A checkout-shaped folder as the current directory, without .env."""
    (tmp_path / "tasks.py").write_text("")
    (tmp_path / "opskit").mkdir()
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "local.env.example", tmp_path / "config")
    monkeypatch.chdir(tmp_path)
    for name in (*SUPERUSER_NAMES, "COMPOSE_PROJECT_NAME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def context(*commands: str, failing: dict[str, Result] | None = None) -> MockContext:
    """A context that answers the given commands with success and refuses any other."""
    results = {cmd: Result(stdout="", exited=0) for cmd in commands}
    results.update(failing or {})
    return MockContext(run=results)


def ran(c: MockContext) -> list[str]:
    return [call.args[0] for call in c.run.call_args_list]


def nothing_runs() -> MockContext:
    """A context on which any command fails the test (MockContext raises for unknown ones)."""
    return MockContext(run={})


# --- setup and clean -------------------------------------------------------------------


def test_setup_creates_env_with_fresh_secrets_and_certificates(project):
    setup.setup(nothing_runs())
    env = (project / ".env").read_text()
    assert (project / ".env").stat().st_mode & 0o777 == 0o600
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line and line[0] != "#")
    assert len(values["DJANGO_SECRET_KEY"]) >= 50 and values["DJANGO_SECRET_KEY"] != "CHANGE_ME"
    assert len(values["DJANGO_SUPERUSER_PASSWORD"]) >= 20
    assert values["POSTGRES_PASSWORD"] == "dev_password_123"  # the guide's dev credentials
    for name in ("ca.pem", "ca-key.pem", "cert.pem", "key.pem"):
        assert (project / "certs" / name).is_file()
    # the file validates as a local env file
    from opskit import settings

    assert settings.load("local", root=project).environment == "local"


def test_setup_never_overwrites_env(project, capsys):
    (project / ".env").write_text("ENVIRONMENT=local\nMINE=1\n")
    setup.setup(nothing_runs())
    assert (project / ".env").read_text() == "ENVIRONMENT=local\nMINE=1\n"
    assert "exists already; left as it is" in capsys.readouterr().err


def test_setup_secrets_differ_between_runs(project, tmp_path_factory):
    setup.setup(nothing_runs())
    first = (project / ".env").read_text()
    (project / ".env").unlink()
    setup.setup(nothing_runs())
    assert (project / ".env").read_text() != first


def test_setup_dry_run_writes_nothing(project):
    setup.setup(nothing_runs(), dry_run=True)
    assert not (project / ".env").exists() and not (project / "certs").exists()


def test_render_env_fills_placeholders_and_keeps_the_rest():
    example = (
        "# comment\nDJANGO_SECRET_KEY=CHANGE_ME\nDJANGO_SUPERUSER_PASSWORD=\nPOSTGRES_PASSWORD=x\n"
    )
    text, filled = devenv.render_env(example, make=lambda key: f"new-{key}")
    assert text == (
        "# comment\nDJANGO_SECRET_KEY=new-DJANGO_SECRET_KEY\n"
        "DJANGO_SUPERUSER_PASSWORD=new-DJANGO_SUPERUSER_PASSWORD\nPOSTGRES_PASSWORD=x\n"
    )
    assert filled == ["DJANGO_SECRET_KEY", "DJANGO_SUPERUSER_PASSWORD"]


def test_clean_with_yes_removes_volumes(project):
    c = context(f"{COMPOSE_LOCAL} down --remove-orphans --volumes")
    setup.clean(c, yes=True)
    assert ran(c) == [f"{COMPOSE_LOCAL} down --remove-orphans --volumes"]


def test_clean_without_a_terminal_refuses_and_runs_nothing(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    c = nothing_runs()
    with pytest.raises(Exit) as exc:
        setup.clean(c)
    assert exc.value.code == 1 and "refusing" in exc.value.message
    assert c.run.call_count == 0


def test_clean_asks_in_a_terminal(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    c = nothing_runs()
    with pytest.raises(Exit, match="nothing was changed"):
        setup.clean(c)
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    c = context(f"{COMPOSE_LOCAL} down --remove-orphans --volumes")
    setup.clean(c)
    assert ran(c) == [f"{COMPOSE_LOCAL} down --remove-orphans --volumes"]


def test_clean_dry_run(project, capsys):
    setup.clean(nothing_runs(), dry_run=True)
    assert capsys.readouterr().out == f"{COMPOSE_LOCAL} down --remove-orphans --volumes\n"


# --- the local stack -------------------------------------------------------------------

UP = f"{COMPOSE_LOCAL} up --detach --build --wait"
MIGRATE = f"{COMPOSE_LOCAL} exec -T django python manage.py migrate --noinput"
PROBES = ("docker info", "docker compose version", "docker image inspect debian:bookworm-slim")


def test_dev_creates_env_then_starts_the_stack_on_the_windows_port(project, monkeypatch, capsys):
    monkeypatch.setattr(dev.shutil, "which", lambda name: f"/usr/bin/{name}")
    c = context(*PROBES, UP, MIGRATE)
    dev.dev(c, port=9000)
    assert (project / ".env").is_file()
    assert ran(c) == [*PROBES, UP, MIGRATE]
    assert c.run.call_args_list[-2].kwargs["env"] == {"DEV_PORT": "9000"}
    out = capsys.readouterr()
    assert "Django: http://localhost:9000" in out.out
    assert "no .env yet: creating it first (inv setup)" in out.err


def test_dev_installs_docker_when_missing(project, monkeypatch):
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    ensure = "bash scripts/ensure.sh docker compose base-image"
    c = context(ensure, UP, MIGRATE)
    dev.dev(c)
    assert ran(c) == [ensure, UP, MIGRATE]
    assert c.run.call_args_list[-2].kwargs["env"] == {"DEV_PORT": "8000"}


def test_dev_installs_only_the_missing_base_image(project, monkeypatch):
    monkeypatch.setattr(dev.shutil, "which", lambda name: f"/usr/bin/{name}")
    missing = Result(stderr="Error: No such image: debian:bookworm-slim", exited=1)
    c = context(
        *PROBES[:2],
        "bash scripts/ensure.sh base-image",
        UP,
        MIGRATE,
        failing={PROBES[2]: missing},
    )
    dev.dev(c)
    assert ran(c) == [*PROBES, "bash scripts/ensure.sh base-image", UP, MIGRATE]


def test_dev_dry_run_runs_nothing(project, capsys):
    dev.dev(nothing_runs(), port=9000, dry_run=True)
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "bash scripts/ensure.sh docker compose base-image",
        f"DEV_PORT=9000 {UP}",
        MIGRATE,
    ]
    assert not (project / ".env").exists()


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(
            lambda c: dev.dev_down(c), f"{COMPOSE_LOCAL} down --remove-orphans", id="down"
        ),
        pytest.param(lambda c: dev.build_dev(c), f"{COMPOSE_LOCAL} build django", id="build-dev"),
        pytest.param(
            lambda c: dev.build_dev(c, no_cache=True),
            f"{COMPOSE_LOCAL} build --no-cache django",
            id="build-dev-no-cache",
        ),
        pytest.param(
            lambda c: dev.dev_logs(c), f"{COMPOSE_LOCAL} logs --no-color --tail 100", id="logs"
        ),
        pytest.param(
            lambda c: dev.dev_logs(c, follow=True, since="10m", lines=20, service="django"),
            f"{COMPOSE_LOCAL} logs --no-color --follow --since 10m --tail 20 django",
            id="logs-follow",
        ),
        pytest.param(
            lambda c: logs.prod_logs(c, lines=5),
            f"{COMPOSE_SERVER} logs --no-color --tail 5 django_prod",
            id="prod-logs",
        ),
        pytest.param(
            lambda c: logs.staging_logs(c, follow=True, since="1h"),
            f"{COMPOSE_SERVER} logs --no-color --follow --since 1h --tail 100 django_staging",
            id="staging-logs",
        ),
    ],
)
def test_stack_commands(project, monkeypatch, call, expected):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    c = context(expected)
    call(c)
    assert ran(c) == [expected]


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (dev.dev_shell, f"{COMPOSE_LOCAL} exec django python manage.py shell"),
        (dev.dev_bash, f"{COMPOSE_LOCAL} exec django bash"),
    ],
    ids=["shell", "bash"],
)
def test_interactive_shells_get_a_tty_in_a_terminal(project, monkeypatch, task, expected):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    c = context(expected)
    task(c)
    assert ran(c) == [expected]
    assert c.run.call_args.kwargs["pty"] is True


def test_shell_without_a_terminal_pipes(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    expected = f"{COMPOSE_LOCAL} exec -T django python manage.py shell"
    c = context(expected)
    dev.dev_shell(c)
    assert ran(c) == [expected] and c.run.call_args.kwargs["pty"] is False


def test_shell_failure_says_what_to_do(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    cmd = f"{COMPOSE_LOCAL} exec -T django bash"
    c = context(failing={cmd: Result(exited=1, stderr='service "django" is not running')})
    with pytest.raises(Exit, match=r"is the local stack up\? \(inv dev\)"):
        dev.dev_bash(c)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: dev.dev_down(c, dry_run=True), id="dev-down"),
        pytest.param(lambda c: dev.build_dev(c, dry_run=True), id="build-dev"),
        pytest.param(lambda c: django.migrate(c, dry_run=True), id="migrate"),
        pytest.param(
            lambda c: django.migrate(c, env="production", dry_run=True), id="migrate-prod"
        ),
        pytest.param(lambda c: django.makemigrations(c, dry_run=True), id="makemigrations"),
        pytest.param(lambda c: quality.format_(c, dry_run=True), id="format"),
        pytest.param(lambda c: docker.prune(c, dry_run=True), id="prune"),
        pytest.param(lambda c: setup.clean(c, dry_run=True), id="clean"),
        pytest.param(lambda c: setup.setup(c, dry_run=True), id="setup"),
    ],
)
def test_dry_run_prints_and_runs_nothing(project, capsys, call):
    c = nothing_runs()
    call(c)
    assert c.run.call_count == 0
    captured = capsys.readouterr()
    assert captured.out or captured.err


# --- Django management -----------------------------------------------------------------


def server_env_files(project, environment="production") -> None:
    """The server stack's env files, which its app env files are rendered from."""
    (project / ".env").write_text(
        f"ENVIRONMENT={environment}\nDJANGO_SECRET_KEY=k1\nS3_SECRET_ACCESS_KEY=s3\n"
    )
    (project / ".env.staging").write_text("ENVIRONMENT=staging\nDJANGO_SECRET_KEY=k2\n")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        pytest.param(
            lambda c: django.migrate(c),
            f"{COMPOSE_LOCAL} exec -T django python manage.py migrate --noinput",
            id="migrate-local",
        ),
        pytest.param(
            lambda c: django.migrate(c, env="production"),
            f"{COMPOSE_SERVER} {ONE_OFF} django_prod python manage.py migrate --noinput",
            id="migrate-production",
        ),
        pytest.param(
            lambda c: django.migrate(c, env="staging"),
            f"{COMPOSE_SERVER} {ONE_OFF} django_staging python manage.py migrate --noinput",
            id="migrate-staging",
        ),
        pytest.param(
            lambda c: django.makemigrations(c, check=True),
            f"{COMPOSE_LOCAL} exec -T django python manage.py makemigrations --noinput "
            "--check --dry-run",
            id="makemigrations-check",
        ),
        pytest.param(
            lambda c: django.test(c),
            f"{COMPOSE_LOCAL} exec -T django python manage.py test --noinput",
            id="test",
        ),
        pytest.param(
            lambda c: django.test_fast(c, labels="core"),
            f"{COMPOSE_LOCAL} exec -T django python manage.py test --noinput --failfast core",
            id="test-fast",
        ),
        pytest.param(
            lambda c: django.check(c),
            f"{COMPOSE_LOCAL} exec -T django python manage.py check --fail-level WARNING",
            id="check-local",
        ),
        pytest.param(
            lambda c: django.check(c, env="production"),
            f"{COMPOSE_SERVER} {ONE_OFF} django_prod python manage.py check --fail-level WARNING "
            "--deploy",
            id="check-production-deploy",
        ),
    ],
)
def test_manage_commands(project, call, expected):
    server = COMPOSE_SERVER in expected
    if server:
        server_env_files(project)
    c = context(expected)
    call(c)
    assert ran(c) == [expected]
    # a one-off container of the server stack starts with its app env file rendered afresh
    rendered = project / ".env.app" / "django_prod.env"
    assert rendered.is_file() == server
    if server:
        assert "DJANGO_SECRET_KEY=k1" in rendered.read_text()
        assert "S3_SECRET_ACCESS_KEY" not in rendered.read_text()


def test_env_defaults_to_the_environment_of_dot_env(project):
    server_env_files(project, "staging")
    expected = f"{COMPOSE_SERVER} {ONE_OFF} django_staging python manage.py migrate --noinput"
    c = context(expected)
    django.migrate(c)
    assert ran(c) == [expected]


def test_unknown_env_is_refused(project):
    with pytest.raises(Exit, match="unknown environment"):
        django.migrate(nothing_runs(), env="prod")


def test_a_failed_management_command_exits_with_its_code(project):
    cmd = f"{COMPOSE_LOCAL} exec -T django python manage.py test --noinput"
    c = context(failing={cmd: Result(exited=3)})
    with pytest.raises(Exit) as exc:
        django.test(c)
    assert exc.value.code == 3 and "inv ps --env local" in exc.value.message


SUPERUSER = (
    f"{COMPOSE_LOCAL} exec -T -e DJANGO_SUPERUSER_USERNAME -e DJANGO_SUPERUSER_EMAIL "
    "-e DJANGO_SUPERUSER_PASSWORD django python manage.py createsuperuser --noinput"
)


def test_superuser_from_env_file_keeps_the_password_out_of_argv(project):
    setup.setup(nothing_runs())
    password = devenv.dotenv_values(project / ".env")["DJANGO_SUPERUSER_PASSWORD"]
    c = context(SUPERUSER)
    django.superuser(c)
    assert ran(c) == [SUPERUSER]
    assert password not in SUPERUSER
    assert c.run.call_args.kwargs["env"] == {
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_EMAIL": "admin@localhost",
        "DJANGO_SUPERUSER_PASSWORD": password,
    }


def test_superuser_environment_wins_over_the_file(project, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "ops@eduaiia.com")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "from-the-environment")
    expected = SUPERUSER.replace(f"{COMPOSE_LOCAL} exec -T", f"{COMPOSE_SERVER} {ONE_OFF}").replace(
        " django python", " django_prod python"
    )
    c = context(expected)
    # the file's DJANGO_SUPERUSER_* are not read when the environment holds all three
    server_env_files(project)
    django.superuser(c, env="production")
    assert ran(c) == [expected]
    assert c.run.call_args.kwargs["env"]["DJANGO_SUPERUSER_PASSWORD"] == "from-the-environment"


def test_superuser_dry_run_masks_the_password(project, monkeypatch, capsys):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "ops@eduaiia.com")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "do-not-print-me")
    django.superuser(nothing_runs(), dry_run=True)
    out = capsys.readouterr()
    assert "do-not-print-me" not in out.out + out.err
    assert out.out == (
        "DJANGO_SUPERUSER_USERNAME=*** DJANGO_SUPERUSER_EMAIL=*** "
        f"DJANGO_SUPERUSER_PASSWORD=*** {SUPERUSER}\n"
    )


def test_superuser_that_exists_is_not_an_error(project, capsys):
    setup.setup(nothing_runs())
    taken = Result(stderr="CommandError: Error: That username is already taken.\n", exited=1)
    django.superuser(context(failing={SUPERUSER: taken}))
    assert "admin exists already; unchanged" in capsys.readouterr().err


def test_superuser_without_values_or_terminal_says_what_to_set(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    text = (project / "config" / "local.env.example").read_text()
    (project / ".env").write_text(
        text.replace("DJANGO_SECRET_KEY=CHANGE_ME", "DJANGO_SECRET_KEY=k")
    )
    c = nothing_runs()
    with pytest.raises(Exit, match="DJANGO_SUPERUSER_PASSWORD not set and no terminal"):
        django.superuser(c)
    assert c.run.call_count == 0


def test_superuser_asks_in_a_terminal(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    text = (project / "config" / "local.env.example").read_text()
    (project / ".env").write_text(
        text.replace("DJANGO_SECRET_KEY=CHANGE_ME", "DJANGO_SECRET_KEY=k")
    )
    expected = f"{COMPOSE_LOCAL} exec django python manage.py createsuperuser"
    c = context(expected)
    django.superuser(c)
    assert ran(c) == [expected] and c.run.call_args.kwargs["pty"] is True


def test_superuser_with_a_broken_env_file_names_the_problem(project):
    (project / ".env").write_text("ENVIRONMENT=local\nPOSTGRES_PORT=80a\n")
    with pytest.raises(Exit, match="POSTGRES_PORT"):
        django.superuser(nothing_runs())


# --- code quality and docker -----------------------------------------------------------


def test_lint_and_format(project):
    python = quality.quality.sys.executable
    lint = f"{python} -m ruff check ."
    c = context(lint)
    quality.lint(c)
    assert ran(c) == [lint]
    fix = [f"{python} -m ruff check --select I --fix app", f"{python} -m ruff format app"]
    c = context(*fix)
    quality.format_(c, paths="app")
    assert ran(c) == fix


def test_lint_failure_points_to_format(project):
    python = quality.quality.sys.executable
    c = context(failing={f"{python} -m ruff check .": Result(exited=1)})
    with pytest.raises(Exit, match="inv format"):
        quality.lint(c)


def test_ps_and_images_follow_the_env(project):
    c = context(f"{COMPOSE_LOCAL} ps --all", f"{COMPOSE_SERVER} images")
    docker.ps(c, all=True)
    docker.images(c, env="production")
    assert ran(c) == [f"{COMPOSE_LOCAL} ps --all", f"{COMPOSE_SERVER} images"]


PRUNE = [
    "docker container prune --force",
    "docker network prune --force",
    "docker image prune --force",
    "docker builder prune --force",
]


def test_prune_with_yes(project):
    c = context(*PRUNE)
    docker.prune(c, yes=True)
    assert ran(c) == PRUNE


def test_prune_without_a_terminal_refuses(project, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    c = nothing_runs()
    with pytest.raises(Exit, match="inv prune --yes"):
        docker.prune(c)
    assert c.run.call_count == 0


def test_project_root_is_found_from_a_subfolder(project, monkeypatch):
    from opskit.tasks import _common

    sub = project / "app" / "core"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert _common.project_root() == project.resolve()
    c = MockContext(run={f"{COMPOSE_LOCAL} down --remove-orphans": Result()})
    with mock.patch.object(c, "cd", wraps=c.cd) as cd:
        dev.dev_down(c)
    cd.assert_called_once_with(str(project.resolve()))
