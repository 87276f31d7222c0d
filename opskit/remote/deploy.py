"""`fab deploy`, `fab rollback` and the history around them (opskit.deploy does the work)."""

from __future__ import annotations

import shlex

from fabric import task
from invoke import Collection, Exit

from opskit import deploy as engine
from opskit.commands import deploy as cmd
from opskit.remote._common import (
    ENV_HELP,
    PATH_HELP,
    STACK_HELP,
    environment,
    host_arg,
    runner,
    webhook,
)

GATE_HELP = {
    "health-attempts": "health probes before the new release is given up (default 30)",
    "health-interval": "seconds between health probes (default 2)",
    "drain-timeout": "seconds nginx's old workers get to finish their requests (default 30)",
    "keep": "release images kept for rollback (default 3)",
    "why": "the reason, kept in the lock and the deploy log",
    "path": PATH_HELP,
    "stack-file": STACK_HELP,
    "dry-run": "check and print what would run; change nothing",
}


def _plan(c, env, action, **kwargs) -> engine.Plan:
    try:
        return engine.Plan(
            env=environment(env, kwargs.pop("path", None)),
            action=action,
            server=host_arg(c),
            webhook=webhook(),
            **kwargs,
        )
    except (cmd.BuilderError, ValueError) as exc:
        raise Exit(str(exc), 2) from None


def _number(value, name: str, kind=float):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise Exit(f"--{name}: {value!r} is not a number", 2) from None


def _gate(health_attempts, health_interval, drain_timeout, keep) -> dict:
    """The options deploy and rollback share (the health gate, the drain, what is kept)."""
    return {
        "health_attempts": _number(health_attempts, "health-attempts", int),
        "health_interval_s": _number(health_interval, "health-interval"),
        "drain_timeout_s": _number(drain_timeout, "drain-timeout"),
        "keep_releases": _number(keep, "keep", int),
    }


def _run(c, plan: engine.Plan) -> None:
    outcome = engine.Deployer(runner(c), plan).run()
    if not outcome.ok:
        raise Exit(code=outcome.exit_code)


@task(
    auto_shortflags=False,
    help={
        "env": ENV_HELP,
        "ref": "git branch, tag or commit to build on the server (default: the env's branch)",
        "image": "a registry image to pull instead of building (the right way: build in CI)",
        "skip-backup": "deploy without the pre-deploy backup (recorded in the deploy log)",
        "extra-ca": "a CA bundle on the server that builds behind a TLS proxy need",
        **GATE_HELP,
    },
)
def deploy(
    c,
    env=None,
    ref=None,
    image=None,
    why="",
    skip_backup=False,
    health_attempts=30,
    health_interval="2",
    drain_timeout="30",
    keep=3,
    extra_ca=None,
    path=None,
    stack_file=None,
    dry_run=False,
):
    """Deploy a build: lock, pre-flight, backup, image, migrate, gated release, switch."""
    plan = _plan(
        c,
        env,
        "deploy",
        ref=ref,
        image=image,
        why=why,
        skip_backup=skip_backup,
        **_gate(health_attempts, health_interval, drain_timeout, keep),
        extra_ca=extra_ca,
        path=path,
        stack_file=stack_file,
        dry_run=dry_run,
    )
    _run(c, plan)


@task(
    auto_shortflags=False,
    help={
        "env": ENV_HELP,
        "to": "the release to bring back (default: the one before the serving one); "
        "`fab releases` lists them",
        **GATE_HELP,
    },
)
def rollback(
    c,
    env=None,
    to=None,
    why="",
    health_attempts=30,
    health_interval="2",
    drain_timeout="30",
    keep=3,
    path=None,
    stack_file=None,
    dry_run=False,
):
    """Bring back a kept release through the same health-gated switch (no migrations run)."""
    plan = _plan(
        c,
        env,
        "rollback",
        to_release=to,
        why=why,
        **_gate(health_attempts, health_interval, drain_timeout, keep),
        path=path,
        stack_file=stack_file,
        dry_run=dry_run,
    )
    _run(c, plan)


@task(
    auto_shortflags=False,
    help={"env": ENV_HELP, "last": "how many entries (default 20)", "path": PATH_HELP},
)
def deploys(c, env=None, last=20, path=None):
    """Show the deploy log: when, who, release and source, result, duration."""
    try:
        print(engine.deploy_history(runner(c), environment(env, path), _number(last, "last", int)))
    except engine.DeployError as exc:
        raise Exit(str(exc), 1) from None


@task(auto_shortflags=False, help={"env": ENV_HELP, "path": PATH_HELP})
def releases(c, env=None, path=None):
    """List the releases kept for rollback; * marks the one serving."""
    try:
        print(engine.releases(runner(c), environment(env, path)))
    except engine.DeployError as exc:
        raise Exit(str(exc), 1) from None


@task(
    auto_shortflags=False,
    help={
        "env": ENV_HELP,
        "release": "the kept release whose image runs the command",
        "command": "manage.py's arguments, e.g. 'migrate core 0001_initial'",
        "path": PATH_HELP,
        "stack-file": STACK_HELP,
    },
)
def manage(c, env=None, release=None, command="", path=None, stack_file=None):
    """Run `python manage.py COMMAND` in a one-off container of a kept release."""
    if not release or not command:
        raise Exit("give --release (see `fab releases`) and --command", 2)
    try:
        args = shlex.split(command)
        target = environment(env, path)
        res = engine.manage(
            runner(c), target, cmd.check_release(release), args, stack_file=stack_file
        )
    except (ValueError, cmd.BuilderError) as exc:
        raise Exit(str(exc), 2) from None
    print(res.stdout, end="")
    if not res.ok:
        raise Exit(res.stderr.strip() or f"manage.py exited {res.exited}", res.exited or 1)


@task(
    auto_shortflags=False,
    help={
        "env": "the environment whose deploys count (default staging)",
        "commit": "the full commit id (40 hex digits) the image must be built from",
        "path": PATH_HELP,
    },
)
def staged_image(c, env="staging", commit=None, path=None):
    """Print the image (by digest) ENV deployed successfully for COMMIT; exit 1 if none.

    Promotion: the production workflow deploys that digest rather than building again."""
    if not commit:
        raise Exit("give --commit (the full commit id)", 2)
    try:
        found = engine.staged_image(runner(c), environment(env, path), commit)
    except cmd.BuilderError as exc:
        raise Exit(str(exc), 2) from None
    except engine.DeployError as exc:
        raise Exit(str(exc), 1) from None
    if not found:
        raise Exit(f"{env} has deployed no registry image of {commit} successfully", 1)
    print(found)


ns = Collection(deploy, rollback, deploys, releases, manage, staged_image)
