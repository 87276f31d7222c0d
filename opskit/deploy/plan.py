"""What a deploy is asked to do (Plan), what it found out on the way (State), how it ended."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from opskit import environments
from opskit import settings as settings_mod
from opskit.commands import deploy as cmd
from opskit.deploy import history
from opskit.runner import Runner
from opskit.shell import Secret

EXIT_FAILED = 1
EXIT_LOCKED = 75


class DeployError(Exception):
    """A step failed: `reason` is one line for the log; `detail` is shown under it."""

    def __init__(self, reason: str, detail: str = "", hint: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.hint = hint


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C: clean up like any failure before the switch."""


BackupHook = Callable[[Runner, cmd.Environment, settings_mod.Settings], str]


@dataclass
class Plan:
    """What to deploy where, and how carefully."""

    env: cmd.Environment
    action: str = "deploy"  # deploy | rollback
    ref: str | None = None
    image: str | None = None
    to_release: str | None = None  # rollback target
    why: str = ""
    who: str = ""
    health_attempts: int = 30
    health_interval_s: float = 2.0
    health_timeout_s: int = 5
    drain_timeout_s: float = 30.0
    stop_timeout_s: int = 30
    keep_releases: int = 3
    min_disk_mb: int = 1000
    min_memory_mb: int | None = None  # default: the app container's memory limit
    skip_backup: bool = False
    extra_ca: str | None = None  # a CA bundle on the server for builds behind a proxy
    # the server's compose file, when the serving container does not name it (compose
    # records its files and project on every container it creates; deploys copy them)
    stack_file: str | None = None
    stack_dir: str | None = None  # its project directory
    holder_pid: int | None = None  # set when the engine runs on the server itself
    webhook: Secret | None = None  # overrides SLACK_WEBHOOK_URL of the env file
    transcript: bool = True  # write logs/deploy_<env>_<ts>.log on the server
    server: str = ""  # how to name the server in messages
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.action not in ("deploy", "rollback"):
            raise ValueError(f"unknown action {self.action!r}")
        if self.ref and self.image:
            raise cmd.BuilderError("give --ref or --image, not both")
        if self.image:
            cmd.check_image(self.image)
        if self.ref:
            cmd.check_ref(self.ref)
        if self.to_release:
            cmd.check_release(self.to_release)
        if self.health_attempts < 1 or self.health_interval_s < 0:
            raise cmd.BuilderError("health attempts must be 1 or more, the interval 0 or more")
        if not self.who:
            self.who = operator()
        if self.stack_file is None:
            self.stack_file = f"{default_stack_dir()}/docker-compose.yml"
        if self.stack_dir is None:
            self.stack_dir = os.path.dirname(self.stack_file) or "/"

    @property
    def what(self) -> str:
        if self.action == "rollback":
            return f"release {self.to_release or '(previous)'}"
        if self.image:
            return f"image {self.image}"
        return f"ref {self.ref or self.env.branch}"


def default_stack_dir() -> str:
    """The stack runs from the production checkout (both environments share it)."""
    return environments.SERVERS["production"].path


def operator() -> str:
    """Who is deploying: the CI run, or user@machine."""
    actor = os.environ.get("GITHUB_ACTOR")
    if actor and os.environ.get("GITHUB_RUN_ID"):
        repo = os.environ.get("GITHUB_REPOSITORY", "")
        return f"{actor} (github actions {repo} run {os.environ['GITHUB_RUN_ID']})"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class Outcome:
    ok: bool
    exit_code: int
    release: str = ""
    reason: str = ""
    entry: history.Entry | None = None
    lines: list[str] = field(default_factory=list)


@dataclass
class State:
    started: datetime
    t0: float
    settings: settings_mod.Settings | None = None
    spec: cmd.ServiceSpec | None = None
    port: int = 0
    release: str = ""
    image: str = ""  # the release's local tag
    source: str = ""
    commit: str = ""
    digest: str = ""  # the image by digest, for --image deploys
    checkout_before: str = ""  # the checkout's commit when the deploy started
    version: str = ""
    served: str = ""  # the container nginx sends traffic to when we started
    served_release: str = ""
    served_labels: dict = field(default_factory=dict)
    image_id: str = ""
    upstream_before: str = ""
    new_container: str = ""
    plan_before: cmd.MigrationPlan | None = None
    applied: list[str] = field(default_factory=list)
    switched: bool = False
    backup: str = ""
    build_dir: str = ""
    warnings: list[str] = field(default_factory=list)
    shown_warnings: list[str] = field(default_factory=list)
    locked: bool = False
