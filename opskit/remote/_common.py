"""What every fab task shares: the connection check, the environment, exit handling."""

from __future__ import annotations

import os

from invoke import Exit

from opskit.commands import deploy as cmd
from opskit.runner import ContextRunner
from opskit.shell import Secret

ENV_HELP = "production or staging"
PATH_HELP = "the environment's checkout on the server (default: the guide's path)"
STACK_HELP = "the server's compose file (default: compose/server.yml of the production checkout)"


def runner(c) -> ContextRunner:
    """The SSH connection `fab -H HOST` gave this task, as a Runner."""
    if not getattr(c, "host", None):
        raise Exit("give the server with -H, e.g. fab -H ubuntu@your.server.ip deploy ...", 2)
    return ContextRunner(c, where=f"{c.user}@{c.host}" + (f":{c.port}" if c.port != 22 else ""))


def environment(env: str | None, path: str | None = None) -> cmd.Environment:
    if not env:
        raise Exit("say which environment: --env production or --env staging", 2)
    try:
        return cmd.environment(env, path)
    except cmd.BuilderError as exc:
        raise Exit(str(exc), 2) from None


def host_arg(c) -> str:
    """How to name this server in a command the operator can paste."""
    port = f":{c.port}" if getattr(c, "port", 22) != 22 else ""
    return f"{c.user}@{c.host}{port}"


def webhook() -> Secret | None:
    """SLACK_WEBHOOK_URL of the operator's (or CI's) environment, over the env file's."""
    value = os.environ.get("SLACK_WEBHOOK_URL", "").strip()
    return Secret(value) if value else None
