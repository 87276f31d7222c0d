"""Every make target of the operators' guide is an inv task with one line of help.

The guide is a requirement, copied here as it lists them (Local Development > Commands,
Monitoring, Backup & Recovery, the quick start and troubleshooting), so a task that goes
missing from `inv --list`, the Makefile or the README's table fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GUIDE_MAKE_TARGETS = (
    # Local Development > Commands
    "dev",
    "dev-down",
    "dev-logs",
    "dev-shell",
    "dev-bash",
    "migrate",
    "makemigrations",
    "superuser",
    "test",
    "test-fast",
    "lint",
    "format",
    "check",
    "build-dev",
    "ps",
    "images",
    "prune",
    # Quick start and "Reset everything"
    "setup",
    "clean",
    # Monitoring
    "healthcheck",
    "monitor",
    "prod-logs",
    "staging-logs",
    # Backup & Recovery (opskit/tasks/backup.py)
    "db-backup",
    "db-backup-staging",
    "db-restore",
)


def inv_list() -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    tasks: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines()[1:]:
        match = re.match(r"^  (\S+)(?:\s+(.*))?$", line)
        if match:
            current = match.group(1)
            tasks[current] = match.group(2) or ""
        elif current and line.startswith("    "):
            tasks[current] += " " + line.strip()
    return tasks


@pytest.fixture(scope="module")
def listed() -> dict[str, str]:
    return inv_list()


def test_every_guide_target_is_an_inv_task(listed):
    missing = [t for t in GUIDE_MAKE_TARGETS if t not in listed]
    assert missing == [], f"make targets of the guide without an inv task: {missing}"


def test_every_task_has_one_line_of_help(listed):
    for name, help_text in listed.items():
        assert help_text.endswith("."), f"inv {name}: help should be one sentence: {help_text!r}"
        assert help_text.count(". ") == 0, f"inv {name}: more than one sentence: {help_text!r}"


def test_makefile_delegates_every_target_to_inv():
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *GUIDE_MAKE_TARGETS[:-1]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == len(GUIDE_MAKE_TARGETS) - 1
    for target, line in zip(GUIDE_MAKE_TARGETS[:-1], lines, strict=True):
        words = line.split()
        assert words[0].endswith("inv") and words[1:] == [target], line


def test_make_db_restore_takes_the_guides_backup_path():
    path = "backups/db_prod_20240101_120000/database.dump"
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "db-restore", f"BACKUP_PATH={path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split()[1:] == ["db-restore", path]
    missing = subprocess.run(["make", "-n", "db-restore"], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode != 0 and "BACKUP_PATH=" in missing.stderr


def test_make_passes_options_through_args():
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "migrate", "ARGS=--env production"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split()[1:] == ["migrate", "--env", "production"]


def test_dev_bat_start_is_dev_on_port_9000():
    text = (ROOT / "dev.bat").read_bytes().decode()
    assert "\r\n" in text, "a batch file needs CRLF line endings"
    assert 'if /i "%CMD%"=="start" ( %INV% dev --port 9000%REST% & goto end )' in text


def test_readme_tasks_table_lists_every_task(listed):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `inv ([a-z-]+)[^`]*` \|", section, flags=re.MULTILINE)
    assert sorted(rows) == sorted(listed), "README's task table and inv --list differ"
