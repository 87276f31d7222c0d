"""Plain `docker` command lines: containers, images, stats and housekeeping."""

from __future__ import annotations

from collections.abc import Sequence

# One JSON object per container from `docker inspect`: only what the monitor and the
# health check read, so the parser never depends on the rest of the engine's output.
INSPECT_FORMAT = (
    '{"name":{{json .Name}},"status":{{json .State.Status}},'
    '"health":{{if .State.Health}}{{json .State.Health.Status}}{{else}}""{{end}},'
    '"memory_limit":{{.HostConfig.Memory}},"restarts":{{.RestartCount}},'
    '"oom_killed":{{.State.OOMKilled}},"exit_code":{{.State.ExitCode}}}'
)

# One JSON object per container of a compose project, with its service name.
PS_FORMAT = (
    '{"service":{{json (.Label "com.docker.compose.service")}},"name":{{json .Names}},'
    '"state":{{json .State}},"status":{{json .Status}}}'
)


def stats(containers: Sequence[str] = ()) -> list[str]:
    """One sample of every container's CPU and memory, one JSON object per line."""
    return ["docker", "stats", "--no-stream", "--all", "--format", "{{json .}}", *containers]


def inspect(containers: Sequence[str]) -> list[str]:
    return ["docker", "inspect", "--format", INSPECT_FORMAT, *containers]


def labelled_containers(label: str, fmt: str) -> list[str]:
    """Every container (running or not) carrying `label` (KEY=VALUE), printed with `fmt`."""
    return ["docker", "ps", "--all", "--no-trunc", "--filter", f"label={label}", "--format", fmt]


def project_containers(project: str) -> list[str]:
    """Every container (running or not) of compose project `project`, one JSON per line."""
    return labelled_containers(f"com.docker.compose.project={project}", PS_FORMAT)


def exec_(container: str, command: Sequence[str], *, env_names: Sequence[str] = ()) -> list[str]:
    argv = ["docker", "exec"]
    for name in env_names:
        if "=" in name:
            raise ValueError(f"env_names: {name!r} must be a name only, never NAME=value")
        argv += ["-e", name]
    return [*argv, container, *command]


def port(container: str, private: str) -> list[str]:
    """The host addresses a container's private port (e.g. 80/tcp) is published on."""
    return ["docker", "port", container, private]


def info(field: str) -> list[str]:
    return ["docker", "info", "--format", "{{json ." + field + "}}"]


def volume_ls(project: str) -> list[str]:
    return [
        "docker",
        "volume",
        "ls",
        "--quiet",
        "--filter",
        f"label=com.docker.compose.project={project}",
    ]


def prune() -> list[list[str]]:
    """Unused containers, networks, dangling images and build cache; never volumes.

    Tagged images stay: the previous release's image is what a rollback starts again,
    and volumes hold the databases (`inv clean` is the one task that removes them).
    """
    return [
        ["docker", "container", "prune", "--force"],
        ["docker", "network", "prune", "--force"],
        ["docker", "image", "prune", "--force"],
        ["docker", "builder", "prune", "--force"],
    ]
