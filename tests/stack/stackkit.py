"""Helpers of the stack tier: compose, docker, TLS requests (fixtures in conftest.py).

Builds get this host's CA bundle as the optional extra CA (EXTRA_CA_CERTS, see
compose/app/Dockerfile): the caller's EXTRA_CA_CERTS when set, else the trust store
Python's ssl module uses here.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.core import ROOT, PrerequisiteError

SERVER_COMPOSE = ROOT / "docker-compose.yml"
LOCAL_COMPOSE = ROOT / "docker-compose.local.yml"
# service -> the container name the guide gives it
SERVER_CONTAINERS = {
    "nginx": "aiia_nginx",
    "django_prod": "aiia_django_prod",
    "django_staging": "aiia_django_staging",
    "postgresql": "aiia_postgresql",
    "pgbouncer": "aiia_pgbouncer",
    "redis": "aiia_redis",
}
PROD, WWW, STAGING, STATUS = (
    "eduaiia.com",
    "www.eduaiia.com",
    "staging.eduaiia.com",
    "devstatus.eduaiia.com",
)
LOCK_PATH = Path("/tmp/aiia-stack.lock")
LOCK_WAIT_S = 1800
TEST_PROJECT_PREFIX = "aiia_test_"
BUILD_TIMEOUT_S = 1800
# the stated time: from `up` (images built) to every container healthy
UP_TIMEOUT_S = 240


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return proc


def host_ca_bundle() -> str:
    """The PEM bundle handed to builds as the extra CA: this host's trust store."""
    given = os.environ.get("EXTRA_CA_CERTS", "").strip()
    if given:
        if not Path(given).is_file():
            raise PrerequisiteError(f"EXTRA_CA_CERTS={given} is not a file")
        return given
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    raise PrerequisiteError(
        "no CA bundle found for builds: set EXTRA_CA_CERTS to a PEM file (an empty file "
        "when no TLS-intercepting proxy is in the way)"
    )


@dataclass
class Compose:
    """`docker compose` for one project; every call gets the same files and variables."""

    project: str
    files: tuple[Path, ...]
    env_file: Path | None = None
    variables: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        argv = ["docker", "compose", "-p", self.project]
        for f in self.files:
            argv += ["-f", str(f)]
        if self.env_file is not None:
            argv += ["--env-file", str(self.env_file)]
        return [*argv, *args]

    def run(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.variables}
        # a developer's own settings must not leak into the test's interpolation
        for name in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"):
            env.pop(name, None)
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(self.argv(*args))} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
            )
        return proc

    def logs(self, tail: int = 60) -> str:
        proc = self.run("logs", "--no-color", "--tail", str(tail), check=False, timeout=60)
        return proc.stdout[-20000:] + proc.stderr[-2000:]


def render_app_env(variables: dict[str, str], stack=None) -> None:
    """The app services' env files (.env.app/ in the checkout, opskit/appenv.py) from the
    env files `variables` name, as `inv dev`, `fab setup` and deploys render them."""
    from opskit import appenv

    appenv.refresh(ROOT, stack or appenv.SERVER, {**os.environ, **variables})


def env_from_example(example: Path, **overrides: str) -> str:
    """The example env file with every CHANGE_ME replaced by a fresh secret."""
    lines = []
    for line in example.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            key = key.strip()
            if key in overrides:
                value = overrides.pop(key)
            elif value.strip() == "CHANGE_ME":
                value = secrets.token_urlsafe(48)
            line = f"{key}={value}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items()]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def remove_leftover_test_stacks() -> None:
    """Free the guide's names from a test stack an earlier run left behind.

    A container of any other project holding one of the names is somebody's real
    stack: that fails the tier with the project's name instead of touching it.
    """
    names = list(SERVER_CONTAINERS.values())
    out = docker(
        "ps", "-a", "--format", '{{.Names}}\t{{.Label "com.docker.compose.project"}}'
    ).stdout
    projects = set()
    for line in out.splitlines():
        name, _, project = line.partition("\t")
        if name in names:
            if not project.startswith(TEST_PROJECT_PREFIX):
                raise PrerequisiteError(
                    f"container {name} belongs to compose project {project or '(none)'}, "
                    "not to a test stack: stop that stack before running the stack tier"
                )
            projects.add(project)
    for project in sorted(projects):
        ids = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}")
        if ids.stdout.split():
            docker("rm", "-f", "-v", *ids.stdout.split(), timeout=180)
        vols = docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"
        )
        if vols.stdout.split():
            docker("volume", "rm", *vols.stdout.split(), check=False)
    net = docker("network", "inspect", "aiia_network", "--format", "{{json .Labels}}", check=False)
    if net.returncode == 0:
        labels = json.loads(net.stdout or "{}") or {}
        if labels.get("com.docker.compose.project", "").startswith(TEST_PROJECT_PREFIX):
            docker("network", "rm", "aiia_network", check=False)


class SNIConnection(http.client.HTTPSConnection):
    """HTTPS to `address` with `host` in SNI and Host, verified like a browser would."""

    def __init__(self, address: str, port: int, host: str, context: ssl.SSLContext, **kw):
        super().__init__(host, port, context=context, **kw)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class ServerStack:
    compose: Compose
    http_port: int
    https_port: int
    ca_file: Path
    workdir: Path
    build_s: float
    up_s: float

    def https(self, host: str, path: str, *, timeout: float = 15) -> Response:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = SNIConnection("127.0.0.1", self.https_port, host, context, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def exec(
        self, service: str, *argv: str, user: str | None = None
    ) -> subprocess.CompletedProcess:
        opts = ["--user", user] if user else []
        return docker("exec", *opts, SERVER_CONTAINERS[service], *argv, check=False)


def letsencrypt_dir(base: Path) -> tuple[Path, Path]:
    """A test CA and a certificate for the four names, where certbot would put it."""
    from opskit import tls

    ca = tls.create_ca("AIIA stack test CA")
    leaf = tls.issue_leaf(ca, [PROD, WWW, STAGING, STATUS])
    live = base / "letsencrypt" / "live" / PROD
    tls.write_private(live / "privkey.pem", leaf.key_pem())
    tls.write_public(live / "fullchain.pem", leaf.cert_pem() + ca.cert_pem())
    tls.write_public(live / "cert.pem", leaf.cert_pem())
    tls.write_public(live / "chain.pem", ca.cert_pem())
    ca_file = base / "ca.pem"
    tls.write_public(ca_file, ca.cert_pem())
    return base / "letsencrypt", ca_file


def build_variables(project: str) -> dict[str, str]:
    return {"EXTRA_CA_CERTS": host_ca_bundle(), "APP_VERSION": f"stack-test-{project}"}


def container_state(name: str) -> dict:
    return json.loads(docker("inspect", name).stdout)[0]


def dockerfiles() -> list[Path]:
    """Every Dockerfile of the project (not of virtualenvs or build output)."""
    skip = {".git", ".venv", "node_modules", "build", "dist"}
    found = []
    for path in ROOT.rglob("Dockerfile*"):
        if (
            skip.isdisjoint(path.relative_to(ROOT).parts)
            and re.fullmatch(r"Dockerfile(\.[\w-]+)?", path.name)
            and not path.name.endswith(".dockerignore")
        ):
            found.append(path)
    return sorted(found)


@contextmanager
def stack_lock() -> Iterator[None]:
    """The engine-wide lock of whoever runs a server stack with the guide's names."""
    LOCK_PATH.touch(exist_ok=True)
    with open(LOCK_PATH, "a") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PrerequisiteError(
                        f"{LOCK_PATH} stayed locked for {LOCK_WAIT_S}s: another server "
                        "stack runs on this engine"
                    ) from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fresh_copy(dest: Path) -> Path:
    """The files a clone would have (tracked and new, no ignored ones: no .env, no .venv).

    Copied rather than `git clone`d, so that work not yet committed is tested too.
    """
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        src = ROOT / raw.decode()
        if src.is_file():
            target = dest / raw.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return dest
