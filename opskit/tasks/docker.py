"""Docker housekeeping: `inv ps`, `inv images`, `inv prune`."""

from __future__ import annotations

from invoke import Collection, task

from opskit.commands import docker as docker_cmd
from opskit.commands.compose import target
from opskit.tasks._common import (
    DRY_HELP,
    ENV_HELP,
    confirm,
    environment,
    in_root,
    project_root,
    run,
)


@task(help={"env": ENV_HELP, "all": "also stopped containers"})
def ps(c, env=None, all=False):  # noqa: A002 - docker's own flag name
    """Show the containers of the environment's stack."""
    root = project_root()
    with in_root(c, root):
        run(c, target(environment(env, root)).compose.ps(all=all), hide=False)


@task(help={"env": ENV_HELP})
def images(c, env=None):
    """List the images the environment's stack uses."""
    root = project_root()
    with in_root(c, root):
        run(c, target(environment(env, root)).compose.images(), hide=False)


@task(help={"yes": "prune without asking", "dry-run": DRY_HELP})
def prune(c, yes=False, dry_run=False):
    """Remove stopped containers, unused networks, dangling images and build cache."""
    steps = docker_cmd.prune()
    if not dry_run:
        confirm(
            "This removes stopped containers, unused networks, dangling images and the "
            "build cache (volumes and tagged images stay).",
            yes=yes,
            refuse="prune: refusing without a terminal to confirm; nothing was removed. "
            "Run `inv prune --yes`.",
        )
    for argv in steps:
        run(c, argv, dry_run=dry_run)


ns = Collection(ps, images, prune)
