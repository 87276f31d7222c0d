"""compose/stack.yml, the Swarm stack, generated from compose/server.yml (one source).

    python -m opskit.swarm.stack            # rewrite compose/stack.yml
    python -m opskit.swarm.stack --check    # exit 1 when it differs from what server.yml gives

What is taken from server.yml as it is: images, users, capabilities, read-only roots,
health checks, stop signals and grace periods, volumes, logging, the memory limits (as
deploy.resources.limits) and each service's environment, which becomes a Swarm secret
(never plain environment in the stack file). What the cluster adds is fixed here:
placement by node label, replicas, start-first rolling updates with automatic rollback,
`endpoint_mode: dnsrr`, host-mode ports and the encrypted overlay network.

Debian's CLI 20.10 `docker stack deploy` refuses mem_limit, memswap_limit, depends_on
with conditions, a top-level name: and a file without version:; it ignores
container_name, restart, security_opt, build and the short tmpfs syntax: none of them is
written here (tmpfs mounts become long-syntax volumes). It takes variables only from its
own process environment, so the deploy (opskit.swarm.cluster) fills every ${...} itself
from the production env file and sends the finished file on stdin.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

from opskit import appenv

ROOT = Path(__file__).resolve().parents[2]
SERVER_FILE = "compose/server.yml"
STACK_FILE = "compose/stack.yml"
NGINX_SITE_TEMPLATE = "nginx/templates/app-site.conf"

STACK = "aiia"  # `docker stack deploy ... aiia`: services are aiia_<name>
NETWORK = "aiia_network"
ROLE_LABEL = "aiia.role"  # docker node update --label-add aiia.role=web|db NODE
WEB, DB = "web", "db"

# where each service runs and how many. nginx and production run once on every web node:
# a web node that fails takes one of each with it and the others keep answering (a
# replicated service may have every task on one node after an update: start-first puts
# the new task wherever the scheduler likes). Staging's one task is started again on
# another web node when its node fails.
PLACEMENT = {
    "nginx": WEB,
    "django_prod": WEB,
    "django_staging": WEB,
    "postgresql": DB,
    "pgbouncer": DB,
    "redis": DB,
}
REPLICAS = {"django_staging": 1, "postgresql": 1, "pgbouncer": 1, "redis": 1}
GLOBAL = ("nginx", "django_prod")
# rolling updates start the new task first and switch when its health check passes; the
# data services must never run twice on one volume, and nginx's host ports can be bound
# by one task per node only: those stop first
START_FIRST = ("django_prod", "django_staging")

# the image's own health check (compose/app/Dockerfile), probed every 5 s instead of 30
APP_HEALTH_INTERVAL = "5s"
APP_SERVICES = ("django_prod", "django_staging")

SECRET_TARGET = "aiia.env"  # noqa: S105 - /run/secrets/aiia.env: the service's environment, mode 0400
SECRET_PATH = f"/run/secrets/{SECRET_TARGET}"
# read before the image's own entrypoint: `set -a` exports what the file assigns
SOURCE_ENV = f"set -a; . {SECRET_PATH}; set +a; "
NGINX_SITE_TARGET = "/etc/nginx/aiia/templates/app-site.conf"

# the variables a deploy fills: the versioned names of each secret and config
SECRET_VAR = "AIIA_SECRET_{}"  # noqa: S105 - a variable name
CONFIG_VAR = "AIIA_CONFIG_NGINX_SITE"
NEEDS_UP = "run fab cluster-up, which creates the secrets and configs"

# inside 172.16.0.0/12 (postgres/pg_hba.conf); the top of it, away from the bridge
# networks Docker hands out from 172.17.0.0/16 upwards
OVERLAY_SUBNET = "172.31.254.0/24"

# Swarm's embedded DNS server, inside every container on an overlay network
SWARM_DNS = "127.0.0.11"

HEADER = """\
# GENERATED from compose/server.yml by `python -m opskit.swarm.stack`: do not edit by hand
# (tests/unit/test_swarm_stack.py fails when this file and server.yml disagree).
#
# The server stack on Docker Swarm (docs/cluster.md): nodes labelled aiia.role=web run
# nginx (ports 80/443 on each node) and Django replicas of production and staging; the
# node labelled aiia.role=db runs PostgreSQL (with its volume), PgBouncer and Redis.
# Each service's environment is a Swarm secret at /run/secrets/aiia.env. Deploy it with
#   fab -H MANAGER cluster-up        (fills the ${...} below and runs docker stack deploy)
"""


class StackError(ValueError):
    """server.yml, an env file or a template says something the stack cannot take."""


# --- interpolation, as docker compose does it -------------------------------------------

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, variables: Mapping[str, str], *, keep_escapes: bool = False) -> str:
    """Fill ${VAR}, ${VAR:-default}, ${VAR:?message} and $VAR; `$$` is a literal `$`.

    keep_escapes leaves `$$` as it is, for text that another compose reader reads again.
    """

    def one(m: re.Match) -> str:
        if m.group("escaped"):
            return "$$" if keep_escapes else "$"
        name = m.group("braced") or m.group("named")
        value = variables.get(name)
        op, arg = m.group("op"), m.group("arg") or ""
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-") and unset:
            return interpolate(arg, variables, keep_escapes=keep_escapes)
        if op in (":?", "?") and unset:
            raise StackError(f"{name}: {arg or 'is required'}")
        return "" if value is None else value

    return _VAR.sub(one, text)


def _walk(value, fn):
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_walk(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _walk(v, fn) for k, v in value.items()}
    return value


def fill(stack_text: str, variables: Mapping[str, str]) -> str:
    """The stack file with every ${...} filled; `$$` stays for `docker stack deploy`."""
    data = yaml.safe_load(stack_text)
    done = _walk(data, lambda s: interpolate(s, variables, keep_escapes=True))
    return yaml.safe_dump(done, sort_keys=False, default_flow_style=False, width=1000)


# --- the image's own process, from its Dockerfile ---------------------------------------


def dockerfile_stage(text: str, target: str | None = None) -> dict:
    """ENTRYPOINT, CMD and HEALTHCHECK of the target stage (default: the last), with
    what it inherits from the stage it is built FROM."""
    stages: list[tuple[str, str, dict]] = []  # (name, base, {"ENTRYPOINT": [...], ...})
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            stages.append((name, parts[0], {}))
        elif word == "HEALTHCHECK" and stages:
            options, _, test = rest.partition(" CMD ")
            flags = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
            try:
                stages[-1][2]["HEALTHCHECK"] = (flags, json.loads(test))
            except ValueError:
                raise StackError(f"HEALTHCHECK {rest!r}: use the JSON (exec) form") from None
        elif word in ("ENTRYPOINT", "CMD") and stages:
            try:
                value = json.loads(rest)
            except ValueError:
                raise StackError(f"{word} {rest!r}: use the JSON (exec) form") from None
            stages[-1][2][word] = value
            if word == "ENTRYPOINT":  # a new ENTRYPOINT drops an inherited CMD
                stages[-1][2].setdefault("CMD", [])
    by_name = {name: (base, found) for name, base, found in stages if name}
    if not stages:
        raise StackError("no FROM line")
    if target is None:
        base, found = stages[-1][1], stages[-1][2]
    elif target in by_name:
        base, found = by_name[target]
    else:
        raise StackError(f"no stage named {target!r}")
    result = dict(found)
    # what a stage does not set it inherits from the stage it is built FROM
    while base in by_name:
        base, parent = by_name[base]
        for key in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
            if key not in result and key in parent:
                result[key] = parent[key]
    return result


def dockerfile_process(text: str, target: str | None = None) -> tuple[list[str], list[str]]:
    """(ENTRYPOINT, CMD) of the target stage."""
    found = dockerfile_stage(text, target)
    return list(found.get("ENTRYPOINT") or []), list(found.get("CMD") or [])


def _build(service: Mapping) -> tuple[str, str | None]:
    build = service.get("build")
    if isinstance(build, str):
        return f"{build}/Dockerfile", None
    if not isinstance(build, dict):
        raise StackError("no build: section to read the image's entrypoint from")
    context = build.get("context", ".").rstrip("/")
    dockerfile = build.get("dockerfile", "Dockerfile")
    return f"{context}/{dockerfile}", build.get("target")


# --- the stack ------------------------------------------------------------------------


def _tmpfs(entry: str) -> dict | str:
    target, _, options = entry.partition(":")
    keys = dict(o.partition("=")[::2] for o in filter(None, options.split(",")))
    if "uid" in keys or "gid" in keys:
        # a Swarm tmpfs mount has no owner (compose v3.9 long syntax: size only) and over
        # a folder of the image it is root's, with that folder's mode: the service's user
        # could not write it. An anonymous volume starts as a copy of the image's folder,
        # owner included, and is new with every task (a task never reuses a container),
        # so no stale pid or lock file survives a restart
        return target
    mount: dict = {"type": "tmpfs", "target": target}
    if "size" in keys:
        mount["tmpfs"] = {"size": _bytes(keys["size"])}
    return mount


def _bytes(value: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", value.strip().lower())
    if not m:
        raise StackError(f"tmpfs size {value!r}: expected a number with k, m or g")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


def _ports(ports: list) -> list[dict]:
    out = []
    for port in ports:
        text = str(port)
        published, _, target = text.rpartition(":")
        default = re.search(r":-(\d+)\}", published)
        if not default and not published.isdigit():
            raise StackError(f"port {text!r}: give the published port a default")
        out.append(
            {
                "target": int(target),
                "published": int(default.group(1) if default else published),
                "protocol": "tcp",
                # every web node binds the port itself; Swarm's routing mesh (ingress)
                # needs IPVS, which docs/cluster.md says when to use
                "mode": "host",
            }
        )
    return out


def _process(name: str, service: Mapping, root: Path) -> dict:
    """entrypoint/command that source the secret, then run what the image would run."""
    given = service.get("entrypoint")
    if given:
        if not (isinstance(given, list) and given[:2] == ["/bin/sh", "-c"] and len(given) >= 3):
            raise StackError(f"{name}: an entrypoint override must be [/bin/sh, -c, SCRIPT, ...]")
        out = {"entrypoint": ["/bin/sh", "-c", SOURCE_ENV + given[2], *given[3:]]}
        if service.get("command"):
            out["command"] = list(service["command"])
        return out
    path, target = _build(service)
    entrypoint, cmd = dockerfile_process((root / path).read_text(), target)
    out = {"entrypoint": ["/bin/sh", "-c", SOURCE_ENV + 'exec "$$@"', "sh", *entrypoint]}
    command = service.get("command") or cmd
    if command:
        out["command"] = list(command)
    return out


def _healthcheck(name: str, service: Mapping, root: Path) -> dict:
    """server.yml's health check, else the image's: run with the service's environment.

    A health check runs through `docker exec`, which gets the container's environment,
    not what its entrypoint read from the secret: the test sources the secret first
    (redis-healthcheck needs the admin password, the app's its APP_PORT).
    """
    if "healthcheck" in service:
        check = copy.deepcopy(service["healthcheck"])
    else:
        path, target = _build(service)
        found = dockerfile_stage((root / path).read_text(), target).get("HEALTHCHECK")
        if not found:
            raise StackError(f"{name}: no health check in server.yml or {path}")
        flags, test = found
        check = {"test": ["CMD", *test]}
        for flag, key in (
            ("interval", "interval"),
            ("timeout", "timeout"),
            ("start-period", "start_period"),
            ("retries", "retries"),
        ):
            if flag in flags:
                check[key] = int(flags[flag]) if key == "retries" else flags[flag]
        if name in APP_SERVICES:
            # a start-first update waits for the new task's first passing probe
            check["interval"] = APP_HEALTH_INTERVAL
    test = check["test"]
    if test[0] == "CMD":
        check["test"] = ["CMD", "/bin/sh", "-c", SOURCE_ENV + 'exec "$$@"', "sh", *test[1:]]
    elif test[0] == "CMD-SHELL":
        check["test"] = ["CMD-SHELL", SOURCE_ENV + test[1]]
    return check


def _deploy(name: str, service: Mapping) -> dict:
    deploy: dict = {}
    if name in GLOBAL:
        deploy["mode"] = "global"
    else:
        deploy["replicas"] = REPLICAS[name]
    # no IPVS on some kernels (and no virtual IP to go stale): clients resolve the tasks
    deploy["endpoint_mode"] = "dnsrr"
    deploy["placement"] = {"constraints": [f"node.labels.{ROLE_LABEL} == {PLACEMENT[name]}"]}
    if "mem_limit" in service:
        deploy["resources"] = {"limits": {"memory": str(service["mem_limit"])}}
    order = "start-first" if name in START_FIRST else "stop-first"
    deploy["update_config"] = {
        "parallelism": 1,
        "order": order,
        # a task that fails its health check within the monitor window fails the update,
        # and Swarm puts the previous spec back by itself
        "failure_action": "rollback",
        "monitor": "30s",
        "max_failure_ratio": 0,
    }
    deploy["rollback_config"] = {"parallelism": 1, "order": order, "failure_action": "pause"}
    deploy["restart_policy"] = {"condition": "any", "delay": "5s"}
    return deploy


def generate(server: Mapping, root: Path = ROOT) -> dict:
    services: dict = {}
    for name, src in server["services"].items():
        if "tools" in (src.get("profiles") or []):
            continue
        if name not in PLACEMENT:
            raise StackError(f"{name}: a new service of server.yml needs a place in the stack")
        svc: dict = {"image": src["image"]}
        svc.update(_process(name, src, root))
        for key in ("user", "cap_drop", "cap_add", "read_only", "stop_signal"):
            if key in src:
                svc[key] = copy.deepcopy(src[key])
        if "stop_grace_period" in src:
            svc["stop_grace_period"] = src["stop_grace_period"]
        svc["healthcheck"] = _healthcheck(name, src, root)
        if "ports" in src:
            svc["ports"] = _ports(src["ports"])
        volumes = list(copy.deepcopy(src.get("volumes") or []))
        volumes += [_tmpfs(t) for t in src.get("tmpfs") or []]
        if volumes:
            svc["volumes"] = volumes
        uid = str(src.get("user", "0:0")).split(":")[0]
        svc["secrets"] = [
            {
                "source": f"{name}_env",
                "target": SECRET_TARGET,
                "uid": uid,
                "gid": uid,
                "mode": 0o400,
            }
        ]
        if name == "nginx":
            svc["configs"] = [{"source": "nginx_site", "target": NGINX_SITE_TARGET, "mode": 0o444}]
        svc["networks"] = [NETWORK]
        if "logging" in src:
            svc["logging"] = copy.deepcopy(src["logging"])
        svc["deploy"] = _deploy(name, src)
        services[name] = svc
    volumes = {name: None for name in server.get("volumes") or {}}
    used = {
        v.split(":")[0]
        for s in services.values()
        for v in s.get("volumes", [])
        if isinstance(v, str)
    }
    return {
        "version": "3.9",
        "services": services,
        "networks": {
            NETWORK: {
                "name": NETWORK,
                "driver": "overlay",
                # one-off containers (migrations, backups) join it from the manager
                "attachable": True,
                # IPsec between nodes; `fab cluster-up --no-encrypt` leaves it out where
                # the kernel lacks the ESP ciphers (docs/cluster.md)
                "driver_opts": {"encrypted": ""},
                # postgres/pg_hba.conf admits the private ranges Docker's bridges use
                # (172.16.0.0/12, 192.168.0.0/16), not Swarm's default 10.0.0.0/8
                "ipam": {"config": [{"subnet": OVERLAY_SUBNET}]},
            }
        },
        "volumes": {k: v for k, v in volumes.items() if k in used},
        "secrets": {
            f"{name}_env": {
                "external": True,
                "name": "${" + SECRET_VAR.format(name.upper()) + ":?" + NEEDS_UP + "}",
            }
            for name in services
        },
        "configs": {
            "nginx_site": {
                "external": True,
                "name": "${" + CONFIG_VAR + ":?" + NEEDS_UP + "}",
            }
        },
    }


def render(stack: Mapping) -> str:
    body = yaml.safe_dump(dict(stack), sort_keys=False, default_flow_style=False, width=1000)
    # `volumes: {pgdata: null}` reads better as `pgdata:`
    body = re.sub(r": null$", ":", body, flags=re.M)
    return HEADER + body


def load_server(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / SERVER_FILE).read_text())


def expected(root: Path = ROOT) -> str:
    return render(generate(load_server(root), root))


# --- what a deploy sends: each service's environment, the nginx site -----------------


def _rendered_app_env(entry) -> appenv.Service | None:
    path = entry["path"] if isinstance(entry, dict) else str(entry)
    return next((s for s in appenv.SERVER if s.path == path), None)


def _env_file_var(entry) -> str:
    path = entry["path"] if isinstance(entry, dict) else str(entry)
    m = re.search(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", path)
    if not m:
        raise StackError(f"env_file {path!r}: name it by a variable, e.g. ${{PRODUCTION_ENV_FILE}}")
    return m.group(1)


def service_environment(
    server: Mapping,
    name: str,
    env_files: Mapping[str, Mapping[str, str]],
    variables: Mapping[str, str],
) -> dict[str, str]:
    """The environment compose gives the service: env_file entries, then environment.

    env_files maps the variable naming each file (PRODUCTION_ENV_FILE, STAGING_ENV_FILE)
    to its parsed contents; variables fill ${...} (production's env file, like compose's
    .env).
    """
    src = server["services"][name]
    out: dict[str, str] = {}
    for entry in src.get("env_file") or []:
        app = _rendered_app_env(entry)
        var = app.sources[0].variable if app else _env_file_var(entry)
        if var not in env_files:
            raise StackError(f"{name}: env_file {var} is not one the cluster knows")
        values = {k: v or "" for k, v in env_files[var].items()}
        # an app service's rendered file (opskit/appenv.py): only the keys Django reads
        out.update({k: values[k] for k in appenv.keys() if k in values} if app else values)
    given = src.get("environment") or {}
    if isinstance(given, list):
        given = dict(item.split("=", 1) if "=" in item else (item, None) for item in given)
    for key, value in given.items():
        if value is None:
            out[key] = variables.get(key, "")
        else:
            out[key] = interpolate(str(value), variables)
    return out


def shell_env(env: Mapping[str, str]) -> str:
    """KEY='value' lines for `. FILE` in sh (the secret's format)."""
    lines = []
    for key, value in sorted(env.items()):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise StackError(f"{key!r} is not a variable name")
        lines.append(f"{key}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def docker_env(env: Mapping[str, str]) -> str:
    """KEY=value lines for `docker run --env-file /dev/stdin` (no quoting there)."""
    for key, value in env.items():
        if "\n" in value:
            raise StackError(f"{key}: a value with a line break cannot go in an env file")
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


def versioned(kind: str, content: str) -> str:
    """Secrets and configs cannot change in Swarm: a new content is a new name."""
    return f"{STACK}_{kind}_{hashlib.sha256(content.encode()).hexdigest()[:12]}"


_UPSTREAM_BLOCK = re.compile(r"^upstream django_\$\{SITE\} \{\n.*?^\}\n\n", re.S | re.M)
_SERVER_NAME = "    server_name ${SITE_SERVER_NAMES};\n"
_PROXY_PASS = "proxy_pass http://django_${SITE};"  # noqa: S105 - nginx


def cluster_site_template(template: str) -> str:
    """nginx/templates/app-site.conf for the cluster: tasks resolved at request time.

    On one box the upstream names one container and a deploy rewrites it. In the swarm
    a service's tasks come and go (a rolling update replaces every one of them): nginx
    asks Swarm's DNS for the service's tasks (dnsrr) at most a second old, and a task
    that refuses the connection (stopping) passes the request to the next address.
    """
    out, n = _UPSTREAM_BLOCK.subn("", template)
    if n != 1:
        raise StackError(f"{NGINX_SITE_TEMPLATE}: no `upstream django_${{SITE}} {{...}}` block")
    if out.count(_SERVER_NAME) != 1 or _PROXY_PASS not in out:
        raise StackError(f"{NGINX_SITE_TEMPLATE}: server_name or proxy_pass lines changed")
    resolve = (
        _SERVER_NAME + "\n"
        "    # the swarm's DNS: the service's running tasks (endpoint_mode dnsrr), at most\n"
        "    # 1 s old; ${SITE_UPSTREAM} is the service name and port\n"
        f"    resolver {SWARM_DNS} valid=1s ipv6=off;\n"
        "    resolver_timeout 2s;\n"
        "    set $app_upstream ${SITE_UPSTREAM};\n"
    )
    out = out.replace(_SERVER_NAME, resolve).replace(
        _PROXY_PASS, "proxy_pass http://$app_upstream;"
    )
    return (
        "# GENERATED for the cluster by opskit.swarm.stack.cluster_site_template from\n"
        "# nginx/templates/app-site.conf (a Swarm config; docs/cluster.md)\n" + out
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opskit.swarm.stack", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if they differ")
    args = parser.parse_args(argv)
    want = expected()
    path = ROOT / STACK_FILE
    have = path.read_text() if path.exists() else ""
    if args.check:
        if have != want:
            print(f"{STACK_FILE} is out of date: run python -m opskit.swarm.stack", file=sys.stderr)
            return 1
        print(f"{STACK_FILE} matches {SERVER_FILE}")
        return 0
    if have != want:
        path.write_text(want)
        print(f"wrote {STACK_FILE}")
    else:
        print(f"{STACK_FILE} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
