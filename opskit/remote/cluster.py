"""`fab cluster-*`: the stack on Docker Swarm (opskit.swarm does the work; docs/cluster.md).

-H is always the manager: the node labelled db, which holds PostgreSQL, the checkouts
and the env files. Other nodes are reached over SSH only to join them.
"""

from __future__ import annotations

import functools

from fabric import Connection, task
from invoke import Collection, Exit

from opskit.commands.deploy import BuilderError
from opskit.deploy import predeploy_backup
from opskit.remote._common import ENV_HELP, PATH_HELP, environment, runner
from opskit.runner import CommandFailed, ContextRunner
from opskit.swarm import cluster

ROLE_HELP = "web (nginx and Django replicas) or db (PostgreSQL, PgBouncer, Redis)"
RESOLVE_HELP = "do not ask a registry for the image's digest (images loaded on the nodes by hand)"


def _fail(exc: Exception, code: int = 1):
    if isinstance(exc, cluster.ClusterError):
        detail = f"\n{exc.detail}" if exc.detail else ""
        raise Exit(f"{exc.reason}{detail}", code) from None
    raise Exit(str(exc), code) from None


def _paths(prod_path, staging_path) -> dict:
    return {"production": prod_path, "staging": staging_path}


@task(
    auto_shortflags=False,
    help={"advertise-addr": "the manager's address the other nodes reach (its private IP)"},
)
def cluster_init(c, advertise_addr=None):
    """Make -H the swarm's manager and label it the db node (idempotent)."""
    try:
        print(cluster.init(runner(c), advertise_addr))
    except (cluster.ClusterError, CommandFailed, BuilderError) as exc:
        _fail(exc)


@task(
    auto_shortflags=False,
    help={
        "node": "the node to join, as user@host[:port] for SSH",
        "role": ROLE_HELP + " (default web)",
        "advertise-addr": "the node's own address the others reach (its private IP)",
    },
)
def cluster_join(c, node=None, role="web", advertise_addr=None):
    """Join a node (over SSH, with the same key and user as -H) and label it."""
    if not node:
        raise Exit("give the node: --node user@host[:port]", 2)
    other = Connection(node, config=c.config, connect_kwargs=dict(c.connect_kwargs or {}))
    try:
        print(cluster.join_node(runner(c), ContextRunner(other, where=node), role, advertise_addr))
    except (cluster.ClusterError, CommandFailed, BuilderError) as exc:
        _fail(exc)
    finally:
        other.close()


@task(
    auto_shortflags=False,
    help={"node": "the node's hostname or id (fab cluster-status lists them)", "role": ROLE_HELP},
)
def cluster_label(c, node=None, role=None):
    """Label a node with its role; services are placed by that label."""
    if not node or not role:
        raise Exit("give --node NAME and --role web|db", 2)
    try:
        print(cluster.label_node(runner(c), node, role))
    except (CommandFailed, BuilderError) as exc:
        _fail(exc)


@task(auto_shortflags=False)
def cluster_status(c):
    """Nodes and their roles, the stack's services and replicas, the tasks on each node."""
    try:
        ok, text = cluster.status(runner(c))
    except (cluster.ClusterError, CommandFailed) as exc:
        _fail(exc)
    print(text)
    if not ok:
        raise Exit("not every node is ready or not every task runs (see above)", 1)


@task(
    auto_shortflags=False,
    help={
        "no-encrypt": "a plain overlay network, where the kernel lacks IPsec's AES-GCM "
        "(docs/cluster.md); the default encrypts traffic between nodes",
        "no-resolve-image": RESOLVE_HELP,
        "prod-image": "django_prod's image (default: what it runs; the first time "
        "APP_IMAGE:APP_TAG_PRODUCTION of the env file)",
        "staging-image": "django_staging's image (likewise)",
        "prod-path": PATH_HELP + " (production)",
        "staging-path": PATH_HELP + " (staging)",
        "dry-run": "create nothing; print the filled stack file",
    },
)
def cluster_up(
    c,
    no_encrypt=False,
    no_resolve_image=False,
    prod_image=None,
    staging_image=None,
    prod_path=None,
    staging_path=None,
    dry_run=False,
):
    """Bring the stack up or up to date: secrets from the env files, docker stack deploy."""
    images = {
        k: v for k, v in (("django_prod", prod_image), ("django_staging", staging_image)) if v
    }
    try:
        text = cluster.up(
            runner(c),
            cluster.Sources.from_checkout(),
            paths=_paths(prod_path, staging_path),
            images=images,
            encrypt=not no_encrypt,
            resolve_image=not no_resolve_image,
            dry_run=dry_run,
        )
    except (cluster.ClusterError, CommandFailed, BuilderError, ValueError) as exc:
        _fail(exc)
    if dry_run:
        print(text)


def _deploy(c, plan: cluster.Plan) -> None:
    # the one pre-deploy backup path: the server's scripts/backup.sh, on the database node,
    # which runs no Django container to find the uploads through
    backup = functools.partial(predeploy_backup, media=False)
    outcome = cluster.Deployer(runner(c), plan, backup=backup).run()
    if not outcome.ok:
        raise Exit(code=outcome.exit_code)


def _plan(env, path, **kwargs) -> cluster.Plan:
    target = environment(env, path)
    try:
        return cluster.Plan(env=target, paths={target.name: path}, **kwargs)
    except (BuilderError, ValueError) as exc:
        raise Exit(str(exc), 2) from None


@task(
    auto_shortflags=False,
    help={
        "env": ENV_HELP,
        "image": "the registry image to roll out (built in CI)",
        "why": "the reason, kept in the lock and the deploy log",
        "skip-backup": "no pre-deploy backup (recorded in the deploy log)",
        "no-resolve-image": RESOLVE_HELP,
        "timeout": "seconds the rolling update may take (default 900)",
        "path": PATH_HELP,
        "dry-run": "print what would run; change nothing",
    },
)
def cluster_deploy(
    c,
    env=None,
    image=None,
    why="",
    skip_backup=False,
    no_resolve_image=False,
    timeout=900,
    path=None,
    dry_run=False,
):
    """Roll an image out: lock, backup, migrate once, start-first health-gated update."""
    _deploy(
        c,
        _plan(
            env,
            path,
            action="deploy",
            image=image,
            why=why,
            skip_backup=skip_backup,
            resolve_image=not no_resolve_image,
            timeout_s=float(timeout),
            dry_run=dry_run,
        ),
    )


@task(
    auto_shortflags=False,
    help={
        "env": ENV_HELP,
        "to": "the image to bring back (default: the one that served before, from the deploy log)",
        "why": "the reason, kept in the lock and the deploy log",
        "no-resolve-image": RESOLVE_HELP,
        "timeout": "seconds the rolling update may take (default 900)",
        "path": PATH_HELP,
        "dry-run": "print what would run; change nothing",
    },
)
def cluster_rollback(
    c, env=None, to=None, why="", no_resolve_image=False, timeout=900, path=None, dry_run=False
):
    """Bring the previous image back through the same rolling, health-gated update."""
    _deploy(
        c,
        _plan(
            env,
            path,
            action="rollback",
            to_image=to,
            why=why,
            resolve_image=not no_resolve_image,
            timeout_s=float(timeout),
            dry_run=dry_run,
        ),
    )


ns = Collection(
    cluster_init,
    cluster_join,
    cluster_label,
    cluster_status,
    cluster_up,
    cluster_deploy,
    cluster_rollback,
)
