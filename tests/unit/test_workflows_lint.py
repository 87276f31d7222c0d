"""The workflows pass actionlint (with shellcheck on their `run:` scripts) and zizmor."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness.core import ROOT, venv_tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_there_are_workflows():
    assert {p.name for p in WORKFLOWS} >= {"production.yml", "staging.yml"}


def test_actionlint_is_clean():
    # shellcheck (a Debian package of the test setup) checks every `run:` script too
    assert shutil.which("shellcheck"), "shellcheck is missing: scripts/ensure.sh packages"
    proc = subprocess.run(
        [venv_tool("actionlint"), "-no-color", *map(str, WORKFLOWS)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ secrets.TOKEN }} $UNQUOTED\n      - run: echo ${{ nope.x }}\n"
    )
    proc = subprocess.run([venv_tool("actionlint"), "-no-color", str(bad)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert 'undefined variable "nope"' in proc.stdout


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_zizmor_finds_nothing(workflow):
    proc = subprocess.run(
        [venv_tool("zizmor"), "--offline", "--no-progress", "--format", "plain", str(workflow)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr
