"""scripts/backup.sh: usage, argument checks with actionable messages, shellcheck clean."""

from __future__ import annotations

import subprocess

import pytest

from tests.harness.core import ROOT, require_binary

SCRIPT = ROOT / "scripts" / "backup.sh"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env=env)  # fmt: skip


def test_shellcheck_clean():
    shellcheck = require_binary("shellcheck", "packages")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_strict_mode_and_the_guides_cron_line_are_in_the_header():
    text = SCRIPT.read_text()
    assert "set -o errexit -o pipefail -o nounset" in text
    assert "0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "expected one argument, production or staging (got 0)"),
        (("prod",), "unknown environment 'prod': use production or staging"),
        (("production", "staging"), "expected one argument, production or staging (got 2)"),
    ],
)
def test_wrong_usage_exits_2_with_the_usage(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    assert proc.stderr.rstrip().endswith(f"backup.sh: {message}")
    assert "Usage: scripts/backup.sh production|staging" in proc.stderr


def test_help():
    proc = run("--help")
    assert proc.returncode == 0 and "Usage: scripts/backup.sh" in proc.stderr


def test_a_missing_env_file_says_how_to_make_one(tmp_path):
    proc = run("production", env={"PATH": "/usr/bin:/bin", "ENV_FILE": str(tmp_path / "none")})
    assert proc.returncode == 2
    assert f"no env file {tmp_path / 'none'}: create it (cp config/prod.env.example" in proc.stderr
