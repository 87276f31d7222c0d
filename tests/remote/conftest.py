"""Fixtures of the remote tier's cron tests: a throwaway crontab, and the place of the
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
def cron_user():
    """A throwaway OS user whose crontab `fab install-cron --user` edits (never root's)."""
    require_binary("crontab", "packages")
    name = f"aiiacron{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["crontab", "-r", "-u", name], capture_output=True, check=False)
        subprocess.run(["userdel", name], capture_output=True, check=False)


def crontab_of(user: str) -> str:
    return subprocess.run(["crontab", "-l", "-u", user], capture_output=True, text=True).stdout


@pytest.fixture
def drill_key(ssh_host):
    """Where `fab install-cron` makes the drill's key on "the server" (the SSH user's
    ~/.config/aiia/drill.key): absent during the test, put back as it was afterwards."""
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
