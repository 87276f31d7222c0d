"""`inv healthcheck`: every service of the environment's stack, green, yellow or red."""

from __future__ import annotations

import json

from invoke import Collection, Exit, task

from opskit import health
from opskit.tasks._common import (
    ENV_HELP,
    ask,
    compose_project,
    environment,
    in_root,
    project_root,
)


@task(
    help={
        "env": ENV_HELP,
        "json": "print the result as JSON instead of a table",
        "domain": "the site name nginx is asked for (default: the guide's name of the env)",
    }
)
def healthcheck(c, env=None, json_=False, domain=None):
    """Check every service (nginx, Django, PostgreSQL, PgBouncer, Redis, TLS); red exits 1."""
    root = project_root()
    chosen = environment(env, root)
    with in_root(c, root):
        lay = health.layout(chosen, domain=domain, project=compose_project())
        checks = health.collect(lay, lambda a: ask(c, a), root=root)
    if json_:
        print(json.dumps(health.report(chosen, checks), indent=2))
    else:
        print(health.render_table(checks))
    failing = health.red(checks)
    if failing:
        names = ", ".join(f"{c.name} ({c.summary})" for c in failing)
        raise Exit(f"healthcheck: red: {names}", code=1)


ns = Collection(healthcheck)
