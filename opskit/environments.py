"""The one place for the operators' guide's environment names, paths and container names.

Everything that names an environment, a checkout on the server or a container of the
stack takes it from here: settings (which environments exist), the compose targets, the
deploy engine, backups, certificates and health checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime

from opskit.shell import BuilderError

# every environment an env file can name; `local` is a laptop's stack
NAMES = ("local", "staging", "production")
# the two that live on the server, side by side
SERVER_NAMES = ("production", "staging")

NETWORK = "aiia_network"
NGINX = "aiia_nginx"
POSTGRES = "aiia_postgresql"
# every release of both environments is one tag of this repository on the server:
# aiia/app:production-20250101-120000-abc1234
IMAGE_REPO = "aiia/app"
# where nginx reads each environment's upstream server: rendered at the container's start
# (nginx/render.sh), included by nginx/templates/app-site.conf, rewritten by deploys
UPSTREAM_DIR = "/run/nginx/conf/upstreams"

RELEASE_RE = re.compile(r"^\d{8}-\d{6}(-[0-9a-z]{1,12})?$")


def check_release(release: str) -> str:
    if not RELEASE_RE.match(release or ""):
        raise BuilderError(f"{release!r} is not a release id (like 20250101-120000-abc1234)")
    return release


@dataclass(frozen=True)
class Environment:
    """Names and paths of one environment on the server (the operators' guide's)."""

    name: str  # production | staging
    site: str  # nginx site and short name: prod | staging
    service: str  # compose service: django_prod
    container: str  # the guide's container name: aiia_django_prod
    port: int  # APP_PORT: where gunicorn listens inside the network
    path: str  # the checkout on the server
    branch: str  # the branch its workflow deploys

    @property
    def env_file(self) -> str:
        return f"{self.path}/.env"

    @property
    def state_dir(self) -> str:
        return f"{self.path}/.deploy"

    @property
    def lock_dir(self) -> str:
        return f"{self.state_dir}/lock"

    @property
    def build_dir(self) -> str:
        return f"{self.state_dir}/build"

    @property
    def logs_dir(self) -> str:
        return f"{self.path}/logs"

    @property
    def history_file(self) -> str:
        return f"{self.logs_dir}/deploys.log"

    @property
    def upstream_file(self) -> str:
        return f"{UPSTREAM_DIR}/{self.site}.conf"

    def release_container(self, release: str) -> str:
        return f"{self.container}_{check_release(release)}"

    def oneoff_container(self, release: str, what: str) -> str:
        return f"{self.container}_{what}_{check_release(release)}"

    def release_image(self, release: str) -> str:
        return f"{IMAGE_REPO}:{self.name}-{check_release(release)}"

    def transcript(self, started: datetime) -> str:
        """The guide's logs/deploy_<env>_<timestamp>.log."""
        return f"{self.logs_dir}/deploy_{self.name}_{started:%Y%m%d_%H%M%S}.log"


SERVERS = {
    "production": Environment(
        "production",
        "prod",
        "django_prod",
        "aiia_django_prod",
        8000,
        "/home/ubuntu/main/ai-ia-backend",
        "main",
    ),
    "staging": Environment(
        "staging",
        "staging",
        "django_staging",
        "aiia_django_staging",
        8001,
        "/home/ubuntu/staging/ai-ia-backend",
        "staging",
    ),
}


def server(name: str, path: str | None = None, port: int | None = None) -> Environment:
    """A server environment by name, its checkout (and app port) optionally elsewhere."""
    if name not in SERVERS:
        raise BuilderError(f"unknown environment {name!r}: use production or staging")
    env = SERVERS[name]
    if path:
        if not path.startswith("/") or "\n" in path:
            raise BuilderError(f"--path {path!r}: give the checkout's absolute path")
        env = replace(env, path=path.rstrip("/") or "/")
    if port:
        env = replace(env, port=port)
    return env
