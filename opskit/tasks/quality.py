"""Code quality with ruff: `inv lint` (the guide's flake8) and `inv format` (its black)."""

from __future__ import annotations

from invoke import Collection, Exit, task

from opskit.commands import quality
from opskit.tasks._common import DRY_HELP, in_root, project_root, run


@task(help={"paths": "files or folders to check (default: the whole project)"})
def lint(c, paths="."):
    """Lint the code with ruff (the flake8 rules and more; settings in pyproject.toml)."""
    with in_root(c, project_root()):
        result = run(c, quality.lint(paths.split()), warn=True)
    if result is not None and not result.ok:
        raise Exit("lint: problems above; `inv format` fixes the formatting ones", code=1)


@task(
    name="format",
    help={
        "paths": "files or folders to format (default: the whole project)",
        "check": "change nothing; fail and show the diff when a file would change",
        "dry-run": DRY_HELP,
    },
)
def format_(c, paths=".", check=False, dry_run=False):
    """Format the code with ruff (black's style) and sort imports."""
    with in_root(c, project_root()):
        for argv in quality.format_(paths.split(), check=check):
            result = run(c, argv, dry_run=dry_run, warn=True)
            if result is not None and not result.ok:
                raise Exit("format: files would change (diff above); run `inv format`", code=1)


ns = Collection(lint, format_)
