"""scripts/ensure.sh's docker step: it starts the engine, and when dockerd 20.10 panics on a
damaged network store (a network left without an address pool by an unclean stop), it
moves the store aside, keeps it, and starts the engine again.

`dockerd` and `docker` are stand-ins on PATH here; every other tier starts the real engine
through the same step.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness.core import ROOT

SCRIPT = ROOT / "scripts" / "ensure.sh"

# dockerd 20.10.24's panic, as it prints it, while the store holds the bad network
FAKE_DOCKERD = """#!/bin/sh
n=$(( $(cat "$FAKE_DIR/starts" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE_DIR/starts"
if [ -e "$DOCKERD_NETWORK_STORE" ] && [ "$FAKE_DAMAGED" = yes ]; then
  echo 'panic: runtime error: index out of range [0] with length 0'
  echo 'github.com/docker/libnetwork.(*controller).reservePools(0x5634071cbe70?)'
  exit 2
fi
if [ "$FAKE_BROKEN" = yes ]; then echo 'failed to start daemon: some other trouble'; exit 1; fi
touch "$FAKE_DIR/ready"
exec sleep 5
"""
FAKE_DOCKER = """#!/bin/sh
[ "$1" = info ] && [ -e "$FAKE_DIR/ready" ]
"""
SUDO = """#!/bin/sh
exec "$@"
"""


def run(tmp_path: Path, damaged="yes", broken="no"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("dockerd", FAKE_DOCKERD), ("docker", FAKE_DOCKER), ("sudo", SUDO)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    store = tmp_path / "network" / "local-kv.db"
    store.parent.mkdir()
    store.write_bytes(b"bolt")
    log = tmp_path / "dockerd.log"
    log.write_text("an earlier start's line: libnetwork reservePools\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin:/usr/sbin:/sbin",
        "FAKE_DIR": str(tmp_path),
        "FAKE_DAMAGED": damaged,
        "FAKE_BROKEN": broken,
        "DOCKERD_LOG": str(log),
        "DOCKERD_NETWORK_STORE": str(store),
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), "docker"], capture_output=True, text=True, env=env, timeout=120
    )
    starts = int((tmp_path / "starts").read_text()) if (tmp_path / "starts").exists() else 0
    return proc, store, starts


def test_damaged_network_store_is_moved_aside_and_the_engine_starts(tmp_path):
    proc, store, starts = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert starts == 2
    assert not store.exists()
    kept = list(store.parent.glob("local-kv.db.damaged-*"))
    assert [p.read_bytes() for p in kept] == [b"bolt"]  # kept, not deleted
    assert "dockerd panicked reading its network store" in proc.stderr
    assert str(kept[0]) in proc.stderr


def test_healthy_store_is_left_alone(tmp_path):
    proc, store, starts = run(tmp_path, damaged="no")
    assert proc.returncode == 0, proc.stderr
    assert (starts, store.exists()) == (1, True)
    assert "panicked" not in proc.stderr


def test_other_failures_stop_at_once_with_this_starts_own_lines(tmp_path):
    proc, store, starts = run(tmp_path, damaged="no", broken="yes")
    assert proc.returncode == 1
    assert starts == 1 and store.exists()  # the earlier panic line in the log is not this start's
    assert "failed to start daemon: some other trouble" in proc.stderr
    assert "then run: scripts/ensure.sh docker" in proc.stderr
