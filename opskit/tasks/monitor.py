"""`inv monitor`: a live view through the status collector (opskit/status), the readings
behind the devstatus page and its alerts: the whole box from /proc (Docker's daemons
included), every container (state, health, memory against its limit, CPU, restarts),
/health/ of both environments through nginx, PostgreSQL, PgBouncer and Redis.

It asks the engine over its socket, as the collector does in its cron container; nothing
is kept or sent (the cron job keeps the history and sends the alerts).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from invoke import Collection, Exit, task

from opskit.status import collect as C
from opskit.status.docker_api import Docker, DockerError
from opskit.status.report import alerts, as_dict, render_text
from opskit.tasks._common import ENV_HELP, compose_project, environment, project_root

CLEAR = "\x1b[H\x1b[2J"
LOCAL_PROJECT = "aiia_local"
# seams for the unit tests: the engine and /proc they read
PROC = Path("/proc")


def make_docker(socket_path: str) -> Docker:
    return Docker(socket_path)


def options(env: str, prefix: str, nginx: str, socket_path: str) -> C.Options:
    host, _, port = nginx.rpartition(":")
    if not host or not port.isdigit():
        raise Exit(f"--nginx {nginx!r}: give HOST:PORT, e.g. 127.0.0.1:443", code=2)
    if env == "local":
        # the local stack: no nginx, compose's own container names
        project = compose_project() or LOCAL_PROJECT
        services = {k: f"{project}-{k}-1" for k in ("postgresql", "redis")}
        domains: dict[str, str] = {}
    else:
        services, domains = dict(C.SERVICES), dict(C.DOMAINS)
    return C.Options(db=Path(":memory:"), prefix=prefix, nginx_host=host, nginx_port=int(port),
                     domains=domains, services=services, proc=PROC, docker_socket=socket_path,
                     log_lines=0)  # fmt: skip


@task(
    help={
        "env": ENV_HELP + "; local: the local stack's PostgreSQL and Redis, no /health/",
        "once": "print one snapshot and exit (1 when past a threshold), for scripts",
        "interval": "seconds between refreshes (default 5)",
        "prefix": "only containers whose name starts with this (default: aiia_)",
        "json": "with --once: the snapshot as JSON",
        "nginx": "nginx's TLS port on this machine, HOST:PORT (default 127.0.0.1:443)",
        "docker-socket": "the engine's socket (default /var/run/docker.sock)",
    }
)
def monitor(c, env=None, once=False, interval=5.0, prefix="aiia_", json_=False,
            nginx="127.0.0.1:443", docker_socket="/var/run/docker.sock"):  # fmt: skip
    """Live view of the box and every container through the status collector, alerts marked."""
    opts = options(environment(env, project_root()), prefix, nginx, docker_socket)
    docker = make_docker(docker_socket)
    try:
        docker.info()
    except DockerError as exc:
        raise Exit(
            f"monitor: the Docker engine does not answer ({exc}); start it "
            "(systemctl start docker, or ./scripts/ensure.sh dev) and run again",
            code=2,
        ) from None
    state: dict = {}
    C.prime(opts, state, docker)  # CPU is a share of the time between two readings
    if once:
        time.sleep(min(interval, 1.0))
        snap = C.collect(opts, state, time.time(), docker)
        print(json.dumps(as_dict(snap), indent=2) if json_ else render_text(snap))
        found = alerts(snap)
        if found:
            raise Exit(f"monitor: past a threshold: {'; '.join(found)}", code=1)
        return
    try:
        while True:
            time.sleep(interval)
            snap = C.collect(opts, state, time.time(), docker)
            print(CLEAR + render_text(snap), flush=True)
            print(f"\nrefreshing every {interval:g}s; Ctrl-C to stop", flush=True)
    except KeyboardInterrupt:
        print()


ns = Collection(monitor)
