"""Docker Swarm's commands as argv lists, and parsers for what they answer.

Builders run nothing; each returns the argv a Runner sends. Parsers take saved output
(tests/fixtures/swarm/) and return data.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass

from opskit.commands.deploy import BuilderError, check_image
from opskit.shell import sh
from opskit.swarm.stack import ROLE_LABEL, STACK

ROLES = ("web", "db")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ADDR = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,255}$")


def check_name(value: str, what: str = "node") -> str:
    if not _NAME.match(value or ""):
        raise BuilderError(f"{what} {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def check_addr(value: str) -> str:
    if not _ADDR.match(value or ""):
        raise BuilderError(f"address {value!r}: give an IP address or host name")
    return value


def check_role(role: str) -> str:
    if role not in ROLES:
        raise BuilderError(f"role {role!r}: use web (nginx and Django) or db (PostgreSQL)")
    return role


def service(name: str) -> str:
    """The swarm's name of a stack service: aiia_django_prod."""
    return f"{STACK}_{check_name(name, 'service')}"


# --- the swarm itself ------------------------------------------------------------------


def swarm_state() -> list[str]:
    """`inactive`, `active` (and `true`/`false`: is this node a manager), or an error."""
    return ["docker", "info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]


def swarm_init(advertise_addr: str | None = None) -> list[str]:
    argv = ["docker", "swarm", "init"]
    if advertise_addr:
        argv += ["--advertise-addr", check_addr(advertise_addr)]
    return argv


def manager_addr() -> list[str]:
    return ["docker", "info", "--format", "{{.Swarm.NodeAddr}}"]


def join_token(role: str = "worker") -> list[str]:
    if role not in ("worker", "manager"):
        raise BuilderError(f"join token role {role!r}: worker or manager")
    return ["docker", "swarm", "join-token", "--quiet", role]


# the token arrives on stdin: never in the command line ssh carries or a log shows (the
# docker CLI on the node holds it in its argv for the moment the join takes)
JOIN = r"""set -eu
IFS= read -r token
exec docker swarm join --token "$token" "$@"
"""


def swarm_join(manager: str, advertise_addr: str | None = None) -> list[str]:
    addr = check_addr(manager)
    target = addr if re.search(r":\d+$", addr) else f"{addr}:2377"
    extra = ["--advertise-addr", check_addr(advertise_addr)] if advertise_addr else []
    return sh(JOIN, *extra, target)


def node_self() -> list[str]:
    return ["docker", "info", "--format", "{{.Swarm.NodeID}}"]


def label(node: str, role: str) -> list[str]:
    return [
        "docker", "node", "update", "--label-add", f"{ROLE_LABEL}={check_role(role)}",
        check_name(node),
    ]  # fmt: skip


def nodes() -> list[str]:
    return ["docker", "node", "ls", "--format", "{{json .}}"]


def node_inspect(*names: str) -> list[str]:
    return ["docker", "node", "inspect", *[check_name(n) for n in names]]


def services() -> list[str]:
    return [
        "docker", "service", "ls", "--filter", f"label=com.docker.stack.namespace={STACK}",
        "--format", "{{json .}}",
    ]  # fmt: skip


def stack_tasks() -> list[str]:
    """Every task of the stack the swarm wants running, with the node it runs on."""
    return [
        "docker", "stack", "ps", STACK, "--filter", "desired-state=running",
        "--no-trunc", "--format", "{{json .}}",
    ]  # fmt: skip


def service_tasks(name: str) -> list[str]:
    return [
        "docker", "service", "ps", service(name), "--filter", "desired-state=running",
        "--no-trunc", "--format", "{{json .}}",
    ]  # fmt: skip


def service_inspect(name: str) -> list[str]:
    return ["docker", "service", "inspect", service(name)]


def stack_deploy(resolve_image: bool = True) -> list[str]:
    """`docker stack deploy` with the finished stack file on stdin."""
    return [
        "docker", "stack", "deploy", "--compose-file", "-", "--prune",
        "--with-registry-auth", "--resolve-image", "always" if resolve_image else "never",
        STACK,
    ]  # fmt: skip


# secrets and configs: the content on stdin, never in argv
def secret_create(name: str, label: str) -> list[str]:
    tag = f"{ROLE_LABEL}.secret={check_name(label, 'label')}"
    return ["docker", "secret", "create", "--label", tag, check_name(name, "secret"), "-"]


def config_create(name: str, label: str) -> list[str]:
    tag = f"{ROLE_LABEL}.config={check_name(label, 'label')}"
    return ["docker", "config", "create", "--label", tag, check_name(name, "config"), "-"]


def exists(kind: str, name: str) -> list[str]:
    if kind not in ("secret", "config"):
        raise BuilderError(f"{kind!r}: secret or config")
    return ["docker", kind, "inspect", "--format", "{{.ID}}", check_name(name, kind)]


def unused(kind: str) -> list[str]:
    """Remove the stack's secrets or configs no service uses (Swarm refuses used ones)."""
    if kind not in ("secret", "config"):
        raise BuilderError(f"{kind!r}: secret or config")
    script = (
        'docker "$1" ls --filter "label=$2" --format "{{.Name}}" | while read -r n; do '
        'docker "$1" rm "$n" >/dev/null 2>&1 && echo "$n"; done; true'
    )
    return sh(script, kind, f"{ROLE_LABEL}.{kind}")


def update_image(name: str, image: str, *, resolve_image: bool = True) -> list[str]:
    """The rolling update: start-first, one task at a time, rolled back by the swarm when a
    new task fails its health check (the stack sets the same; said again so a service
    changed by hand still updates safely)."""
    argv = [
        "docker", "service", "update", "--detach=true", "--with-registry-auth",
        "--update-order", "start-first", "--update-parallelism", "1",
        "--update-failure-action", "rollback", "--update-monitor", "30s",
        "--update-max-failure-ratio", "0",
        "--rollback-order", "start-first", "--rollback-parallelism", "1",
        "--image", check_image(image),
    ]  # fmt: skip
    if not resolve_image:
        argv.append("--no-resolve-image")
    return [*argv, service(name)]


def image_present(image: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{.Id}}", check_image(image)]


def pull(image: str) -> list[str]:
    return ["docker", "pull", "--quiet", check_image(image)]


# --- parsers -------------------------------------------------------------------------


def _json_lines(text: str) -> list[dict]:
    """`--format '{{json .}}'` output: one JSON object a line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _fields(row: dict, keys: dict[str, str]) -> dict[str, str]:
    """field -> the value of its docker key in `row` ("" where docker left it out)."""
    return {field: row.get(key, "") for field, key in keys.items()}


@dataclass(frozen=True)
class Node:
    id: str
    hostname: str
    status: str  # Ready | Down
    availability: str  # Active | Pause | Drain
    manager: str  # Leader | Reachable | ""
    self: bool


# Node's text fields and the keys of `docker node ls --format '{{json .}}'` they come from
NODE_KEYS = {
    "id": "ID",
    "hostname": "Hostname",
    "status": "Status",
    "availability": "Availability",
    "manager": "ManagerStatus",
}


def parse_nodes(text: str) -> list[Node]:
    return [Node(**_fields(d, NODE_KEYS), self=bool(d.get("Self"))) for d in _json_lines(text)]


def parse_roles(text: str) -> dict[str, str]:
    """node hostname -> its aiia.role label, from `docker node inspect` JSON."""
    out = {}
    for node in json.loads(text or "[]"):
        host = (node.get("Description") or {}).get("Hostname", "")
        labels = (node.get("Spec") or {}).get("Labels") or {}
        out[host] = labels.get(ROLE_LABEL, "")
    return out


@dataclass(frozen=True)
class Task:
    name: str  # aiia_django_prod.1
    image: str
    node: str
    desired: str
    current: str  # "Running 2 minutes ago"
    error: str

    @property
    def service(self) -> str:
        return self.name.split(".")[0]

    @property
    def running(self) -> bool:
        return self.current.startswith("Running")


# Task's fields and the keys of `docker stack ps` or `docker service ps` JSON they come from
TASK_KEYS = {
    "name": "Name",
    "image": "Image",
    "node": "Node",
    "desired": "DesiredState",
    "current": "CurrentState",
    "error": "Error",
}


def parse_tasks(text: str) -> list[Task]:
    return [Task(**_fields(d, TASK_KEYS)) for d in _json_lines(text)]


def tasks_per_node(tasks: list[Task]) -> dict[str, list[Task]]:
    by: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by[t.node or "(unassigned)"].append(t)
    return dict(sorted(by.items()))


@dataclass(frozen=True)
class ServiceState:
    image: str  # without a resolved digest
    previous_image: str
    update_state: str  # "" | updating | completed | paused | rollback_started | rollback_completed
    update_message: str


def strip_digest(image: str) -> str:
    return image.split("@", 1)[0]


def parse_service(text: str) -> ServiceState:
    data = json.loads(text)[0]
    spec = ((data.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    prev = ((data.get("PreviousSpec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
    status = data.get("UpdateStatus") or {}
    return ServiceState(
        image=strip_digest(spec.get("Image", "")),
        previous_image=strip_digest(prev.get("Image", "")),
        update_state=status.get("State", ""),
        update_message=status.get("Message", ""),
    )


UPDATE_DONE = ("completed",)
UPDATE_ROLLED_BACK = ("rollback_completed",)
UPDATE_STUCK = ("paused", "rollback_paused")
