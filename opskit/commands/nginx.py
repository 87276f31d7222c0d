"""nginx in a deploy: the upstream file that names the serving container, its test and
graceful reload, and the count of old workers still draining."""

from __future__ import annotations

import re

from opskit.environments import NGINX, Environment
from opskit.shell import BuilderError


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


# nginx/reload.sh in the image (aiia-reload): lets kept-alive connections end cleanly
# before the graceful reload, so that it costs no client a request; an image built before
# it existed reloads directly
RELOAD = "command -v aiia-reload >/dev/null 2>&1 && exec aiia-reload; exec nginx -s reload"


def nginx_reload(nginx: str = NGINX) -> list[str]:
    return ["docker", "exec", nginx, "sh", "-c", RELOAD]


# nginx retitles a worker that still finishes requests after a reload; the brackets keep
# the script from counting its own command line
DRAINING = (
    "n=0; for f in /proc/[0-9]*/cmdline; do "
    "tr '\\0' ' ' < \"$f\" 2>/dev/null | grep -q 'worker process is shutting[ ]down' "
    "&& n=$((n+1)); done; echo $n"
)


def draining_workers(nginx: str = NGINX) -> list[str]:
    return ["docker", "exec", nginx, "sh", "-c", DRAINING]
