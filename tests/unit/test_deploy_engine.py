"""The deploy engine, driven through invoke's MockContext: every command it sends, in order.

The server's answers are scripted per exact command line (built with the same builders
the engine uses), so each test reads as a conversation: what the server said, what the
engine did next, what it printed and what it recorded.
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from invoke import MockContext, Result

from opskit import appenv, settings
from opskit import deploy as engine
from opskit.backup.commands import backup_script
from opskit.commands import checkout as co
from opskit.commands import deploy as cmd
from opskit.commands.lock import HELD, Lock, LockDetails
from opskit.deploy import history
from opskit.runner import ContextRunner
from opskit.shell import join

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "deploy"
STARTED = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
IMAGE = "registry.local:5000/aiia/app:abc"
IMAGE_ID = "sha256:abc1234def5678"
RELEASE = "20250101-120000-abc1234"
CHECKOUT = "c0ffee" * 6 + "c0ff"
PROD = cmd.environment("production", "/srv/prod")
STACK = "/srv/prod/docker-compose.yml"


def env_text(environment: str = "production") -> str:
    """The example file with every placeholder filled: what a finished server file holds."""
    example = (
        ROOT
        / "config"
        / ("prod.env.example" if environment == "production" else "staging.env.example")
    ).read_text()
    n = iter(range(1000))
    text = re.sub(r"CHANGE_ME", lambda _m: f"s3cr3t-{next(n)}-" + "x7" * 30, example)
    return re.sub(
        r"^BACKUP_AGE_RECIPIENT=.*$", "BACKUP_AGE_RECIPIENT=age1" + "q" * 58, text, flags=re.M
    )


def config_json() -> str:
    return (FIXTURES / "compose_config.json").read_text()


def ok(stdout: str = "") -> Result:
    return Result(stdout=stdout, exited=0)


def fail(stderr: str = "boom", exited: int = 1, stdout: str = "") -> Result:
    return Result(stdout=stdout, stderr=stderr, exited=exited)


def inspect_json(name: str, release: str = "", running: bool = True) -> str:
    labels = {cmd.LABEL_RELEASE: release} if release else {}
    return json.dumps(
        [{"Name": "/" + name, "State": {"Running": running}, "Config": {"Labels": labels}}]
    )


class Server:
    """Scripted answers of a healthy server, keyed by the exact command line."""

    def __init__(self, env: cmd.Environment = PROD) -> None:
        self.env = env
        spec = cmd.service_spec(json.loads(config_json()), env.service)
        self.spec = spec
        new = env.release_container(RELEASE)
        img = env.release_image(RELEASE)
        upstream_old = cmd.upstream_conf(env.container, env.port)
        self.answers: dict[str, object] = {
            join(Lock(env.lock_dir).acquire()): ok(),
            join(Lock(env.lock_dir).release()): ok(),
            join(cmd.docker_version()): ok("20.10.24\n"),
            join(cmd.compose_version()): ok("2.40.3\n"),
            join(cmd.read_file(env.env_file)): ok(env_text(env.name)),
            join(cmd.write_private(f"/srv/prod/.env.app/{env.service}.env")): ok(),
            join(cmd.compose_config(cmd.Stack((STACK,), "/srv/prod"), env.service)): ok(
                config_json()
            ),
            join(cmd.disk_free(env.path)): ok((FIXTURES / "df.txt").read_text()),
            join(cmd.meminfo()): ok((FIXTURES / "meminfo.txt").read_text()),
            join(cmd.container_state(cmd.NGINX)): ok("running 0 false\n"),
            join(cmd.read_upstream(env)): ok(upstream_old),
            join(cmd.inspect(env.container)): ok(inspect_json(env.container, "20241231-000000")),
            join(cmd.env_containers(env)): ok(f"{env.container}\trunning\t20241231-000000\n"),
            join(cmd.pull(IMAGE)): ok(IMAGE + "\n"),
            join(cmd.image_inspect(IMAGE)): ok(
                json.dumps({"Id": IMAGE_ID, "Config": {"Env": ["APP_VERSION=v2"]}})
            ),
            join(cmd.image_inspect(img)): ok(
                json.dumps({"Id": IMAGE_ID, "Config": {"Env": ["APP_VERSION=v2"]}})
            ),
            join(cmd.tag(IMAGE, img)): ok(),
            join(cmd.tag(img, "aiia/app:production")): ok(),
            join(self.oneoff("plan", cmd.showmigrations())): ok(
                (FIXTURES / "showmigrations_plan.txt").read_text()
            ),
            join(self.oneoff("migrate", cmd.migrate())): ok(
                "Running migrations:\n  Applying core.0002_note_tags... OK\n"
                "  Applying core.0003_note_index... OK\n"
            ),
            join(self.oneoff("static", cmd.collectstatic())): ok(),
            join(cmd.run_release(env, spec, RELEASE, img, IMAGE)): ok("cid\n"),
            join(cmd.probe(new, env.port)): [
                fail("", 7),
                ok((FIXTURES / "health_ok.http").read_bytes().decode()),
            ],
            join(cmd.container_state(new)): ok("running 0 false\n"),
            join(cmd.write_upstream(env)): ok(),
            join(cmd.nginx_test()): ok(),
            join(cmd.nginx_reload()): ok(),
            join(cmd.draining_workers()): [ok("2\n"), ok("0\n")],
            join(cmd.stop(env.container)): ok(),
            join(cmd.remove(env.container)): ok(),
            join(cmd.remove(new)): ok(),
            join(cmd.rename(new, env.container)): ok(),
            join(cmd.release_images(env)): ok(f"production-{RELEASE}\tid\n"),
            join(history.append(env.history_file)): ok(),
            join(cmd.append_line(env.transcript(STARTED))): ok(),
            join(cmd.logs_tail(new)): ok("gunicorn: worker failed to boot\n"),
            # the checkout, clean, at the serving release's commit
            join(co.head(env.path)): ok(CHECKOUT + "\n"),
            join(co.status(env.path)): ok(""),
        }

    def oneoff(self, what, command):
        return cmd.run_oneoff(
            self.env, self.spec, RELEASE, self.env.release_image(RELEASE), what, command
        )

    def context(self) -> MockContext:
        answers = {}
        for key, value in self.answers.items():
            answers[key] = list(value) if isinstance(value, list) else value
        return MockContext(run=answers, repeat=True)


def deploy(server: Server, ctx: MockContext | None = None, backup=None, **plan):
    ctx = ctx or server.context()
    plan.setdefault("image", IMAGE)
    plan.setdefault("skip_backup", True)
    p = engine.Plan(env=server.env, who="alice@laptop", stack_file=STACK, **plan)
    lines: list[str] = []
    outcome = engine.Deployer(
        ContextRunner(ctx, where="root@server"),
        p,
        out=lines.append,
        **({"backup": backup} if backup else {}),
        now=lambda: STARTED,
        sleep=lambda s: None,
    ).run()
    return outcome, ctx, lines


def commands(ctx: MockContext) -> list[str]:
    return [call.args[0] for call in ctx.run.call_args_list]


def stdin_of(ctx: MockContext, command: list[str]) -> list[str]:
    line = join(command)
    return [c.kwargs["in_stream"].getvalue() for c in ctx.run.call_args_list if c.args[0] == line]


def recorded(ctx: MockContext, env=PROD) -> history.Entry:
    (line,) = stdin_of(ctx, history.append(env.history_file))
    (entry,) = history.parse(line)
    return entry


# --- the happy path --------------------------------------------------------------------


def test_deploy_of_an_image_runs_every_step_in_order():
    server = Server()
    outcome, ctx, lines = deploy(server)
    assert outcome.ok and outcome.exit_code == 0, "\n".join(lines)
    sent = commands(ctx)
    order = [
        join(Lock(PROD.lock_dir).acquire()),
        join(cmd.pull(IMAGE)),
        join(server.oneoff("migrate", cmd.migrate())),
        join(cmd.run_release(PROD, server.spec, RELEASE, PROD.release_image(RELEASE), IMAGE)),
        join(cmd.probe(PROD.release_container(RELEASE), 8000)),
        join(cmd.nginx_reload()),
        join(cmd.stop(PROD.container)),
        join(cmd.rename(PROD.release_container(RELEASE), PROD.container)),
        join(Lock(PROD.lock_dir).release()),
        join(history.append(PROD.history_file)),
    ]
    positions = [sent.index(c) for c in order]
    assert positions == sorted(positions)
    # the switch comes only after a healthy probe; the old stops only after the switch
    assert sent.count(join(cmd.probe(PROD.release_container(RELEASE), 8000))) == 2
    # one reload, to the release's name; its stable name is written for the next one
    assert sent.count(join(cmd.nginx_reload())) == 1
    steps = [line for line in lines if line.startswith("[")]
    assert [s.split()[1] for s in steps] == list(engine.STEPS)
    assert all(re.search(r"\s\d+\.\ds  ", s) for s in steps)
    assert "healthy after 2/30 attempts" in lines[6]
    # /health/ answers for the running code; a mismatch with the image is pointed out
    assert "      ! /health/ reports version v2-3-gabc, image says v2" in lines
    entry = recorded(ctx)
    assert (entry.result, entry.release, entry.image) == ("ok", RELEASE, IMAGE)
    assert entry.version == "v2-3-gabc"
    assert entry.migrations == ["core.0002_note_tags", "core.0003_note_index"]
    assert entry.previous == "20241231-000000"
    assert entry.backup == "skipped (--skip-backup)"


def test_secrets_go_on_stdin_and_never_into_a_command_line():
    server = Server()
    outcome, ctx, lines = deploy(server)
    assert outcome.ok
    secrets = [v for k, v in server.spec.environment.items() if k != "ENVIRONMENT"]
    for line in commands(ctx) + lines:
        assert not any(s in line for s in secrets if len(s) > 4)
    started = stdin_of(
        ctx, cmd.run_release(PROD, server.spec, RELEASE, PROD.release_image(RELEASE), IMAGE)
    )
    assert started == [server.spec.env_file()]


def test_the_app_env_file_is_rendered_from_the_checked_env_file_before_compose_reads_it():
    env = PROD
    server = Server(env)
    outcome, ctx, lines = deploy(server)
    assert outcome.ok, "\n".join(lines)
    write = cmd.write_private(f"/srv/prod/.env.app/{env.service}.env")
    (text,) = stdin_of(ctx, write)
    values = appenv.parse(env_text(env.name))
    assert text == appenv.render(values, source=env.env_file)
    names = {line.split("=", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert names == set(settings.keys_for("django")) & set(values)
    assert f"ENVIRONMENT={env.name}" in text.splitlines()
    sent = commands(ctx)
    assert sent.index(join(write)) < sent.index(
        join(cmd.compose_config(cmd.Stack((STACK,), "/srv/prod"), env.service))
    )


def test_the_upstream_is_written_twice_release_name_then_stable_name():
    outcome, ctx, _ = deploy(Server())
    assert outcome.ok
    written = stdin_of(ctx, cmd.write_upstream(PROD))
    assert [cmd.parse_upstream(w) for w in written] == [
        (PROD.release_container(RELEASE), 8000),
        (PROD.container, 8000),
    ]


def test_lock_details_name_who_what_and_why():
    outcome, ctx, _ = deploy(Server(), why="fix the login page")
    (details,) = stdin_of(ctx, Lock(PROD.lock_dir).acquire())
    held = LockDetails.from_json(details)
    assert (held.who, held.env, held.action, held.what, held.why) == (
        "alice@laptop",
        "production",
        "deploy",
        f"image {IMAGE}",
        "fix the login page",
    )


def test_the_transcript_goes_to_the_guides_log_file():
    outcome, ctx, lines = deploy(Server())
    (text,) = stdin_of(ctx, cmd.append_line(PROD.transcript(STARTED)))
    assert text.splitlines() == lines[: len(text.splitlines())]
    assert PROD.transcript(STARTED).endswith("logs/deploy_production_20250101_120000.log")


# --- refusals and failures before the switch ---------------------------------------


def test_a_held_lock_refuses_the_deploy_and_names_the_holder():
    server = Server()
    holder = LockDetails(
        "bob@ci", "2025-01-01T11:59:00+00:00", "production", "deploy", "ref main", "release day"
    )
    server.answers[join(Lock(PROD.lock_dir).acquire())] = fail("", HELD, holder.to_json())
    outcome, ctx, lines = deploy(server)
    assert (outcome.ok, outcome.exit_code) == (False, engine.EXIT_LOCKED)
    assert "refused: production is locked by bob@ci since 2025-01-01T11:59:00+00:00" in (
        outcome.reason
    )
    assert "(why: release day)" in outcome.reason
    sent = commands(ctx)
    assert join(Lock(PROD.lock_dir).release()) not in sent  # never someone else's lock
    assert join(cmd.pull(IMAGE)) not in sent
    assert recorded(ctx).result == "refused"


def assert_failed_before_switch(ctx, server=None):
    sent = commands(ctx)
    assert join(cmd.nginx_reload()) not in sent
    assert join(cmd.stop(PROD.container)) not in sent
    assert join(Lock(PROD.lock_dir).release()) in sent


def test_a_release_that_never_gets_healthy_is_removed_and_the_old_keeps_serving():
    server = Server()
    new = PROD.release_container(RELEASE)
    server.answers[join(cmd.probe(new, 8000))] = ok(
        (FIXTURES / "health_fail.http").read_bytes().decode()
    )
    outcome, ctx, lines = deploy(server, health_attempts=4)
    assert (outcome.ok, outcome.exit_code) == (False, 1)
    assert outcome.reason == (
        f"health check failed: {new} not healthy after 4 attempts 2s apart "
        "(last: HTTP 503 (database: timeout))"
    )
    assert commands(ctx).count(join(cmd.probe(new, 8000))) == 4
    assert_failed_before_switch(ctx)
    assert join(cmd.remove(new)) in commands(ctx)
    assert any(f"removed {new}; aiia_django_prod keeps serving" in line for line in lines)
    # migrations ran: listed, with the command that reverses them, never reversed here
    text = "\n".join(lines)
    assert "migrations applied by this deploy (NOT reversed): core.0002_note_tags, " in text
    assert f"--release {RELEASE} --command 'migrate core 0001_initial'" in text
    entry = recorded(ctx)
    assert entry.result == "failed" and entry.reason == outcome.reason
    assert entry.migrations == ["core.0002_note_tags", "core.0003_note_index"]


def test_a_release_that_exits_stops_the_gate_at_once_with_its_logs():
    server = Server()
    new = PROD.release_container(RELEASE)
    server.answers[join(cmd.probe(new, 8000))] = fail("", 7)
    server.answers[join(cmd.container_state(new))] = ok("exited 3 false\n")
    outcome, ctx, lines = deploy(server)
    assert outcome.reason == f"health check failed: {new} exited with code 3 after 1 attempt(s)"
    assert "      | gunicorn: worker failed to boot" in lines
    assert_failed_before_switch(ctx)


def test_a_failing_migration_stops_before_the_release_starts():
    server = Server()
    server.answers[join(server.oneoff("migrate", cmd.migrate()))] = fail(
        "django.db.utils.ProgrammingError: boom", 1, (FIXTURES / "migrate_failed.txt").read_text()
    )
    outcome, ctx, lines = deploy(server)
    assert outcome.reason == "migration core.0003_note_index failed after applying 1"
    sent = commands(ctx)
    assert not any(c.startswith("docker run --detach") for c in sent)
    assert_failed_before_switch(ctx)
    assert "(NOT reversed): core.0002_note_tags" in "\n".join(lines)
    assert recorded(ctx).migrations == ["core.0002_note_tags"]


def test_nginx_refusing_the_new_upstream_puts_the_old_file_back():
    server = Server()
    server.answers[join(cmd.nginx_test())] = [fail("host not found in upstream"), ok()]
    outcome, ctx, lines = deploy(server)
    assert outcome.reason == "nginx refused the switch"
    written = stdin_of(ctx, cmd.write_upstream(PROD))
    assert cmd.parse_upstream(written[-1]) == (PROD.container, 8000)
    assert join(cmd.nginx_reload()) not in commands(ctx)
    assert join(cmd.remove(PROD.release_container(RELEASE))) in commands(ctx)


def test_an_invalid_env_file_fails_preflight_naming_each_problem():
    server = Server()
    bad = env_text().replace("POSTGRES_PORT=6432", "POSTGRES_PORT=80a")
    bad = bad.replace("DJANGO_DEBUG=false", "DJANGO_DEBUG=true")
    server.answers[join(cmd.read_file(PROD.env_file))] = ok(bad)
    outcome, ctx, lines = deploy(server)
    assert outcome.reason == "pre-flight failed"
    assert (
        "      | /srv/prod/.env: POSTGRES_PORT: '80a' is malformed: expected a TCP port, "
        "a whole number from 1 to 65535; correct the value" in lines
    )
    assert any("DJANGO_DEBUG: must be false in production" in line for line in lines)
    assert join(cmd.pull(IMAGE)) not in commands(ctx)
    assert join(Lock(PROD.lock_dir).release()) in commands(ctx)


def test_low_disk_is_refused_in_preflight():
    server = Server()
    server.answers[join(cmd.disk_free(PROD.path))] = ok(
        "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda 1 1 102400 99% /\n"
    )
    outcome, ctx, lines = deploy(server)
    assert outcome.reason == "pre-flight failed"
    assert any("only 100 MB free on /srv/prod, need 1000 MB" in line for line in lines)
    assert join(cmd.pull(IMAGE)) not in commands(ctx)


def test_compose_runs_once_and_its_version_only_explains_a_failure():
    server = Server()
    outcome, ctx, lines = deploy(server)
    assert outcome.ok
    sent = commands(ctx)
    assert join(cmd.compose_version()) not in sent
    assert sum(1 for c in sent if " compose " in f" {c} ") == 1, sent
    # no Compose v2: the config fails and the version says why
    for config_error, version, reason in (
        ("docker: 'compose' is not a docker command.", fail("'compose' is not a docker "
         "command."), "Docker Compose v2 is missing"),
        ("service django_prod has neither an image nor a build", ok("2.40.3\n"),
         "cannot read service django_prod"),
    ):  # fmt: skip
        server = Server()
        server.answers[
            join(cmd.compose_config(cmd.Stack((STACK,), "/srv/prod"), "django_prod"))
        ] = fail(config_error)
        server.answers[join(cmd.compose_version())] = version
        outcome, ctx, lines = deploy(server)
        assert not outcome.ok
        assert any(reason in line for line in lines), lines
        assert join(cmd.pull(IMAGE)) not in commands(ctx)


def test_too_little_memory_for_two_releases_is_refused_in_preflight():
    server = Server()
    server.answers[join(cmd.meminfo())] = ok("MemAvailable: 51200 kB\nSwapFree: 10240 kB\n")
    outcome, ctx, lines = deploy(server)
    assert outcome.reason == "pre-flight failed"
    # the limit comes from the stack's own definition of the service (150m)
    assert any(
        "only 60 MB of memory and swap available, the new release needs 150 MB" in line
        for line in lines
    )
    assert join(cmd.pull(IMAGE)) not in commands(ctx)


def test_the_pre_deploy_backup_is_the_servers_backup_script():
    server = Server()
    script = join(backup_script(PROD.path, PROD.name))
    server.answers[script] = ok("==> dump\n/srv/prod/backups/db_prod_20250101_120000\n")
    outcome, ctx, lines = deploy(server, skip_backup=False)
    assert outcome.ok, "\n".join(lines)
    sent = commands(ctx)
    assert sent.index(script) < sent.index(join(cmd.pull(IMAGE)))
    assert recorded(ctx).backup == "/srv/prod/backups/db_prod_20250101_120000"

    server.answers[script] = fail("pg_dump: connection refused", 1)
    outcome, ctx, lines = deploy(server, skip_backup=False)
    assert outcome.reason.startswith("pre-deploy backup failed")
    assert join(cmd.pull(IMAGE)) not in commands(ctx)


def test_the_backup_hook_runs_before_the_image_and_its_failure_stops_the_deploy():
    seen = []

    def good(runner, env, settings):
        seen.append((env.name, settings["POSTGRES_DB"]))
        return "backups/db_prod_20250101_120000"

    outcome, ctx, lines = deploy(Server(), skip_backup=False, backup=good)
    assert outcome.ok and seen == [("production", "aiia_prod")]
    assert "verified: backups/db_prod_20250101_120000" in lines[3]
    assert recorded(ctx).backup == "backups/db_prod_20250101_120000"

    def bad(runner, env, settings):
        raise RuntimeError("pg_dump exited 1")

    outcome, ctx, _ = deploy(Server(), skip_backup=False, backup=bad)
    assert outcome.reason == "pre-deploy backup failed: pg_dump exited 1"
    assert join(cmd.pull(IMAGE)) not in commands(ctx)


def test_leftovers_of_an_interrupted_deploy_are_removed_but_never_the_serving_one():
    server = Server()
    stray = PROD.release_container("20241231-230000")
    server.answers[join(cmd.env_containers(PROD))] = ok(
        f"{PROD.container}\trunning\t20241231-000000\n{stray}\texited\t20241231-230000\n"
    )
    server.answers[join(cmd.remove(stray))] = ok()
    outcome, ctx, lines = deploy(server)
    assert outcome.ok
    sent = commands(ctx)
    assert join(cmd.remove(stray)) in sent
    assert sent.index(join(cmd.remove(stray))) < sent.index(join(cmd.pull(IMAGE)))


def test_an_unexpected_error_still_releases_the_lock_and_records_it():
    server = Server()
    server.answers[join(cmd.image_inspect(IMAGE))] = ok("not json")
    outcome, ctx, _ = deploy(server)
    assert not outcome.ok and outcome.reason.startswith("internal error: JSONDecodeError")
    assert join(Lock(PROD.lock_dir).release()) in commands(ctx)
    assert recorded(ctx).result == "failed"


# --- building from a ref ----------------------------------------------------------


def test_a_ref_is_resolved_archived_built_and_its_build_directory_removed():
    server = Server()
    commit = "abc1234" + "0" * 33
    build_dir = f"{PROD.build_dir}/{RELEASE}"
    server.answers.update(
        {
            join(cmd.git_fetch(PROD.path)): ok(),
            join(cmd.git_resolve(PROD.path, "main; touch /tmp/pwned")): fail("", 1),
            join(cmd.git_resolve(PROD.path, "v2")): ok(commit + "\n"),
            join(cmd.git_describe(PROD.path, commit)): ok("v2\n"),
            join(cmd.git_archive(PROD.path, commit, build_dir)): ok(),
            join(cmd.compose_build(build_dir)): ok(),
            join(cmd.remove_build_dir(build_dir)): ok(),
        }
    )
    server.answers[
        join(
            cmd.run_release(
                PROD, server.spec, RELEASE, PROD.release_image(RELEASE), f"v2@{commit[:12]}"
            )
        )
    ] = ok("cid\n")
    outcome, ctx, lines = deploy(server, image=None, ref="v2")
    assert outcome.ok, "\n".join(lines)
    (spec,) = stdin_of(ctx, cmd.compose_build(build_dir))
    assert json.loads(spec)["services"]["app"]["image"] == PROD.release_image(RELEASE)
    assert join(cmd.remove_build_dir(build_dir)) in commands(ctx)
    assert recorded(ctx).commit == commit

    outcome, ctx, lines = deploy(server, image=None, ref="main; touch /tmp/pwned")
    assert outcome.reason == "no commit named 'main; touch /tmp/pwned' in /srv/prod"
    assert not any(c.endswith(" build --quiet app") for c in commands(ctx))


# --- rollback ------------------------------------------------------------------------


def test_rollback_brings_back_the_previous_release_through_the_same_gate():
    server = Server()
    previous = "20241230-000000-0000aaa"
    current = "20241231-000000"
    log = "".join(
        history.Entry(
            when=w, env="production", action="deploy", who="a", result=r, duration_s=1, release=rel
        ).to_line()
        for w, r, rel in [
            ("2024-12-30", "ok", previous),
            ("2024-12-31", "ok", current),
            ("2025-01-01", "failed", "20250101-000000"),
        ]
    )
    server.answers.update(
        {
            join(history.read(PROD.history_file, 500)): ok(log),
            join(cmd.release_images(PROD)): ok(
                f"production-{previous}\ti1\nproduction-{current}\ti2\n"
            ),
            join(cmd.image_inspect(PROD.release_image(previous))): ok(
                json.dumps({"Id": "sha256:1", "Config": {"Env": ["APP_VERSION=v1"]}})
            ),
        }
    )
    new = PROD.release_container(previous)
    server.answers.update(
        {
            join(
                cmd.run_release(
                    PROD, server.spec, previous, PROD.release_image(previous), f"release {previous}"
                )
            ): ok(),
            join(cmd.probe(new, 8000)): ok((FIXTURES / "health_ok.http").read_bytes().decode()),
            join(cmd.rename(new, PROD.container)): ok(),
        }
    )
    p = engine.Plan(env=PROD, action="rollback", who="alice@laptop", stack_file=STACK)
    lines: list[str] = []
    ctx = server.context()
    outcome = engine.Deployer(
        ContextRunner(ctx), p, out=lines.append, now=lambda: STARTED, sleep=lambda s: None
    ).run()
    assert outcome.ok, "\n".join(lines)
    sent = commands(ctx)
    assert not any("migrate" in c for c in sent) and join(cmd.pull(IMAGE)) not in sent
    assert [line.split()[2] for line in lines if line.startswith("[")] == [
        "ok",
        "ok",
        "skipped",
        "ok",
        "skipped",
        "ok",
        "ok",
        "ok",
    ]
    entry = recorded(ctx)
    assert (entry.action, entry.release, entry.previous) == ("rollback", previous, current)


def test_rollback_without_an_earlier_release_says_what_is_kept():
    server = Server()
    server.answers[join(history.read(PROD.history_file, 500))] = ok("")
    p = engine.Plan(env=PROD, action="rollback", who="a", stack_file=STACK)
    outcome = engine.Deployer(
        ContextRunner(server.context()), p, out=lambda _: None, now=lambda: STARTED
    ).run()
    assert outcome.reason == "no earlier release to roll back to"


# --- plan validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ref": "main", "image": "a:b"},
        {"image": "-x"},
        {"to_release": "latest"},
        {"health_attempts": 0},
    ],
    ids=["ref-and-image", "image-option", "bad-release", "no-attempts"],
)
def test_plans_that_cannot_be_run_are_refused(kwargs):
    with pytest.raises(cmd.BuilderError):
        engine.Plan(env=PROD, **kwargs)


def test_operator_names_the_ci_run(monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "octo")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    monkeypatch.setenv("GITHUB_REPOSITORY", "infoaiiaedu/ai-ia-backend")
    assert engine.operator() == "octo (github actions infoaiiaedu/ai-ia-backend run 42)"


def test_context_runner_sends_stdin_and_never_the_terminal():
    ctx = MockContext(run={"cat": ok("x")})
    ContextRunner(ctx).run(["cat"], stdin="x")
    ContextRunner(ctx).run(["cat"])
    first, second = ctx.run.call_args_list
    assert isinstance(first.kwargs["in_stream"], io.StringIO)
    assert first.kwargs["in_stream"].getvalue() == "x"
    assert second.kwargs["in_stream"].getvalue() == ""
    assert first.kwargs["warn"] and first.kwargs["hide"] and not first.kwargs["pty"]


def test_the_webhook_hears_of_success_and_of_failure():
    from tests.unit.test_deploy_history import Hook

    hook = Hook()
    try:
        outcome, _, lines = deploy(Server(), webhook=hook.url)
        assert outcome.ok and "notified the webhook" in lines
        server = Server()
        server.answers[join(server.oneoff("migrate", cmd.migrate()))] = fail("boom", 1)
        outcome, _, _ = deploy(server, webhook=hook.url)
        assert not outcome.ok
    finally:
        hook.close()
    texts = [body["text"] for _, _, body in hook.received]
    assert texts[0].startswith(":white_check_mark: production deploy by alice@laptop")
    assert texts[1].startswith(":x: production deploy by alice@laptop FAILED")
    assert "migration (unknown) failed" in texts[1]
    assert not any(hook.url.reveal() in line for line in lines)


def test_the_release_inherits_compose_labels_and_compose_tag():
    server = Server()
    labels = {
        "com.docker.compose.project": "aiia",
        "com.docker.compose.service": "django_prod",
        "com.docker.compose.image": "sha256:old",
        cmd.LABEL_RELEASE: "20241231-000000",
    }
    server.answers[join(cmd.inspect(PROD.container))] = ok(
        json.dumps([{"State": {"Running": True}, "Config": {"Labels": labels}}])
    )
    img = PROD.release_image(RELEASE)
    expected = cmd.run_release(
        PROD,
        server.spec,
        RELEASE,
        img,
        IMAGE,
        {
            "com.docker.compose.project": "aiia",
            "com.docker.compose.service": "django_prod",
            "com.docker.compose.image": IMAGE_ID,
        },
    )
    server.answers[join(expected)] = ok("cid\n")
    outcome, ctx, lines = deploy(server)
    assert outcome.ok, "\n".join(lines)
    sent = commands(ctx)
    assert join(expected) in sent
    assert sent.index(join(cmd.tag(img, "aiia/app:production"))) > sent.index(
        join(cmd.nginx_reload())
    )


def test_trouble_after_the_switch_is_reported_but_the_deploy_stands():
    server = Server()
    new = PROD.release_container(RELEASE)
    server.answers[join(cmd.stop(PROD.container))] = fail("permission denied")
    server.answers[join(cmd.rename(new, PROD.container))] = fail("name in use")
    outcome, ctx, lines = deploy(server)
    assert outcome.ok and outcome.exit_code == 0
    assert "      ! could not stop aiia_django_prod: permission denied" in lines
    assert f"      ! kept the name {new}: name in use" in lines
    assert any(
        line.startswith("[7/8] switch     ok") and f"nginx -> {new}" in line for line in lines
    )


def test_a_compose_started_container_is_tagged_as_the_initial_release():
    server = Server()
    server.answers[join(cmd.inspect(PROD.container))] = ok(
        json.dumps(
            [
                {
                    "State": {"Running": True},
                    "Config": {"Labels": {}},
                    "Image": "sha256:0ld",
                    "Created": "2025-01-01T10:00:00.5Z",
                }
            ]
        )
    )
    server.answers[join(cmd.tag("sha256:0ld", PROD.release_image("20250101-100000-initial")))] = (
        ok()
    )
    outcome, ctx, lines = deploy(server)
    assert outcome.ok, "\n".join(lines)
    assert join(cmd.tag("sha256:0ld", "aiia/app:production-20250101-100000-initial")) in (
        commands(ctx)
    )
    assert recorded(ctx).previous == "20250101-100000-initial"


def test_a_connection_failing_under_a_command_is_an_answer_not_a_crash():
    ctx = MockContext(run={"true": ok()})
    ctx.run.side_effect = OSError("Socket is closed")
    res = ContextRunner(ctx, where="root@server").run(["true"])
    assert (res.exited, res.stderr) == (255, "connection to root@server failed: OSError")


def test_stdin_goes_to_invoke_in_one_piece():
    """invoke asks a non-terminal stream for 1 byte per read, 10 ms apart."""
    from opskit.runner import _WholeStdin

    stream = _WholeStdin("KEY=" + "v" * 5000 + "\n")
    assert len(stream.read(1)) == 5005 and stream.read(1) == ""


def test_a_dry_run_reads_but_changes_nothing():
    outcome, ctx, lines = deploy(Server(), dry_run=True)
    assert outcome.ok, "\n".join(lines)
    sent = commands(ctx)
    mutating = (
        "docker run",
        "docker tag",
        "docker pull",
        "docker rm",
        "docker stop",
        "docker rename",
        "docker exec -i",
        "nginx -s reload",
        "aiia-reload",
        "git fetch",
    )
    assert not [c for c in sent if c.startswith(mutating) or "reload" in c]
    assert join(Lock(PROD.lock_dir).acquire()) not in sent
    assert "would run (release id and image shown as placeholders):" in lines
    assert any(line.startswith("  docker pull --quiet " + IMAGE) for line in lines)


def test_rollback_to_a_release_whose_image_is_gone_says_what_is_kept():
    server = Server()
    server.answers[join(cmd.release_images(PROD))] = ok(f"production-{RELEASE}\ti\n")
    p = engine.Plan(env=PROD, action="rollback", to_release="20240101-000000", who="a",
                    stack_file=STACK)  # fmt: skip
    lines: list[str] = []
    outcome = engine.Deployer(ContextRunner(server.context()), p, out=lines.append,
                              now=lambda: STARTED).run()  # fmt: skip
    assert outcome.reason == "release 20240101-000000 has no image on the server any more"
    assert f"      | kept: {RELEASE}" in lines


def test_a_lock_that_cannot_be_released_is_said_so():
    server = Server()
    server.answers[join(Lock(PROD.lock_dir).release())] = fail("rmdir: Directory not empty")
    outcome, _, lines = deploy(server)
    (line,) = [x for x in lines if x.startswith("[8/8]")]
    assert line.split()[2] == "FAILED"
    assert "lock NOT released (rmdir: Directory not empty): see `fab lock-status" in line


# --- the dry run is the real plan ------------------------------------------------------


class Recording(ContextRunner):
    """A runner that keeps every command it sent, in order."""

    def __init__(self, ctx: MockContext) -> None:
        super().__init__(ctx, where="root@server")
        self.sent: list[tuple[str, ...]] = []

    def run(self, argv, *, stdin=None, timeout=None):
        self.sent.append(tuple(str(a) for a in argv))
        return super().run(argv, stdin=stdin, timeout=timeout)


def test_the_dry_run_plan_is_what_a_real_run_sends():
    server = Server()
    commit = "abc1234" + "0" * 33
    build_dir = f"{PROD.build_dir}/{RELEASE}"
    health = (FIXTURES / "health_ok.http").read_bytes().decode()
    server.answers.update(
        {
            join(cmd.git_fetch(PROD.path)): ok(),
            join(cmd.git_resolve(PROD.path, "v2")): ok(commit + "\n"),
            join(cmd.git_describe(PROD.path, commit)): ok("v2\n"),
            join(cmd.git_archive(PROD.path, commit, build_dir)): ok(),
            join(cmd.compose_build(build_dir)): ok(),
            join(cmd.remove_build_dir(build_dir)): ok(),
            join(backup_script(PROD.path, PROD.name)): ok("/srv/prod/backups/db_prod_x\n"),
            # a healthy server: the release answers at once, nginx has nothing to drain
            join(cmd.probe(PROD.release_container(RELEASE), PROD.port)): ok(health),
            join(cmd.draining_workers()): ok("0\n"),
            join(history.read(PROD.history_file, 500)): ok(""),
            # the checkout follows the release (its commit is already there)
            join(co.has_commit(PROD.path, commit)): ok(),
            join(co.checkout(PROD.path, commit)): ok(),
            join(co.changed(PROD.path, CHECKOUT, commit)): ok(""),
            join(
                cmd.run_release(
                    PROD, server.spec, RELEASE, PROD.release_image(RELEASE), f"v2@{commit[:12]}"
                )
            ): ok("cid\n"),
        }
    )

    def deployer(runner, **plan):
        p = engine.Plan(env=PROD, who="alice@laptop", stack_file=STACK, ref="v2", **plan)
        lines: list[str] = []
        d = engine.Deployer(runner, p, out=lines.append, now=lambda: STARTED, sleep=lambda s: None)
        return d, lines

    real = Recording(server.context())
    d, lines = deployer(real)
    assert d.run().ok, "\n".join(lines)

    asked = Recording(server.context())
    d, lines = deployer(asked, dry_run=True)
    assert d.run().ok, "\n".join(lines)
    assert d.r.planned == real.sent
    # every command is printed, in order; the dry run sent only the questions among them
    shown = [line[2:].removeprefix("? ") for line in lines if re.match(r"  \S", line)]
    assert shown == [join(argv) for argv in real.sent]
    questions = {join(argv) for argv in asked.sent}
    assert join(cmd.compose_build(build_dir)) not in questions
    assert join(Lock(PROD.lock_dir).acquire()) not in questions
    assert join(cmd.nginx_reload()) not in questions
    assert join(cmd.git_resolve(PROD.path, "v2")) in questions
    assert not [line for line in lines if line.lstrip().startswith("!")], lines
    # the steps are the table's, in a dry run as in a real one
    assert [line.split()[1] for line in lines if line.startswith("[")] == list(engine.STEPS)
