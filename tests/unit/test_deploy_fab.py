"""The fab collection: its tasks and help, and tasks over Fabric's mocked SSH session.

fabric.testing's MockRemote replaces the SSH client, so these tests cannot reach any
server; the commands the tasks send are checked byte for byte.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fabric import Connection
from invoke import Exit

from opskit.commands import deploy as cmd
from opskit.commands.lock import Lock, LockDetails
from opskit.deploy import history
from opskit.remote import deploy as remote_deploy
from opskit.remote import lock as remote_lock
from opskit.shell import join
from tests.harness.core import venv_tool
from tests.harness.fabtest import run_task

ROOT = Path(__file__).resolve().parents[2]
PROD = cmd.environment("production")
HELD = LockDetails("bob@ci", "2025-01-01T11:00:00+00:00", "production", "deploy", "ref main")


def test_fab_list_shows_every_task_with_its_help():
    res = subprocess.run([venv_tool("fab"), "--list"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    names = [
        line.split()[0]
        for line in res.stdout.splitlines()[2:]
        if line.startswith("  ") and not line.startswith("   ")
    ]
    for task in (
        "deploy",
        "rollback",
        "deploys",
        "releases",
        "manage",
        "lock-status",
        "lock-release",
        "healthcheck",
    ):
        assert task in names
    help_ = subprocess.run(
        [venv_tool("fab"), "--help", "deploy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    for option in (
        "--env",
        "--ref",
        "--image",
        "--skip-backup",
        "--health-attempts",
        "--health-interval",
        "--why",
        "--dry-run",
    ):
        assert option in help_


def test_lock_status_over_ssh_explains_a_stale_lock(capsys):
    answer = HELD.to_json() + "\nholder: gone 4321\n"
    run_task(
        remote_lock.lock_status, [(join(Lock(PROD.lock_dir).status()), answer, 0)], env="production"
    )
    out = capsys.readouterr().out
    assert out.startswith("production: locked by bob@ci since 2025-01-01T11:00:00+00:00")
    assert "(pid 4321) is gone: that deploy was interrupted" in out
    assert "release it with: fab -H ubuntu@server.example lock-release --env production" in out


def test_lock_release_refuses_while_the_holder_runs(capsys):
    answer = HELD.to_json() + "\nholder: alive 4321\n"
    with pytest.raises(Exit):
        run_task(
            remote_lock.lock_release,
            [(join(Lock(PROD.lock_dir).status()), answer, 0)],
            env="production",
        )
    assert "refusing to release it" in capsys.readouterr().out


def test_lock_release_clears_a_stale_lock(capsys):
    answer = HELD.to_json() + "\nholder: gone 4321\n"
    run_task(
        remote_lock.lock_release,
        [
            (join(Lock(PROD.lock_dir).status()), answer, 0),
            (join(Lock(PROD.lock_dir).release()), "", 0),
        ],
        env="production",
    )
    assert "released the lock held by bob@ci" in capsys.readouterr().out


def test_deploys_prints_the_history_table(capsys):
    entry = history.Entry(
        when="2025-01-01T12:00:00+00:00",
        env="production",
        action="deploy",
        who="alice",
        result="ok",
        duration_s=30,
        release="20250101-120000",
    )
    run_task(
        remote_deploy.deploys,
        [(join(history.read(PROD.history_file, 20)), entry.to_line(), 0)],
        env="production",
    )
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("2025-01-01 12:00:00  production  deploy  alice")


def test_tasks_without_a_host_or_env_say_what_to_give():
    from invoke import Context

    with pytest.raises(Exit, match="give the server with -H"):
        remote_deploy.deploys(Context(), env="production")
    with pytest.raises(Exit, match="--env production or --env staging"):
        remote_lock.lock_status(Connection("h"), env=None)
