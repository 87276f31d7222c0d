"""The compose service's definition as `docker run` flags: how a deploy starts a release
beside the serving one, and one-off containers of its image, exactly as compose would."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opskit import settings
from opskit.environments import NETWORK, Environment
from opskit.shell import BuilderError

# the settings the app containers never get (opskit/settings.py readers)
APP_WITHHELD = frozenset(settings.withheld_from("django"))

LABEL_ENV = "aiia.env"
LABEL_RELEASE = "aiia.release"
LABEL_SOURCE = "aiia.source"
COMPOSE_LABEL = "com.docker.compose."


def check_image(image: str) -> str:
    # docker would read a leading '-' as an option; whitespace is never part of a name
    if not image or image.startswith("-") or any(c.isspace() for c in image) or len(image) > 255:
        raise BuilderError(f"{image!r} is not an image reference (registry/name:tag)")
    return image


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
        """The environment in docker's --env-file format (KEY=value, taken literally).

        The service reads its rendered env file (opskit/appenv.py), which holds only what
        Django reads; a withheld key that still arrives empty (a stack that blanks them)
        is left out altogether, so a release never holds its name.
        """
        lines = []
        for key, value in self.environment.items():
            if value == "" and key in APP_WITHHELD:
                continue
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
