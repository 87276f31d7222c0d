"""`fab apply-services`: the shared-service configs of the checkout, put in service."""

from __future__ import annotations

from fabric import task
from invoke import Collection, Exit

from opskit import services
from opskit.remote._common import PATH_HELP, environment, runner


@task(
    auto_shortflags=False,
    help={
        "env": "the checkout whose configs apply (default production: the stack runs from it)",
        "service": f"comma-separated: {', '.join(services.SERVICES)} (default nginx)",
        "path": PATH_HELP,
        "dry-run": "print what would run; change nothing",
    },
)
def apply_services(c, env="production", service="nginx", path=None, dry_run=False):
    """Apply the checkout's shared-service configs, health-gated (nginx: tested, reloaded)."""
    try:
        names = services.parse_services(service)
    except ValueError as exc:
        raise Exit(str(exc), 2) from None
    target = environment(env, path)
    done = services.apply(runner(c), target.path, names, dry_run=dry_run)
    if not done.ok:
        raise Exit(code=1)


ns = Collection(apply_services)
