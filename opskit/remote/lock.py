"""`fab lock-status` and `fab lock-release`: the deploy lock of an environment."""

from __future__ import annotations

from fabric import task
from invoke import Collection, Exit

from opskit import deploy as engine
from opskit.remote._common import ENV_HELP, PATH_HELP, environment, host_arg, runner


@task(auto_shortflags=False, help={"env": ENV_HELP, "path": PATH_HELP})
def lock_status(c, env=None, path=None):
    """Who holds the deploy lock, since when, for what, and whether that deploy still runs."""
    target = environment(env, path)
    hint = f"fab -H {host_arg(c)} lock-release --env {target.name}"
    _held, text = engine.lock_status(runner(c), target, hint)
    print(text)


@task(
    auto_shortflags=False,
    help={
        "env": ENV_HELP,
        "force": "release it even though the deploy holding it still runs on the server",
        "path": PATH_HELP,
    },
)
def lock_release(c, env=None, force=False, path=None):
    """Release a deploy lock left behind by an interrupted deploy."""
    ok, text = engine.release_lock(runner(c), environment(env, path), force=force)
    print(text)
    if not ok:
        raise Exit(code=1)


ns = Collection(lock_status, lock_release)
