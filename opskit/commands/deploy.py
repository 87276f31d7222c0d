"""Pure builders and parsers for a deploy: every command a deploy runs, as an argv list.

Nothing here runs anything (opskit.deploy does, through a Runner). A builder takes values
and returns the argv that will be joined with shlex on the way to the server; a value a
user typed (a ref, an image name, a reason) is only ever one word of an argv, or stdin.
Commands that need a shell for a redirection or a loop are a fixed script run as
`sh -c SCRIPT sh ARG...`, the values arriving as positional parameters.

Parsers turn what the server answered into data; they are tested on saved output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from opskit.commands.probes import read_health

# names and paths live in opskit.environments; re-exported for the builders' callers
from opskit.environments import (  # noqa: F401
    IMAGE_REPO,
    NETWORK,
    NGINX,
    RELEASE_RE,
    UPSTREAM_DIR,
    Environment,
    check_release,
)
from opskit.environments import SERVERS as ENVIRONMENTS  # noqa: F401
from opskit.environments import server as environment  # noqa: F401
from opskit.shell import BuilderError, sh

LABEL_ENV = "aiia.env"
LABEL_RELEASE = "aiia.release"
LABEL_SOURCE = "aiia.source"
COMPOSE_LABEL = "com.docker.compose."


def release_id(started: datetime, source: str = "") -> str:
    """20250101-120000-abc1234: sortable by time, naming the commit or image it came from."""
    short = re.sub(r"[^0-9a-z]", "", source.lower().removeprefix("sha256:"))[:7]
    return f"{started:%Y%m%d-%H%M%S}" + (f"-{short}" if short else "")


def check_image(image: str) -> str:
    # docker would read a leading '-' as an option; whitespace is never part of a name
    if not image or image.startswith("-") or any(c.isspace() for c in image) or len(image) > 255:
        raise BuilderError(f"{image!r} is not an image reference (registry/name:tag)")
    return image


def check_ref(ref: str) -> str:
    # anything else is git's to judge, as one quoted word after --end-of-options
    if not ref or ref.startswith("-") or "\n" in ref or "\0" in ref:
        raise BuilderError(f"{ref!r} is not a git ref")
    return ref


# --- pre-flight ------------------------------------------------------------------


def disk_free(path: str) -> list[str]:
    return ["df", "-Pk", "--", path]


def parse_df(text: str) -> int:
    """Free MB from `df -Pk` (POSIX format: one line per file system after the header)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError(f"unexpected df output: {text!r}")
    fields = lines[-1].split()
    return int(fields[3]) // 1024


def meminfo() -> list[str]:
    return ["cat", "/proc/meminfo"]


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {key: MB}."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?$", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2)) // 1024
    return out


def read_file(path: str) -> list[str]:
    return ["cat", "--", path]


def docker_version() -> list[str]:
    return ["docker", "version", "--format", "{{.Server.Version}}"]


def compose_version() -> list[str]:
    return ["docker", "compose", "version", "--short"]


def inspect(*names: str) -> list[str]:
    return ["docker", "inspect", "--type", "container", "--", *names]


def env_containers(env: Environment) -> list[str]:
    """Every container of the environment that a deploy created, running or not."""
    return [
        "docker",
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        f"label={LABEL_ENV}={env.name}",
        "--format",
        '{{.Names}}\t{{.State}}\t{{.Label "' + LABEL_RELEASE + '"}}',
    ]


def parse_env_containers(text: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0]:
            rows.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return rows


# --- the image -----------------------------------------------------------------------


def pull(image: str) -> list[str]:
    return ["docker", "pull", "--quiet", check_image(image)]


def tag(source: str, target: str) -> list[str]:
    return ["docker", "tag", check_image(source), check_image(target)]


def image_inspect(image: str) -> list[str]:
    return ["docker", "image", "inspect", "--format", "{{json .}}", check_image(image)]


def parse_image(text: str) -> dict:
    """Id, the APP_VERSION baked into the image and its labels."""
    data = json.loads(text.strip().splitlines()[0])
    env = dict(
        item.split("=", 1) for item in (data.get("Config") or {}).get("Env") or [] if "=" in item
    )
    return {
        "id": data.get("Id", ""),
        "version": env.get("APP_VERSION", ""),
        "labels": (data.get("Config") or {}).get("Labels") or {},
        "created": data.get("Created", ""),
    }


def git_fetch(repo: str) -> list[str]:
    return ["git", "-C", repo, "fetch", "--quiet", "--prune", "--tags", "origin"]


def git_resolve(repo: str, ref: str) -> list[str]:
    """The commit a ref names: a branch of origin first, else a tag, commit or local ref."""
    ref = check_ref(ref)
    script = (
        'git -C "$1" rev-parse --verify --quiet --end-of-options "refs/remotes/origin/$2^{commit}"'
        ' 2>/dev/null || git -C "$1" rev-parse --verify --quiet --end-of-options "$2^{commit}"'
    )
    return sh(script, repo, ref)


def git_describe(repo: str, commit: str) -> list[str]:
    return ["git", "-C", repo, "describe", "--tags", "--always", "--abbrev=12", commit_id(commit)]


def commit_id(commit: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise BuilderError(f"{commit!r} is not a full commit id")
    return commit


def git_archive(repo: str, commit: str, dest_dir: str) -> list[str]:
    """The commit's tree, as committed, into a fresh build directory (no checkout touched)."""
    script = (
        'set -eu; rm -rf -- "$3"; mkdir -p -- "$3"; '
        'git -C "$1" archive --format=tar -o "$3.tar" "$2"; '
        'tar -x -f "$3.tar" -C "$3"; rm -f -- "$3.tar"'
    )
    return sh(script, repo, commit_id(commit), dest_dir)


def remove_build_dir(dest_dir: str) -> list[str]:
    if "/.deploy/build/" not in dest_dir:
        raise BuilderError(f"refusing to remove {dest_dir!r}: not a deploy build directory")
    return ["rm", "-rf", "--", dest_dir]


def compose_escape(value: str) -> str:
    """A literal for a compose file: `$` would start an interpolation."""
    return value.replace("$", "$$")


def build_spec(
    context: str, image: str, version: str, extra_ca: str | None = None, revision: str = ""
) -> str:
    """A compose file (JSON is YAML) that builds the application image of a checkout.

    `revision`, the commit built, becomes the image's org.opencontainers.image.revision
    label, as compose/release.yml gives it to the images CI builds.

    Compose, not `docker build`: its BuildKit client supports the build secret the
    Dockerfile uses for an extra CA (compose/app/Dockerfile) on any engine.
    """
    ca = extra_ca or f"{context}/compose/app/no-extra-ca.pem"
    spec = {
        "name": "aiia_build",
        "services": {
            "app": {
                "image": compose_escape(check_image(image)),
                "build": {
                    "context": compose_escape(context),
                    "dockerfile": "compose/app/Dockerfile",
                    "target": "prod",
                    "args": {
                        "APP_VERSION": compose_escape(version),
                        "REVISION": compose_escape(revision or "unknown"),
                    },
                    "secrets": ["extra_ca"],
                },
            }
        },
        "secrets": {"extra_ca": {"file": compose_escape(ca)}},
    }
    return json.dumps(spec, indent=1)


def compose_build(context: str) -> list[str]:
    """Build from the spec on stdin (build_spec)."""
    return [
        "docker",
        "compose",
        "--project-directory",
        context,
        "-f",
        "-",
        "build",
        "--quiet",
        "app",
    ]


# --- the service's definition, from the server's compose stack -------------------------


@dataclass(frozen=True)
class Stack:
    """The compose project that runs the environment's service on the server."""

    files: tuple[str, ...]
    directory: str
    project: str = ""
    env_file: str = ""

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Stack | None:
        """What compose recorded on the container it created (or a deploy copied over)."""
        files = tuple(
            f for f in labels.get(COMPOSE_LABEL + "project.config_files", "").split(",") if f
        )
        directory = labels.get(COMPOSE_LABEL + "project.working_dir", "")
        if not files or not directory:
            return None
        return cls(
            files=files,
            directory=directory,
            project=labels.get(COMPOSE_LABEL + "project", ""),
            env_file=labels.get(COMPOSE_LABEL + "project.environment_file", ""),
        )

    def describe(self) -> str:
        return f"{self.project or '(default project)'} from {', '.join(self.files)}"


def compose_config(stack: Stack, service: str) -> list[str]:
    argv = ["docker", "compose"]
    if stack.project:
        argv += ["--project-name", stack.project]
    argv += ["--project-directory", stack.directory]
    for f in stack.files:
        argv += ["--file", f]
    if stack.env_file:
        argv += ["--env-file", stack.env_file]
    return [*argv, "config", "--format", "json", service]


@dataclass(frozen=True)
class ServiceSpec:
    """How compose runs the environment's app service, as `docker run` flags.

    `environment` holds the resolved values (secrets included): it goes to the container
    through `--env-file /dev/stdin`, never into argv.
    """

    flags: tuple[str, ...]
    environment: Mapping[str, str] = field(repr=False)
    command: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    network: str = NETWORK
    volumes: tuple[str, ...] = ()  # --mount values, for one-off containers too
    image: str = ""  # the tag compose runs the service from (aiia/app:production)

    def env_file(self) -> str:
        """The environment in docker's --env-file format (KEY=value, taken literally)."""
        lines = []
        for key, value in self.environment.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise BuilderError(f"environment key {key!r} is not a variable name")
            if "\n" in value or "\r" in value or "\0" in value:
                raise BuilderError(
                    f"{key}: a value with a line break cannot be handed to a container"
                )
            lines.append(f"{key}={value}")
        return "\n".join(lines) + "\n"


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def _seconds(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value) / 1e9 if value > 10_000 else float(value)  # compose: ns
    m = _DURATION.match(str(value))
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0) + int(ms or 0) / 1000


def _unescape(value) -> str:
    # `docker compose config` prints a literal $ as $$ (its output is a compose file)
    return str(value).replace("$$", "$")


def _memory(value) -> str | None:
    if value in (None, "", 0, "0"):
        return None
    return str(value)


def service_spec(config: Mapping, service: str) -> ServiceSpec:
    """`docker compose config --format json` of the stack -> the service's run flags.

    Everything compose would give the container except its name, image, ports and
    dependencies: limits, security options, read-only root and tmpfs, volumes, network
    aliases, restart policy, logging, health check, user, environment.
    """
    try:
        svc = config["services"][service]
    except (KeyError, TypeError):
        raise BuilderError(f"the compose stack has no service {service!r}") from None
    top_volumes = config.get("volumes") or {}
    top_networks = config.get("networks") or {}
    flags: list[str] = []

    limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
    mem = _memory(svc.get("mem_limit") or limits.get("memory"))
    if mem:
        flags += ["--memory", mem]
    swap = _memory(svc.get("memswap_limit"))
    if swap:
        flags += ["--memory-swap", swap]
    cpus = svc.get("cpus") or limits.get("cpus")
    if cpus:
        flags += ["--cpus", str(cpus)]
    pids = svc.get("pids_limit") or limits.get("pids")
    if pids:
        flags += ["--pids-limit", str(pids)]
    if svc.get("read_only"):
        flags.append("--read-only")
    tmpfs = svc.get("tmpfs") or []
    for t in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
        flags += ["--tmpfs", str(t)]
    for cap in svc.get("cap_drop") or []:
        flags += ["--cap-drop", cap]
    for cap in svc.get("cap_add") or []:
        flags += ["--cap-add", cap]
    for opt in svc.get("security_opt") or []:
        flags += ["--security-opt", opt]
    if svc.get("user"):
        flags += ["--user", str(svc["user"])]
    if svc.get("working_dir"):
        flags += ["--workdir", svc["working_dir"]]
    if svc.get("init"):
        flags.append("--init")
    if svc.get("shm_size"):
        flags += ["--shm-size", str(svc["shm_size"])]
    if svc.get("stop_signal"):
        flags += ["--stop-signal", svc["stop_signal"]]
    grace = _seconds(svc.get("stop_grace_period"))
    if grace is not None:
        flags += ["--stop-timeout", str(int(grace))]
    for name, limit in (svc.get("ulimits") or {}).items():
        if isinstance(limit, Mapping):
            flags += ["--ulimit", f"{name}={limit.get('soft')}:{limit.get('hard')}"]
        else:
            flags += ["--ulimit", f"{name}={limit}"]
    for key, value in (svc.get("sysctls") or {}).items():
        flags += ["--sysctl", f"{key}={value}"]
    restart = svc.get("restart")
    if restart and restart != "no":
        flags += ["--restart", restart]
    logging = svc.get("logging") or {}
    if logging.get("driver"):
        flags += ["--log-driver", logging["driver"]]
    for key, value in (logging.get("options") or {}).items():
        flags += ["--log-opt", f"{key}={value}"]
    hc = svc.get("healthcheck") or {}
    if hc.get("disable"):
        flags.append("--no-healthcheck")
    elif hc.get("test"):
        test = hc["test"]
        if isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"):
            if test[0] == "CMD-SHELL":
                flags += ["--health-cmd", _unescape(" ".join(test[1:]))]
            else:
                # docker run has no exec form: the same argv, quoted for the image's sh
                from opskit.shell import join

                flags += ["--health-cmd", join(_unescape(t) for t in test[1:])]
        elif isinstance(test, str):
            flags += ["--health-cmd", _unescape(test)]
        for key, flag in (
            ("interval", "--health-interval"),
            ("timeout", "--health-timeout"),
            ("start_period", "--health-start-period"),
        ):
            s = _seconds(hc.get(key))
            if s is not None:
                flags += [flag, f"{s:g}s"]
        if hc.get("retries") is not None:
            flags += ["--health-retries", str(hc["retries"])]
    for key, value in sorted((svc.get("labels") or {}).items()):
        if not key.startswith("com.docker.compose."):
            flags += ["--label", f"{key}={_unescape(value)}"]

    volumes: list[str] = []
    for v in svc.get("volumes") or []:
        kind, target = v.get("type", "volume"), v.get("target")
        if not target:
            continue
        if kind == "volume":
            source = v.get("source")
            if not source:
                continue  # an anonymous volume would be a new, empty one
            name = (top_volumes.get(source) or {}).get("name") or source
            mount = f"type=volume,source={name},target={target}"
        elif kind == "bind":
            mount = f"type=bind,source={v.get('source')},target={target}"
        elif kind == "tmpfs":
            mount = f"type=tmpfs,target={target}"
        else:
            continue
        if v.get("read_only"):
            mount += ",readonly"
        volumes.append(mount)

    networks = svc.get("networks") or {}
    if not networks:
        raise BuilderError(f"service {service!r} is on no network")
    net_key = next(iter(networks))
    network = (top_networks.get(net_key) or {}).get("name") or net_key
    aliases = tuple((networks.get(net_key) or {}).get("aliases") or ())

    env = {k: _unescape(v) for k, v in (svc.get("environment") or {}).items() if v is not None}
    command = svc.get("command")
    entrypoint = svc.get("entrypoint")
    return ServiceSpec(
        flags=tuple(flags),
        environment=env,
        command=tuple(_unescape(c) for c in command) if command else (),
        entrypoint=tuple(_unescape(c) for c in entrypoint) if entrypoint else None,
        aliases=(service, *aliases),
        network=network,
        volumes=tuple(volumes),
        image=_unescape(svc.get("image") or ""),
    )


def _entrypoint_flags(spec: ServiceSpec) -> tuple[list[str], list[str]]:
    """docker run takes one --entrypoint word; the rest of it goes before the command."""
    if spec.entrypoint is None:
        return [], []
    if not spec.entrypoint:
        return ["--entrypoint", ""], []
    return ["--entrypoint", spec.entrypoint[0]], list(spec.entrypoint[1:])


def compose_labels(old: Mapping[str, str], image_id: str) -> dict[str, str]:
    """The compose labels that make a deploy's container compose's own service container.

    Copied from the container being replaced, with the new image's id: `docker compose ps`,
    `logs` and `exec` then find the release under the service's name, and `up -d` leaves
    it running as long as the service's definition is unchanged.
    """
    labels = {k: v for k, v in old.items() if k.startswith(COMPOSE_LABEL)}
    if labels and image_id:
        labels[COMPOSE_LABEL + "image"] = image_id
    return labels


def run_release(
    env: Environment,
    spec: ServiceSpec,
    release: str,
    image: str,
    source: str = "",
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Start a release beside the one serving: same definition, its own name; env on stdin."""
    name = env.release_container(release)
    entry, entry_args = _entrypoint_flags(spec)
    argv = [
        "docker",
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        spec.network,
        *[f for a in spec.aliases for f in ("--network-alias", a)],
        "--env-file",
        "/dev/stdin",
        *spec.flags,
        *[f for m in spec.volumes for f in ("--mount", m)],
        "--label",
        f"{LABEL_ENV}={env.name}",
        "--label",
        f"{LABEL_RELEASE}={release}",
    ]
    if source:
        argv += ["--label", f"{LABEL_SOURCE}={source}"]
    for key, value in sorted((labels or {}).items()):
        argv += ["--label", f"{key}={value}"]
    argv += [*entry, check_image(image), *entry_args, *spec.command]
    return argv


def run_oneoff(
    env: Environment,
    spec: ServiceSpec,
    release: str,
    image: str,
    what: str,
    command: Sequence[str],
) -> list[str]:
    """A one-off container of the new image (migrations, static files); env on stdin."""
    if not re.fullmatch(r"[a-z]+", what):
        raise BuilderError(f"{what!r}: one-off names are lower-case words")
    keep = (
        "--memory",
        "--memory-swap",
        "--cpus",
        "--read-only",
        "--tmpfs",
        "--cap-drop",
        "--cap-add",
        "--security-opt",
        "--user",
        "--workdir",
        "--pids-limit",
        "--ulimit",
    )
    flags: list[str] = []
    it = iter(spec.flags)
    for f in it:
        takes_value = f not in ("--read-only", "--init", "--no-healthcheck")
        value = next(it) if takes_value else None
        if f in keep:
            flags += [f] if value is None else [f, value]
    return [
        "docker",
        "run",
        "--rm",
        "--name",
        env.oneoff_container(release, what),
        "--network",
        spec.network,
        "--env-file",
        "/dev/stdin",
        *flags,
        *[f for m in spec.volumes for f in ("--mount", m)],
        "--label",
        f"{LABEL_ENV}.oneoff={env.name}",
        "--entrypoint",
        command[0],
        check_image(image),
        *command[1:],
    ]


MANAGE = ("python", "manage.py")


def showmigrations() -> list[str]:
    return [*MANAGE, "showmigrations", "--plan"]


def migrate() -> list[str]:
    return [*MANAGE, "migrate", "--noinput"]


def collectstatic() -> list[str]:
    return [*MANAGE, "collectstatic", "--noinput", "-v", "0"]


@dataclass(frozen=True)
class MigrationPlan:
    applied: tuple[str, ...]  # app.name, in plan order
    pending: tuple[str, ...]

    def last_applied(self, app: str) -> str:
        names = [m.split(".", 1)[1] for m in self.applied if m.split(".", 1)[0] == app]
        return names[-1] if names else "zero"


def parse_plan(text: str) -> MigrationPlan:
    """`manage.py showmigrations --plan`: `[X]  app.name` or `[ ]  app.name` per line."""
    applied, pending = [], []
    for line in text.splitlines():
        m = re.match(r"^\s*\[(X| )\]\s+([\w]+\.[\w]+)", line)
        if m:
            (applied if m.group(1) == "X" else pending).append(m.group(2))
    return MigrationPlan(tuple(applied), tuple(pending))


def parse_migrate(text: str) -> tuple[list[str], str | None]:
    """Migrations `migrate` applied (`Applying app.name... OK`) and the one it failed on."""
    done, failed = [], None
    for line in text.splitlines():
        m = re.match(r"^\s*Applying ([\w]+\.[\w]+)\.\.\.(.*)$", line)
        if m:
            if m.group(2).strip().startswith("OK"):
                done.append(m.group(1))
            else:
                failed = m.group(1)
    if failed in done:
        failed = None
    return done, failed


def reverse_targets(before: MigrationPlan, applied: Sequence[str]) -> list[tuple[str, str]]:
    """(app, migration to go back to) for each app with newly applied migrations."""
    apps: list[str] = []
    for m in applied:
        app = m.split(".", 1)[0]
        if app not in apps:
            apps.append(app)
    return [(app, before.last_applied(app)) for app in apps]


# --- health, through the network as nginx reaches the app -----------------------------

# Run inside the nginx container (`bash`, `timeout` and /dev/tcp are in every Debian
# image): one HTTP/1.0 request, the raw answer on stdout.
PROBE = r"""exec 3<>"/dev/tcp/$1/$2" || exit 7
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: aiia-deploy\r\n' "$3" "$1" >&3
printf 'Connection: close\r\n\r\n' >&3
cat <&3
"""


def probe(
    host: str, port: int, path: str = "/health/", timeout_s: int = 5, nginx: str = NGINX
) -> list[str]:
    return [
        "docker",
        "exec",
        nginx,
        "timeout",
        str(timeout_s),
        "bash",
        "-c",
        PROBE,
        "probe",
        host,
        str(int(port)),
        path,
    ]


@dataclass(frozen=True)
class Health:
    ok: bool
    status: int | None
    version: str = ""
    detail: str = ""


def parse_health(exited: int, text: str) -> Health:
    if exited != 0 and not text:
        why = {7: "connection refused or name not found", 124: "no answer in time"}.get(
            exited, f"probe exited {exited}"
        )
        return Health(False, None, detail=why)
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    m = re.match(r"^HTTP/\d(?:\.\d)?\s+(\d{3})", head)
    if not m:
        return Health(False, None, detail=f"not an HTTP answer: {text[:80]!r}")
    answer = read_health(int(m.group(1)), body)
    if not answer.healthy:
        failing = [f"{name}: {error}" for name, error in answer.failing]
        detail = f"HTTP {answer.status}" + (f" ({', '.join(failing)})" if failing else "")
        return Health(False, answer.status, answer.version, detail)
    return Health(True, answer.status, answer.version, "ok")


def container_state(name: str) -> list[str]:
    return [
        "docker",
        "inspect",
        "--type",
        "container",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}",
        "--",
        name,
    ]


def logs_tail(name: str, lines: int = 20) -> list[str]:
    return ["docker", "logs", "--tail", str(lines), "--", name]


def stop(name: str, timeout_s: int = 30) -> list[str]:
    return ["docker", "stop", "--time", str(timeout_s), "--", name]


def remove(name: str) -> list[str]:
    return ["docker", "rm", "--force", "--", name]


def rename(old: str, new: str) -> list[str]:
    return ["docker", "rename", old, new]


# --- nginx ----------------------------------------------------------------------------


def upstream_conf(host: str, port: int, release: str = "") -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", host):
        raise BuilderError(f"{host!r} is not a container name")
    note = f" (release {release})" if release else ""
    return (
        "# written by the deploy (opskit.deploy): the container serving this site"
        f"{note}\nserver {host}:{int(port)};\n"
    )


def parse_upstream(text: str) -> tuple[str, int] | None:
    m = re.search(r"^\s*server\s+([A-Za-z0-9][A-Za-z0-9_.-]*):(\d+)\s*[^;]*;", text, re.M)
    return (m.group(1), int(m.group(2))) if m else None


def read_upstream(env: Environment, nginx: str = NGINX) -> list[str]:
    return ["docker", "exec", nginx, "cat", "--", env.upstream_file]


def write_upstream(env: Environment, nginx: str = NGINX) -> list[str]:
    """Replace the upstream file atomically (rename) with stdin."""
    return [
        "docker",
        "exec",
        "-i",
        nginx,
        "sh",
        "-c",
        'cat > "$1.new" && mv -f -- "$1.new" "$1"',
        "sh",
        env.upstream_file,
    ]


def nginx_test(nginx: str = NGINX) -> list[str]:
    return ["docker", "exec", nginx, "nginx", "-t", "-q"]


def nginx_reload(nginx: str = NGINX) -> list[str]:
    return ["docker", "exec", nginx, "nginx", "-s", "reload"]


# nginx retitles a worker that still finishes requests after a reload; the brackets keep
# the script from counting its own command line
DRAINING = (
    "n=0; for f in /proc/[0-9]*/cmdline; do "
    "tr '\\0' ' ' < \"$f\" 2>/dev/null | grep -q 'worker process is shutting[ ]down' "
    "&& n=$((n+1)); done; echo $n"
)


def draining_workers(nginx: str = NGINX) -> list[str]:
    return ["docker", "exec", nginx, "sh", "-c", DRAINING]


# --- releases kept for rollback ------------------------------------------------------


def release_images(env: Environment) -> list[str]:
    return [
        "docker",
        "image",
        "ls",
        "--format",
        "{{.Tag}}\t{{.ID}}",
        "--filter",
        f"reference={IMAGE_REPO}:{env.name}-*",
    ]


def parse_release_images(env: Environment, text: str) -> list[str]:
    """Release ids that still have an image, oldest first."""
    prefix = f"{env.name}-"
    out = []
    for line in text.splitlines():
        tag_ = line.split("\t", 1)[0]
        if tag_.startswith(prefix) and RELEASE_RE.match(tag_[len(prefix) :]):
            out.append(tag_[len(prefix) :])
    return sorted(set(out))


def untag(env: Environment, release: str) -> list[str]:
    """Drop a release's tag; the layers go only when nothing else uses them."""
    return ["docker", "image", "rm", env.release_image(release)]


def to_prune(
    releases: Sequence[str],
    keep: int,
    protect: Sequence[str],
    served: Sequence[str] | None = None,
) -> list[str]:
    """Releases to untag: all but the newest `keep` that served, and the newest other one.

    `served` (from the deploy log) tells releases that were in service from those that
    never were (failed, interrupted): of those only the newest keeps its image, whose code
    may be needed to reverse its migrations (`fab manage`). `protect` (the serving release
    and the one before it) is never pruned. Without `served`, every release counts.
    """
    ordered = sorted(releases)
    served_set = set(ordered if served is None else served)
    good = [r for r in ordered if r in served_set]
    other = [r for r in ordered if r not in served_set]
    keep_set = set(good[-keep:] if keep > 0 else []) | set(other[-1:]) | set(protect)
    return [r for r in ordered if r not in keep_set]


def initial_release(created: str) -> str:
    """The release id of a container compose started: its creation time, then `initial`."""
    m = re.match(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})", created or "")
    stamp = "".join(m.groups()[:3]) + "-" + "".join(m.groups()[3:]) if m else "00000000-000000"
    return f"{stamp}-initial"


def append_line(path: str) -> list[str]:
    """Write stdin to a file (creating its directory); for the transcript."""
    return sh('set -eu; mkdir -p -- "$(dirname -- "$1")"; cat >> "$1"', path)
