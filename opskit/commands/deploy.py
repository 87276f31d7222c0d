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
from collections.abc import Mapping
from datetime import datetime

from opskit.commands.compose_run import (  # noqa: F401
    _DURATION,
    COMPOSE_LABEL,
    LABEL_ENV,
    LABEL_RELEASE,
    LABEL_SOURCE,
    ServiceSpec,
    Stack,
    _entrypoint_flags,
    _memory,
    _seconds,
    _unescape,
    check_image,
    compose_config,
    compose_labels,
    run_oneoff,
    run_release,
    service_spec,
)
from opskit.commands.docker import labelled_containers
from opskit.commands.migrations import (  # noqa: F401
    MANAGE,
    MigrationPlan,
    collectstatic,
    migrate,
    parse_migrate,
    parse_plan,
    reverse_targets,
    showmigrations,
)
from opskit.commands.nginx import (  # noqa: F401
    DRAINING,
    draining_workers,
    nginx_reload,
    nginx_test,
    parse_upstream,
    read_upstream,
    upstream_conf,
    write_upstream,
)
from opskit.commands.probes import (  # noqa: F401
    PROBE,
    Health,
    parse_health,
    probe,
)
from opskit.commands.releases import (  # noqa: F401
    initial_release,
    parse_release_images,
    release_images,
    to_prune,
    untag,
)

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


def release_id(started: datetime, source: str = "") -> str:
    """20250101-120000-abc1234: sortable by time, naming the commit or image it came from."""
    short = re.sub(r"[^0-9a-z]", "", source.lower().removeprefix("sha256:"))[:7]
    return f"{started:%Y%m%d-%H%M%S}" + (f"-{short}" if short else "")


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
    return labelled_containers(
        f"{LABEL_ENV}={env.name}", '{{.Names}}\t{{.State}}\t{{.Label "' + LABEL_RELEASE + '"}}'
    )


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
        "digests": list(data.get("RepoDigests") or []),
    }


# the commit an image was built from (compose/release.yml, build_spec)
LABEL_REVISION = "org.opencontainers.image.revision"


def image_commit(info: Mapping) -> str:
    """The image's revision label when it names a whole commit, else ""."""
    value = str((info.get("labels") or {}).get(LABEL_REVISION, ""))
    return value if re.fullmatch(r"[0-9a-f]{40}", value) else ""


def image_digest(image: str, info: Mapping) -> str:
    """`image` by digest (repository@sha256:...), from what the engine recorded on pull."""
    if "@sha256:" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    repo = image[: len(image) - len(last)] + last.split(":", 1)[0]
    for ref in info.get("digests") or []:
        if ref.split("@", 1)[0] == repo:
            return ref
    return ""


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


def write_private(path: str) -> list[str]:
    """Replace a file by stdin, mode 0600 in a folder it makes 0700: the app's rendered
    env file (opskit/appenv.py), which compose reads when it starts the service."""
    return sh(
        'set -eu; umask 077; mkdir -p -- "$(dirname -- "$1")"; '
        'cat > "$1.tmp"; mv -f -- "$1.tmp" "$1"',
        path,
    )


def append_line(path: str) -> list[str]:
    """Write stdin to a file (creating its directory); for the transcript."""
    return sh('set -eu; mkdir -p -- "$(dirname -- "$1")"; cat >> "$1"', path)
