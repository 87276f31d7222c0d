"""Swarm command builders by exact argv, parsers on saved output, the deploy with a fake."""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opskit.commands import deploy as dcmd
from opskit.commands.lock import Lock
from opskit.runner import Result, Runner
from opskit.swarm import cluster
from opskit.swarm import commands as cmd
from tests.harness.core import ROOT

FIX = ROOT / "tests" / "fixtures" / "swarm"


def test_join_takes_the_token_on_stdin():
    argv = cmd.swarm_join("172.21.0.2", "172.21.0.3")
    assert argv[:2] == ["sh", "-c"] and "read -r token" in argv[2]
    assert argv[3:] == ["sh", "--advertise-addr", "172.21.0.3", "172.21.0.2:2377"]
    assert cmd.swarm_join("10.0.0.1:2377")[4:] == ["10.0.0.1:2377"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (cmd.swarm_init("10.0.0.1"), ["docker", "swarm", "init", "--advertise-addr", "10.0.0.1"]),
        (cmd.join_token(), ["docker", "swarm", "join-token", "--quiet", "worker"]),
        (cmd.label("web1", "web"),
         ["docker", "node", "update", "--label-add", "aiia.role=web", "web1"]),
        (cmd.secret_create("aiia_x_env_0123", "x"),
         ["docker", "secret", "create", "--label", "aiia.role.secret=x", "aiia_x_env_0123", "-"]),
        (cmd.stack_deploy(False),
         ["docker", "stack", "deploy", "--compose-file", "-", "--prune", "--with-registry-auth",
          "--resolve-image", "never", "aiia"]),
    ],
    ids=["init", "token", "label", "secret", "stack-deploy"],
)  # fmt: skip
def test_builders(argv, expected):
    assert argv == expected


def test_update_is_start_first_with_rollback():
    argv = cmd.update_image("django_prod", "registry:5000/aiia/app:v2", resolve_image=False)
    assert argv[-1] == "aiia_django_prod" and argv[-2] == "--no-resolve-image"
    flags = dict(zip(argv[3::1], argv[4::1], strict=False))
    assert flags["--update-order"] == "start-first"
    assert flags["--update-failure-action"] == "rollback"
    assert flags["--rollback-order"] == "start-first"
    assert flags["--image"] == "registry:5000/aiia/app:v2"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cmd.label("web1; rm -rf /", "web"), "node"),
        (lambda: cmd.label("web1", "cache"), "role"),
        (lambda: cmd.swarm_init("1.2.3.4 --force-new-cluster"), "address"),
        (lambda: cmd.update_image("django_prod", "-x"), "image"),
    ],
)
def test_bad_values_are_refused(call, message):
    with pytest.raises(dcmd.BuilderError, match=message):
        call()


def test_parse_nodes_and_roles():
    nodes = cmd.parse_nodes((FIX / "node_ls.jsonl").read_text())
    assert sorted(n.hostname for n in nodes) == ["mgr", "web1", "web2"]
    assert [n.manager for n in nodes if n.hostname == "mgr"] == ["Leader"]
    roles = cmd.parse_roles((FIX / "node_inspect.json").read_text())
    assert roles == {"mgr": "db", "web1": "web", "web2": "web"}


def test_parse_tasks_per_node():
    tasks = cmd.parse_tasks((FIX / "stack_ps.jsonl").read_text())
    by = cmd.tasks_per_node(tasks)
    assert set(by) == {"mgr", "web1", "web2"}
    assert {t.service for t in by["mgr"]} == {"aiia_postgresql", "aiia_pgbouncer", "aiia_redis"}
    assert all(t.running for t in tasks)


def test_parse_service():
    state = cmd.parse_service((FIX / "service_inspect_prod.json").read_text())
    assert state.image == "aiia16/app:v1"


class FakeSwarm(Runner):
    """Answers the deploy's commands like a manager whose update rolls back or completes."""

    where = "fake"

    def __init__(self, outcome: str, image: str = "app:v1") -> None:
        self.outcome = outcome
        self.image = image
        self.calls: list[tuple[list[str], str | None]] = []
        self.files = {
            "/srv/p/.env": (ROOT / "config" / "prod.env.example").read_text(),
            "/srv/s/.env": (ROOT / "config" / "staging.env.example").read_text(),
        }

    def run(self, argv, *, stdin=None, timeout=None) -> Result:
        argv = list(argv)
        self.calls.append((argv, stdin))
        joined = " ".join(argv)
        if argv[:2] == ["docker", "info"]:
            return Result(tuple(argv), 0, "active true\n")
        if argv[:2] == ["cat", "--"] or (argv[0] == "cat"):
            return Result(tuple(argv), 0, self.files[argv[-1]])
        if "service inspect" in joined:
            state = {"State": self.outcome, "Message": f"update {self.outcome}"}
            data = [{"Spec": {"TaskTemplate": {"ContainerSpec": {"Image": self.image}}},
                     "UpdateStatus": state}]  # fmt: skip
            return Result(tuple(argv), 0, json.dumps(data))
        if "service update" in joined:
            if self.outcome == "completed":
                self.image = argv[argv.index("--image") + 1]
            return Result(tuple(argv), 0, "")
        if "service ps" in joined:
            task = {"Name": "aiia_django_prod.1", "Image": self.image, "Node": "web1",
                    "DesiredState": "Running", "CurrentState": "Running 1 second ago"}  # fmt: skip
            return Result(tuple(argv), 0, json.dumps(task) + "\n")
        if argv[:3] == ["docker", "run", "--rm"]:
            return Result(tuple(argv), 0, "  Applying core.0002_x... OK\n")
        return Result(tuple(argv), 0, "")


def _deployer(runner, **kw) -> cluster.Deployer:
    env = dcmd.environment("production", "/srv/p")
    plan = cluster.Plan(env=env, who="t", paths={"production": "/srv/p", "staging": "/srv/s"},
                        poll_s=0, **kw)  # fmt: skip
    return cluster.Deployer(runner, plan, backup=lambda r, e, s: "backups/set1", out=lambda _: None,
                            now=lambda: datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


@pytest.fixture
def filled_env():
    # the examples hold CHANGE_ME placeholders, which validation refuses: fill them
    def fill(runner):
        for path, text in runner.files.items():
            text = text.replace("BACKUP_AGE_RECIPIENT=CHANGE_ME", f"BACKUP_AGE_RECIPIENT={AGE}")
            runner.files[path] = re.sub("CHANGE_ME", lambda _m: secrets.token_urlsafe(48), text)
        return runner

    return fill


AGE = "age1207ggp8k454g3v750fdtu0uhctun0kxy435ws4vlqta84lcf2qasx4kplc"


def test_deploy_migrates_once_then_updates_and_records(filled_env):
    runner = filled_env(FakeSwarm("completed"))
    outcome = _deployer(runner, image="app:v2").run()
    assert outcome.ok, outcome.lines
    argvs = [a for a, _ in runner.calls]
    migrations = [a for a in argvs if a[:3] == ["docker", "run", "--rm"]]
    assert len(migrations) == 1 and migrations[0][-3:] == ["manage.py", "migrate", "--noinput"]
    (stdin,) = [s for a, s in runner.calls if a[:3] == ["docker", "run", "--rm"]]
    password = re.search(r"^POSTGRES_PASSWORD=(.+)$", runner.files["/srv/p/.env"], re.M)[1]
    assert f"POSTGRES_PASSWORD={password}" in stdin and password not in " ".join(migrations[0])
    order = [i for i, a in enumerate(argvs) if a[:3] in (["docker", "run", "--rm"],
             ["docker", "service", "update"])]  # fmt: skip
    assert argvs[order[0]][1] == "run" and argvs[order[1]][1] == "service"
    (entry,) = [json.loads(s) for a, s in runner.calls if s and '"duration_s"' in s]
    assert entry["result"] == "ok" and entry["release"] == "app:v2"
    assert entry["previous"] == "app:v1" and entry["backup"] == "backups/set1"
    assert entry["migrations"] == ["core.0002_x"]
    lock = Lock("/srv/p/.deploy/lock")
    assert argvs.count(lock.acquire()) == 1 and argvs.count(lock.release()) == 1


def test_a_failed_gate_is_reported_as_the_swarms_rollback(filled_env):
    runner = filled_env(FakeSwarm("rollback_completed"))
    outcome = _deployer(runner, image="app:v3").run()
    assert not outcome.ok and outcome.exit_code == 1
    assert "rolled aiia_django_prod back to app:v1" in outcome.reason
    (entry,) = [json.loads(s) for a, s in runner.calls if s and '"duration_s"' in s]
    assert entry["result"] == "failed" and entry["release"] == ""


def test_rollback_brings_back_the_image_before_the_serving_one(filled_env):
    runner = filled_env(FakeSwarm("completed", image="app:v2"))
    log = [
        {"when": "1", "env": "production", "action": "deploy", "who": "t", "result": "ok",
         "duration_s": 1, "release": "app:v1", "image": "app:v1", "previous": "app:v0"},
        {"when": "2", "env": "production", "action": "deploy", "who": "t", "result": "ok",
         "duration_s": 1, "release": "app:v2", "image": "app:v2", "previous": "app:v1"},
    ]  # fmt: skip
    original = runner.run

    def run(argv, *, stdin=None, timeout=None):
        if argv[0] == "sh" and "tail" in argv[2]:
            return Result(tuple(argv), 0, "".join(json.dumps(e) + "\n" for e in log))
        return original(argv, stdin=stdin, timeout=timeout)

    runner.run = run
    outcome = _deployer(runner, action="rollback").run()
    assert outcome.ok and outcome.image == "app:v1", outcome.lines
    argvs = [a for a, _ in runner.calls]
    assert not [a for a in argvs if a[:3] == ["docker", "run", "--rm"]]  # no migrations


def test_dry_run_changes_nothing():
    runner = FakeSwarm("completed")
    outcome = _deployer(runner, image="app:v2", dry_run=True).run()
    assert outcome.ok and runner.calls == []
    assert any("service update" in line for line in outcome.lines)


def test_the_fab_tasks_are_listed():
    from fabfile import ns

    names = set(ns.task_names)
    assert {"cluster-init", "cluster-join", "cluster-label", "cluster-status", "cluster-up",
            "cluster-deploy", "cluster-rollback"} <= names  # fmt: skip
    assert Path(ROOT / "docs" / "cluster.md").exists()
