"""The deploy lock: exact argv, and its scripts run for real by sh on this machine."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from opskit.commands import lock as lk
from opskit.commands.lock import HELD, Lock, LockDetails, LockStatus, explain, parse_status

DETAILS = LockDetails(
    who="alice@laptop",
    when="2025-01-01T12:00:00+00:00",
    env="production",
    action="deploy",
    what="ref main",
    why="hotfix",
    host="laptop",
    pid=4242,
)


def run(argv, stdin=""):
    return subprocess.run(argv, input=stdin, capture_output=True, text=True)


def test_builders_pass_every_value_as_its_own_argument():
    lock = Lock("/srv/app dir/.deploy/lock")
    assert lock.acquire() == ["sh", "-c", lk.ACQUIRE, "sh", "/srv/app dir/.deploy/lock"]
    assert lock.acquire(holder_pid=99) == ["sh", "-c", lk.ACQUIRE, "sh", lock.path, "99"]
    assert lock.status() == ["sh", "-c", lk.STATUS, "sh", lock.path]
    assert lock.release() == ["sh", "-c", lk.RELEASE, "sh", lock.path]


def test_second_acquire_is_refused_with_the_holders_details(tmp_path):
    lock = Lock(str(tmp_path / "state" / "lock"))
    first = run(lock.acquire(), DETAILS.to_json())
    assert first.returncode == 0, first.stderr
    second = run(lock.acquire(), LockDetails("bob@ci", "", "production", "deploy", "x").to_json())
    assert second.returncode == HELD
    assert LockDetails.from_json(second.stdout) == DETAILS
    # the refused attempt did not touch the holder's details
    assert json.loads((tmp_path / "state" / "lock" / lk.DETAILS).read_text())["who"] == (
        "alice@laptop"
    )


def test_hostile_values_are_data_not_commands(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}) `touch {marker}` '; touch {marker}; '"
    lock = Lock(str(tmp_path / "lock; touch pwned"))
    details = LockDetails(evil, evil, "production", "deploy", evil, why=evil)
    assert run(lock.acquire(), details.to_json()).returncode == 0
    status = run(lock.status())
    assert parse_status(status.returncode, status.stdout).details == details
    assert run(lock.release()).returncode == 0
    assert not marker.exists() and not (tmp_path / "pwned").exists()
    assert list(tmp_path.iterdir()) == []


def test_status_tells_a_live_holder_from_a_gone_one(tmp_path):
    lock = Lock(str(tmp_path / "lock"))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert run(lock.acquire(holder.pid), DETAILS.to_json()).returncode == 0
        answer = run(lock.status())
        status = parse_status(answer.returncode, answer.stdout)
        assert (status.held, status.holder, status.holder_pid) == (True, "alive", holder.pid)
        assert not status.stale
    finally:
        holder.kill()
        holder.wait()
    answer = run(lock.status())
    status = parse_status(answer.returncode, answer.stdout)
    assert (status.holder, status.holder_pid, status.stale) == ("gone", holder.pid, True)


def test_holder_without_sshd_or_pid_is_unknown(tmp_path):
    lock = Lock(str(tmp_path / "lock"))
    # run from this test, sh has no sshd ancestor and no pid was given
    assert run(lock.acquire(), DETAILS.to_json()).returncode == 0
    answer = run(lock.status())
    assert parse_status(answer.returncode, answer.stdout).holder == "unknown"


def test_release_removes_the_lock_and_reports_when_there_was_none(tmp_path):
    lock = Lock(str(tmp_path / "lock"))
    assert run(lock.release()).returncode == 3
    assert run(lock.acquire(), DETAILS.to_json()).returncode == 0
    assert run(lock.release()).returncode == 0
    assert not (tmp_path / "lock").exists()
    assert run(lock.status()).returncode == 1
    assert run(lock.acquire(), DETAILS.to_json()).returncode == 0


def test_release_never_deletes_files_it_did_not_write(tmp_path):
    lock = Lock(str(tmp_path / "lock"))
    assert run(lock.acquire(), DETAILS.to_json()).returncode == 0
    (tmp_path / "lock" / "precious").write_text("keep me")
    assert run(lock.release()).returncode != 0
    assert (tmp_path / "lock" / "precious").read_text() == "keep me"


def test_parse_status_of_saved_answers():
    assert parse_status(1, "") == LockStatus(held=False)
    saved = DETAILS.to_json() + "\nholder: gone 1234\n"
    status = parse_status(0, saved)
    assert status.details == DETAILS and status.holder == "gone" and status.holder_pid == 1234
    garbled = parse_status(0, "{not json\nholder: unknown\n")
    assert garbled.held and garbled.details.who == "unknown"


@pytest.mark.parametrize(
    ("holder", "expect"),
    [
        ("alive", "still running"),
        ("gone", "release it with: fab -H h lock-release --env production"),
        ("unknown", "if no deploy is running"),
    ],
)
def test_explain_says_what_to_do(holder, expect):
    text = explain(
        LockStatus(True, DETAILS, holder, 77),
        env="production",
        release_hint="fab -H h lock-release --env production",
    )
    assert text.startswith("production: locked by alice@laptop since 2025-01-01T12:00:00+00:00")
    assert "deploy production ref main (why: hotfix)" in text
    assert expect in text


def test_describe_gives_the_age():
    now = datetime(2025, 1, 1, 12, 5, 0, tzinfo=UTC)
    assert "(5m ago)" in DETAILS.describe(now)
    assert LockDetails.from_json("").describe() == "unknown since :"


def test_acquire_reads_all_it_is_sent_even_when_refused(tmp_path):
    """A command that exits before reading its stdin breaks the sender's write (over SSH,
    Fabric's stdin thread fails with 'Socket is closed')."""
    lock = Lock(str(tmp_path / "lock"))
    assert run(lock.acquire(), DETAILS.to_json()).returncode == 0
    proc = subprocess.Popen(lock.acquire(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1)  # still reading, although the lock is held
    out, _ = proc.communicate(DETAILS.to_json() * 100)
    assert proc.returncode == HELD and LockDetails.from_json(out) == DETAILS
