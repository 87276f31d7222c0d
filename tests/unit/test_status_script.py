"""scripts/status.sh: which deploy logs the collector's container is handed.

`docker` is a recording stand-in on PATH here; the stack and remote tiers run the real
collector through this script (tests/stack/test_status_stack.py,
tests/remote/test_drill_remote.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

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


# `start`: the collector's own container, every minute, without a docker CLI each minute

SOCKETS: dict[Path, Path] = {}


@pytest.fixture(autouse=True)
def _socket_dirs_removed():
    yield
    while SOCKETS:
        SOCKETS.popitem()[1].rmdir()


FAKE_DOCKER_INSPECT = """#!/bin/sh
printf '%s\\n' "$*" >> "$DOCKER_LOG"
case "$1 $2" in
  "image inspect") [ -s "$DOCKER_IMAGE_ID" ] || exit 1; cat "$DOCKER_IMAGE_ID" ;;
  inspect*) [ -f "$DOCKER_STATE" ] && cat "$DOCKER_STATE" ;;
esac
exit 0
"""


def start(tmp_path: Path, *args: str, state: str | None = None, image_id: str = "sha256:1",
          **env_extra: str) -> tuple[int, list[str], str]:  # fmt: skip
    """status.sh start ARGS with a stand-in docker whose `inspect` answers `state` and
    whose `image inspect` answers `image_id`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER_INSPECT)
    docker.chmod(0o755)
    # one socket path per test: it is part of the settings `start` compares
    sock_dir = SOCKETS.setdefault(tmp_path, Path(tempfile.mkdtemp(prefix="st")))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_dir / "docker.sock"))
    log = tmp_path / "docker.log"
    log.unlink(missing_ok=True)
    answer = tmp_path / "inspect-answer"
    answer.unlink(missing_ok=True)
    if state is not None:
        answer.write_text(state + "\n")
    (tmp_path / "image-id").write_text(f"{image_id}\n" if image_id else "")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "DOCKER_LOG": str(log),
        "DOCKER_STATE": str(answer),
        "DOCKER_IMAGE_ID": str(tmp_path / "image-id"),
        "DOCKER_SOCKET": str(sock_dir / "docker.sock"),
        "LOG_DIR": str(tmp_path / "main-logs"),
        "BACKUP_DIR": str(tmp_path / "no-backups"),
        "STAGING_LOG_DIR": str(tmp_path / "absent"),
        **env_extra,
    }
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start", *args], capture_output=True,
                              text=True, env=env)  # fmt: skip
    finally:
        sock.close()
        (sock_dir / "docker.sock").unlink()
    return proc.returncode, log.read_text().splitlines(), proc.stderr


def test_start_runs_one_hardened_container_that_loops_every_minute(tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("SLACK_WEBHOOK_URL=https://hooks.example/x\n")
    rc, calls, err = start(tmp_path, ENV_FILE=str(env_file))
    assert rc == 0, err
    assert [c.split()[0] for c in calls] == ["image", "inspect", "rm", "run"]
    run_line = calls[-1]
    assert run_line.startswith("run -d --name aiia_status_collector --label aiia.status.config=")
    for flag in ("--restart unless-stopped", "--cap-drop ALL", "--read-only",
                 "--security-opt no-new-privileges:true", "--memory 48m",
                 "/sys/fs/cgroup:/host/cgroup:ro", ":/opt/aiia:ro", ":/opt/aiia-logs:ro",
                 f"{env_file}:/run/aiia/env:ro", "--env-file /run/aiia/env",
                 f"{tmp_path / 'main-logs'}/status.log:/var/log/aiia-status.log",
                 "python3 -m opskit.status run --db /var/lib/aiia-status/status.db"):  # fmt: skip
        assert flag in run_line, flag
    assert f"--user {os.getuid()}:10002" in run_line
    # the secret stays in its file: read by the collector, never in argv
    assert "hooks.example" not in run_line
    assert "sleep $((60 - $(date +%s) % 60))" in run_line
    assert (tmp_path / "main-logs" / "status.log").exists()


def test_start_changes_nothing_when_it_runs_with_these_settings(tmp_path):
    rc, calls, _ = start(tmp_path)
    label = next(w for w in calls[-1].split() if w.startswith("aiia.status.config="))
    config = label.split("=", 1)[1]
    rc, calls, err = start(tmp_path, state=f"true {config}")
    assert rc == 0 and [c.split()[0] for c in calls] == ["image", "inspect"], calls
    assert "runs the collector every minute" in err
    assert start(tmp_path, "--check", state=f"true {config}")[:2] == (0, calls)
    # stopped, other settings or absent: --check says so (3) and starts nothing
    for state in (f"false {config}", "true 0123456789abcdef", None):
        rc, calls, _ = start(tmp_path, "--check", state=state)
        assert rc == 3 and [c.split()[0] for c in calls] == ["image", "inspect"], (state, calls)
    # other settings (another collector argument, a rebuilt image): replaced
    for other in ({"STATUS_ARGS": "--now 1700000000"}, {"image_id": "sha256:2"}):
        rc, calls, _ = start(tmp_path, state=f"true {config}", **other)
        assert rc == 0 and [c.split()[0] for c in calls] == ["image", "inspect", "rm", "run"]
    # no image: nothing started, the fix named
    rc, calls, err = start(tmp_path, state=f"true {config}", image_id="")
    assert rc == 2 and "docker compose build backup" in err
    assert not any(c.startswith("run") for c in calls)
