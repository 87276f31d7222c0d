"""The workflows pass actionlint (with shellcheck on their `run:` scripts) and zizmor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.core import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    assert found, f"{name} is missing: scripts/ensure.sh python installs the test extra"
    return found


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"production.yml", "staging.yml"}


def test_actionlint_is_clean():
    # shellcheck (a Debian package of the test setup) checks every `run:` script too
    assert shutil.which("shellcheck"), "shellcheck is missing: scripts/ensure.sh packages"
    proc = subprocess.run(
        [tool("actionlint"), "-no-color", *map(str, WORKFLOWS)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ secrets.TOKEN }} $UNQUOTED\n      - run: echo ${{ nope.x }}\n"
    )
    proc = subprocess.run([tool("actionlint"), "-no-color", str(bad)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert 'undefined variable "nope"' in proc.stdout


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_zizmor_finds_nothing(workflow):
    proc = subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", "--format", "plain", str(workflow)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr
