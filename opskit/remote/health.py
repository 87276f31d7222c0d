"""`fab healthcheck`: each environment's serving container, probed as nginx reaches it."""

from __future__ import annotations

from fabric import task
from invoke import Collection, Exit

from opskit import deploy as engine
from opskit.remote._common import PATH_HELP, environment, runner


@task(
    auto_shortflags=False,
    help={"env": "production, staging, or both when not given", "path": PATH_HELP},
)
def healthcheck(c, env=None, path=None):
    """Probe /health/ of the serving release(s) from inside nginx's network."""
    names = [env] if env else ["production", "staging"]
    r = runner(c)
    failed = False
    for name in names:
        try:
            ok, text = engine.check_health(r, environment(name, path if env else None))
        except engine.DeployError as exc:
            ok, text = False, f"{name}: {exc}"
        failed |= not ok
        print(text)
    if failed:
        raise Exit(code=1)


ns = Collection(healthcheck)
