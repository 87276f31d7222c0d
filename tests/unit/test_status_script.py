"""scripts/status.sh: which deploy logs the collector's container is handed.

`docker` is a recording stand-in on PATH here; the stack and remote tiers run the real
collector through this script (tests/stack/test_status_stack.py,
tests/remote/test_drill_remote.py).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.harness.core import ROOT

SCRIPT = ROOT / "scripts" / "status.sh"
FAKE_DOCKER = """#!/bin/sh
printf '%s\\n' "$*" >> "$DOCKER_LOG"
"""


def run(tmp_path: Path, mode: str, script: Path = SCRIPT, **env_extra: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    # a socket's path must stay under 108 bytes: pytest's tmp_path can be longer
    sock_dir = Path(tempfile.mkdtemp(prefix="st"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_dir / "docker.sock"))
    log = tmp_path / "docker.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "DOCKER_LOG": str(log),
        "DOCKER_SOCKET": str(sock_dir / "docker.sock"),
        "LOG_DIR": str(tmp_path / "main-logs"),
        "BACKUP_DIR": str(tmp_path / "no-backups"),
        "ENV_FILE": str(tmp_path / "no.env"),
        **env_extra,
    }
    try:
        proc = subprocess.run(["bash", str(script), mode], capture_output=True, text=True, env=env)
    finally:
        sock.close()
        (sock_dir / "docker.sock").unlink()
        sock_dir.rmdir()
    assert proc.returncode == 0, proc.stderr
    return [line for line in log.read_text().splitlines() if line.startswith("run ")]


def test_staging_checkouts_deploy_log_is_read_too(tmp_path):
    staging_logs = tmp_path / "staging-logs"
    staging_logs.mkdir()
    for mode in ("run", "show"):
        (call,) = run(tmp_path, mode, STAGING_LOG_DIR=str(staging_logs))
        assert f"-v {staging_logs}:/opt/aiia-logs-staging:ro" in call
        assert "--deploy-log /opt/aiia-logs/deploys.log" in call
        assert "--deploy-log /opt/aiia-logs-staging/deploys.log" in call
        (tmp_path / "docker.log").unlink()


def test_no_staging_checkout_no_second_log(tmp_path):
    (call,) = run(tmp_path, "run", STAGING_LOG_DIR=str(tmp_path / "absent"))
    assert "aiia-logs-staging" not in call
    assert call.count("--deploy-log") == 1


def test_the_default_is_the_staging_checkout_beside_production(tmp_path):
    # a server's layout: ~/main/ai-ia-backend (cron runs this one) and ~/staging/ai-ia-backend
    main = tmp_path / "home" / "main" / "ai-ia-backend"
    staging_logs = tmp_path / "home" / "staging" / "ai-ia-backend" / "logs"
    (main / "scripts").mkdir(parents=True)
    staging_logs.mkdir(parents=True)
    shutil.copy2(SCRIPT, main / "scripts" / "status.sh")
    (call,) = run(tmp_path, "run", script=main / "scripts" / "status.sh")
    assert f"-v {staging_logs}:/opt/aiia-logs-staging:ro" in call
