"""Fixtures of the remote tier's cron tests: a throwaway crontab user, and the place of the
server's restore-drill key kept as it was."""

from __future__ import annotations

import fcntl
import pwd
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.harness.core import require_binary

# the server here is this machine: tests that make the drill's key take turns
DRILL_KEY_LOCK = "/tmp/aiia-drill-key.lock"


@pytest.fixture
def cron_user(ssh_host):
    """A throwaway name for the SSH user (same uid, gid and home), for `fab install-cron
    --user`: its crontab is a file of its own, so the SSH user's (root's) is never touched,
    and as another user than the one logged in, install-cron makes the drill's key as it
    (runuser), in the home the test then finds the key in and runs the lines with."""
    require_binary("crontab", "packages")
    require_binary("runuser", "packages")
    name = f"aiiacron{secrets.token_hex(3)}"
    me = pwd.getpwnam(ssh_host.user)
    subprocess.run(["useradd", "--non-unique", "--uid", str(me.pw_uid), "--gid", str(me.pw_gid),
                    "--no-user-group", "--no-create-home", "--home-dir", me.pw_dir,
                    "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["crontab", "-r", "-u", name], capture_output=True, check=False)
        # --force: the uid is in use (it is the SSH user's); only the name goes
        subprocess.run(["userdel", "--force", name], capture_output=True, check=False)


def crontab_of(user: str) -> str:
    return subprocess.run(["crontab", "-l", "-u", user], capture_output=True, text=True).stdout


@pytest.fixture
def drill_key(ssh_host):
    """Where `fab install-cron --user CRON_USER` makes the drill's key on "the server" (the
    cron user's ~/.config/aiia/drill.key, which is the SSH user's home): absent during the
    test, put back as it was afterwards."""
    key = Path(pwd.getpwnam(ssh_host.user).pw_dir) / ".config" / "aiia" / "drill.key"
    pub = key.with_name(key.name + ".pub")
    with open(DRILL_KEY_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = {p: (p.read_bytes(), p.stat().st_mode) for p in (key, pub) if p.exists()}
        for p in saved:
            p.unlink()
        try:
            yield key
        finally:
            for p in (key, pub):
                p.unlink(missing_ok=True)
            for p, (data, mode) in saved.items():
                p.write_bytes(data)
                p.chmod(mode)
