"""`inv setup` (a local .env and dev certificates) and `inv clean` (the local stack, wiped)."""

from __future__ import annotations

from invoke import Collection, task

from opskit import devenv
from opskit.commands.compose import LOCAL
from opskit.tasks._common import DRY_HELP, confirm, in_root, project_root, run, say


@task(help={"dry-run": DRY_HELP})
def setup(c, dry_run=False):
    """Create .env with fresh secrets and local TLS certificates (never overwrites .env)."""
    root = project_root()
    env_file = root / devenv.ENV_FILE
    if env_file.exists():
        say(f"setup: {devenv.ENV_FILE} exists already; left as it is (delete it to start over)")
    elif dry_run:
        say(f"setup: would create {devenv.ENV_FILE} from {devenv.EXAMPLE} with fresh secrets")
    else:
        filled = devenv.create_env(root)
        if filled is None:
            say(f"setup: {devenv.ENV_FILE} appeared meanwhile; left as it is")
        else:
            generated = ", ".join(filled) or "nothing"
            say(
                f"setup: created {devenv.ENV_FILE} (mode 600) from {devenv.EXAMPLE}; "
                f"generated {generated}"
            )
    names = ", ".join(devenv.DEV_HOSTNAMES)
    if dry_run:
        say(f"setup: would make a local CA and a certificate in {devenv.CERT_DIR}/ for {names}")
        return
    paths = devenv.certificates(root)
    say(
        f"setup: TLS certificate for {names} in {devenv.CERT_DIR}/ "
        f"(trust {paths.ca_cert.relative_to(root)} in a browser to use it)"
    )


@task(help={"yes": "delete without asking", "dry-run": DRY_HELP})
def clean(c, yes=False, dry_run=False):
    """Remove the local stack with its volumes: the development database is deleted."""
    argv = LOCAL.down(volumes=True)
    if dry_run:
        with in_root(c, project_root()):
            run(c, argv, dry_run=True)
        return
    confirm(
        "This stops the local stack and deletes its volumes (the aiia_dev database).",
        yes=yes,
        refuse="clean: refusing to delete the local volumes without a terminal to confirm; "
        "nothing was changed. Run `inv clean --yes` to delete them.",
    )
    with in_root(c, project_root()):
        run(c, argv)
    say("clean: local stack and volumes removed; `inv setup` and `inv dev` start afresh")


ns = Collection(setup, clean)
