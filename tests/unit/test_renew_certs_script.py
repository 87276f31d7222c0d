"""scripts/renew-certs.sh: the exact docker commands it runs, its exit codes and messages.

`docker` is a recording stand-in on PATH here; the services tier proves certbot's renewal
itself (tests/services/test_certs_pebble.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.core import ROOT, require_binary

SCRIPT = ROOT / "scripts" / "renew-certs.sh"
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$DOCKER_LOG"
case "$1" in
  inspect) [ "$FAKE_RUNNING" = missing ] && exit 1; echo "$FAKE_RUNNING" ;;
  exec) exit "$FAKE_EXEC_EXIT" ;;
esac
"""


def run(tmp_path: Path, *args: str, running="true", exec_exit=0, container=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "docker.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "DOCKER_LOG": str(log),
        "FAKE_RUNNING": running,
        "FAKE_EXEC_EXIT": str(exec_exit),
    }
    if container:
        env["NGINX_CONTAINER"] = container
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


def test_shellcheck_clean_and_strict():
    shellcheck = require_binary("shellcheck", "packages")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    text = SCRIPT.read_text()
    assert "set -o errexit -o pipefail -o nounset" in text
    assert "17 3,15 * * * /home/ubuntu/main/ai-ia-backend/scripts/renew-certs.sh" in text
    assert os.access(SCRIPT, os.X_OK)


def test_cron_run_renews_quietly_with_certbots_random_wait(tmp_path):
    proc, calls = run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")  # cron mails only trouble
    assert calls == [
        "inspect --format {{.State.Running}} aiia_nginx",
        "exec aiia_nginx certbot renew --quiet",
    ]


def test_dry_run_skips_the_wait_and_says_so(tmp_path):
    proc, calls = run(tmp_path, "--dry-run", container="other_nginx")
    assert proc.returncode == 0
    assert calls[-1] == "exec other_nginx certbot renew --dry-run --no-random-sleep-on-renew"
    assert "dry run succeeded" in proc.stdout


@pytest.mark.parametrize(
    ("exec_exit", "extra"),
    [pytest.param(1, None, id="certbot-failed"), pytest.param(137, "memory limit", id="oom")],
)
def test_certbot_failure_exits_1_with_the_log_to_read(tmp_path, exec_exit, extra):
    proc, _ = run(tmp_path, exec_exit=exec_exit)
    assert proc.returncode == 1
    assert f"certbot renew failed (exit {exec_exit}); the certificate in service is unchanged" in (
        proc.stderr
    )
    assert "docker exec aiia_nginx tail -n 50 /var/log/letsencrypt/letsencrypt.log" in proc.stderr
    assert ("memory limit" in proc.stderr) is (extra is not None)


@pytest.mark.parametrize(
    ("args", "running", "message"),
    [
        pytest.param(("--force",), "true", "unknown argument '--force'", id="unknown-option"),
        pytest.param(("--dry-run", "x"), "true", "at most one argument", id="two-args"),
        pytest.param((), "false", "container aiia_nginx is not running", id="stopped"),
        pytest.param((), "missing", "container aiia_nginx is not running", id="no-container"),
    ],
)
def test_wrong_usage_or_setup_exits_2_and_runs_no_certbot(tmp_path, args, running, message):
    proc, calls = run(tmp_path, *args, running=running)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not any(c.startswith("exec") for c in calls)


def test_help_prints_the_header(tmp_path):
    proc, calls = run(tmp_path, "--help")
    assert proc.returncode == 0 and calls == []
    assert "Usage: scripts/renew-certs.sh [--dry-run]" in proc.stderr
