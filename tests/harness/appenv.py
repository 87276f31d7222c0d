"""A compose project directory for `docker compose config` of the repository's stacks,
with its own rendered app env files (.env.app/), so a test never writes into the checkout.

Every top-level entry of the repository is linked into the directory except the env
files and .env.app/ themselves: compose resolves the stack's relative paths there.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from opskit import appenv
from tests.harness.core import ROOT, venv_tool


def project_dir(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name == ".env" or entry.name.startswith(".env."):
            continue
        (base / entry.name).symlink_to(entry)
    return base


def compose_config(
    project: Path, files: tuple[str, ...], env_file: Path | None, variables: Mapping[str, str]
) -> subprocess.CompletedProcess:
    """`docker compose config --format json` of `files` (relative to the repository) in
    `project`, with only `variables` in its environment (no shell's COMPOSE_* leak in)."""
    argv = [venv_tool("docker-compose"), "--project-directory", str(project)]
    for f in files:
        argv += ["--file", str(project / f)]
    if env_file:
        argv += ["--env-file", str(env_file)]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(project), **variables}
    return subprocess.run(
        [*argv, "config", "--format", "json"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def render_server(project: Path, prod_env: Path, staging_env: Path) -> list[appenv.Rendered]:
    return appenv.refresh(
        project,
        appenv.SERVER,
        {"PRODUCTION_ENV_FILE": str(prod_env), "STAGING_ENV_FILE": str(staging_env)},
    )
