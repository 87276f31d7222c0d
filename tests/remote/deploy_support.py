"""A server to deploy to, on this machine: what the remote tier's deploy tests (and
bench/deploy.py) drive with `fab -H` over real SSH.

- an "origin" git repository holding this project's committed tree (plus the deploy's
  own files as they are in the working tree), with `main` and `staging` branches;
- the two checkouts of the operators' guide, cloned from it: production's and staging's,
  each with its env file; the production checkout runs the server stack
  (docker-compose.yml) as the server does, in a compose project of its own;
- a real image registry (Debian's docker-registry) on a loopback port for `--image`;
- helpers to publish new versions of the app to origin and to the registry, to send
  requests through nginx while a deploy runs, and to sample the stack's memory.

Only one server stack can run on an engine at a time (the guide's container names are
fixed), so whoever brings one up holds an fcntl lock on /tmp/aiia-stack.lock.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from opskit import appenv
from opskit.commands import deploy as cmd
from tests.harness.core import (
    ROOT,
    Service,
    free_port,
    require_binary,
    venv_tool,
    wait_for_port,
)
from tests.stack.stackkit import (
    TEST_PROJECT_PREFIX,
    env_from_example,
    host_ca_bundle,
    remove_leftover_test_stacks,
    stack_lock,
    write_private,
)

PROD_HOST, STAGING_HOST = "eduaiia.com", "staging.eduaiia.com"
# the deploy's own files, taken from the working tree so the server runs this code
OWN_FILES = (
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "opskit" / "deploy").glob("*.py")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "opskit" / "commands").glob("*.py")),
    "opskit/backup/commands.py",
    "opskit/environments.py",
    "opskit/runner.py",
    "opskit/shell.py",
    "opskit/units.py",
    "scripts/deploy.sh",
)
UP_TIMEOUT_S = 300
GIT_ID = ["-c", "user.name=Deploy Test", "-c", "user.email=deploy-test@example.invalid"]


def run(argv, *, cwd=None, check=True, timeout=600, env=None, input=None):
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        input=input,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


# --- the origin repository and new versions of the app ------------------------------------


def seed_origin(base: Path) -> Path:
    """A bare repository with the project at `v1` on branches main and staging."""
    seed = base / "seed"
    seed.mkdir()
    tree = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(seed)], input=tree, check=True)
    for rel in OWN_FILES:
        (seed / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, seed / rel)
    run(["git", "init", "-q", "-b", "main", seed])
    run(["git", *GIT_ID, "-C", seed, "add", "-A"])
    run(["git", *GIT_ID, "-C", seed, "commit", "-q", "-m", "v1"])
    run(["git", *GIT_ID, "-C", seed, "tag", "v1"])
    run(["git", "-C", seed, "branch", "staging"])
    origin = base / "origin.git"
    run(["git", "clone", "-q", "--bare", seed, origin])
    shutil.rmtree(seed)
    return origin


def publish(
    origin: Path,
    work: Path,
    tag: str,
    files: dict[str, str | None],
    *,
    base="v1",
    branches=("main", "staging"),
) -> str:
    """Commit `files` (None deletes) on top of `base`, tag it and push it to `branches`."""
    if not work.exists():
        run(["git", "clone", "-q", origin, work])
    run(["git", "-C", work, "fetch", "-q", "--tags", "origin"])
    run(["git", "-C", work, "checkout", "-q", "--detach", base])
    for rel, text in files.items():
        path = work / rel
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    run(["git", *GIT_ID, "-C", work, "add", "-A"])
    run(["git", *GIT_ID, "-C", work, "commit", "-q", "--allow-empty", "-m", tag])
    run(["git", *GIT_ID, "-C", work, "tag", tag])
    run(["git", "-C", work, "push", "-q", "origin", f"refs/tags/{tag}"])
    for branch in branches:
        run(["git", "-C", work, "push", "-q", "-f", "origin", f"HEAD:refs/heads/{branch}"])
    return run(["git", "-C", work, "rev-parse", "HEAD"]).stdout.strip()


def migration(name: str, depends: str, sql: str, reverse: str | None = None) -> tuple[str, str]:
    """A migration of the reference app that runs raw SQL."""
    rev = f", {reverse!r}" if reverse else ""
    text = (
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = [('core', {depends!r})]\n"
        f"    operations = [migrations.RunSQL({sql!r}{rev})]\n"
    )
    return f"app/core/migrations/{name}.py", text


def broken_health() -> tuple[str, str]:
    """app/core/health.py of v1, changed to answer 503 whatever the checks say."""
    path = "app/core/health.py"
    text = (ROOT / path).read_text()
    old = 'status = 200 if body["status"] == "ok" else 503'
    if old not in text:
        raise AssertionError(f"{path} changed: cannot make a build that fails its health check")
    return path, text.replace(old, "status = 503")


# --- the registry: "CI" builds and pushes, the server pulls ---------------------------------


@dataclass
class Registry:
    address: str
    service: Service

    def publish(self, origin: Path, work: Path, tag: str) -> str:
        """Build the app at `tag` as CI would and push it; returns the image reference."""
        ctx = work.parent / f"ctx-{tag}"
        if ctx.exists():
            shutil.rmtree(ctx)
        ctx.mkdir(parents=True)
        tree = subprocess.run(
            ["git", "--git-dir", str(origin), "archive", "--format=tar", tag],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(ctx)], input=tree, check=True)
        image = f"{self.address}/aiia/app:{tag}"
        revision = run(
            ["git", "--git-dir", origin, "rev-parse", f"{tag}^{{commit}}"]
        ).stdout.strip()
        spec = cmd.build_spec(str(ctx), image, tag, host_ca_bundle(), revision)
        run(cmd.compose_build(str(ctx)), input=spec, timeout=1800)
        run(["docker", "push", "--quiet", image], timeout=600)
        # the server pulls it: nothing of it is left here but shared layers
        run(["docker", "image", "rm", image])
        shutil.rmtree(ctx)
        return image


def start_registry(base: Path) -> Registry:
    exe = require_binary("docker-registry", "packages")
    port = free_port()
    config = base / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {base / 'registry'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    service = Service([exe, "serve", str(config)], log=base / "registry.log").start()
    wait_for_port("127.0.0.1", port, timeout=30, what="docker-registry")
    service.check_alive()
    return Registry(f"127.0.0.1:{port}", service)


# --- the server --------------------------------------------------------------------------


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS to nginx on loopback with the site's name in SNI and Host."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class DeployServer:
    base: Path
    origin: Path
    prod: Path
    staging: Path
    project: str
    http_port: int
    https_port: int
    ssh: object  # tests.harness.fixtures.SSHHost
    registry: Registry
    work: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work = self.base / "work"

    def path(self, env: str) -> Path:
        return self.prod if env == "production" else self.staging

    def fab_argv(self, *args: str) -> list[str]:
        return [
            venv_tool("fab"),
            "-H", f"{self.ssh.user}@{self.ssh.host}:{self.ssh.port}",
            "-i", self.ssh.key_filename,
            *args,
        ]  # fmt: skip

    def fab_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("SLACK_WEBHOOK_URL",)}
        env.update(extra)
        return env

    def fab(self, *args: str, timeout: float = 1800, **extra: str) -> subprocess.CompletedProcess:
        return run(
            self.fab_argv(*args), cwd=ROOT, check=False, timeout=timeout, env=self.fab_env(**extra)
        )

    def fab_popen(self, *args: str) -> subprocess.Popen:
        """fab started, its output (stdout and stderr) read line by line as it comes."""
        return subprocess.Popen(
            self.fab_argv(*args),
            cwd=ROOT,
            env=self.fab_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def deploy_args(self, env: str, *args: str, backup: bool = False) -> list[str]:
        skip = [] if backup else ["--skip-backup"]
        return ["deploy", "--env", env, "--path", str(self.path(env)), *skip,
                "--extra-ca", host_ca_bundle(), *args]  # fmt: skip

    def https(self, host: str, path: str = "/health/", timeout: float = 10) -> tuple[int, dict]:
        """One request through nginx, as a browser would send it (its own connection)."""
        context = ssl.create_default_context()
        # nginx serves its first-start self-signed certificate: this is loopback
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = _SNIConnection(host, self.https_port, context=context, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Host": host, "Connection": "close"})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        return resp.status, data if isinstance(data, dict) else {}

    def version(self, env: str) -> str:
        status, data = self.https(PROD_HOST if env == "production" else STAGING_HOST)
        assert status == 200, (status, data)
        return data.get("version", "")

    def container_id(self, name: str) -> str:
        return run(["docker", "inspect", "--format", "{{.Id}}", name]).stdout.strip()

    def deploy_log(self, env: str) -> list[dict]:
        path = self.path(env) / "logs" / "deploys.log"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_stack(base: Path, project: str, prod: Path, http_port: int, https_port: int) -> None:
    variables = {
        "EXTRA_CA_CERTS": host_ca_bundle(),
        "APP_VERSION": "v1",
        "HTTP_PUBLISH": f"127.0.0.1:{http_port}",
        "HTTPS_PUBLISH": f"127.0.0.1:{https_port}",
    }
    env = {**os.environ, **variables}
    for name in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"):
        env.pop(name, None)
    compose = ["docker", "compose", "-p", project, "--project-directory", str(prod), "-f",
               str(prod / "docker-compose.yml")]  # fmt: skip
    # the app services' env files, as `fab setup` renders them (deploys then keep them fresh)
    appenv.refresh(prod, appenv.SERVER, {})
    run([*compose, "build"], env=env, timeout=1800)
    # the pre-deploy backup's image (a `tools` profile service: built when named)
    run([*compose, "build", "backup"], env=env, timeout=1800)
    up = run([*compose, "up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S)], env=env,
             check=False, timeout=UP_TIMEOUT_S + 120)  # fmt: skip
    if up.returncode != 0:
        logs = run([*compose, "logs", "--no-color", "--tail", "40"], env=env, check=False)
        raise AssertionError(f"the stack did not come up:\n{up.stderr[-3000:]}\n{logs.stdout}")
    # one-off containers, as a deploy runs them: `docker exec` into the running app would
    # put a second Django beside gunicorn inside the same memory limit (staging's 100m
    # kills it)
    for service in ("django_prod", "django_staging"):
        run([*compose, "run", "--rm", "--no-deps", "-T", service, "python", "manage.py",
             "migrate", "--noinput"], env=env, timeout=600)  # fmt: skip


def stop_stack(project: str, prod: Path) -> None:
    compose = ["docker", "compose", "-p", project, "--project-directory", str(prod), "-f",
               str(prod / "docker-compose.yml")]  # fmt: skip
    run([*compose, "down", "-v", "--remove-orphans", "--timeout", "20"], check=False, timeout=300)
    for label in (cmd.LABEL_ENV, f"{cmd.LABEL_ENV}.oneoff"):
        ids = run(["docker", "ps", "-aq", "--filter", f"label={label}"], check=False).stdout
        if ids.split():
            run(["docker", "rm", "-f", *ids.split()], check=False)
    tags = run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}",
                cmd.IMAGE_REPO], check=False).stdout.split()  # fmt: skip
    releases = [t for t in tags if t.split(":", 1)[1].startswith(("production-", "staging-"))]
    if releases:
        run(["docker", "image", "rm", *releases], check=False)


def age_recipient() -> str:
    from opskit.age import X25519Identity

    return str(X25519Identity.generate().recipient)


@contextmanager
def deploy_server(base: Path, ssh_host) -> Iterator[DeployServer]:
    """The whole server, torn down afterwards (volumes, release containers and tags)."""
    with stack_lock():
        remove_leftover_test_stacks()
        origin = seed_origin(base)
        srv = base / "home" / "ubuntu"
        prod = srv / "main" / "ai-ia-backend"
        staging = srv / "staging" / "ai-ia-backend"
        run(["git", "clone", "-q", "-b", "main", origin, prod])
        run(["git", "clone", "-q", "-b", "staging", origin, staging])
        for checkout, example in ((prod, "prod.env.example"), (staging, "staging.env.example")):
            write_private(
                checkout / ".env",
                env_from_example(ROOT / "config" / example, BACKUP_AGE_RECIPIENT=age_recipient()),
            )
        # the stack reads staging's settings from .env.staging beside production's
        (prod / ".env.staging").symlink_to(staging / ".env")
        project = f"{TEST_PROJECT_PREFIX}deploy_{uuid.uuid4().hex[:8]}"
        http_port, https_port = free_port(), free_port()
        registry = start_registry(base)
        try:
            start_stack(base, project, prod, http_port, https_port)
            yield DeployServer(
                base, origin, prod, staging, project, http_port, https_port, ssh_host, registry
            )
        finally:
            stop_stack(project, prod)
            registry.service.stop()


# --- traffic and memory while a deploy runs ---------------------------------------------------


@dataclass
class Load:
    """A bounded loop of requests through nginx while something happens to the stack.

    `workers` threads send `rate` requests per second in all to `path` (the notes API:
    a page that reads the database), each on a connection of its own; one more thread asks
    /health/ twice a second which version answers. Every answer other than 200 counts as
    a failure, and so does every connection error.
    """

    server: DeployServer
    host: str
    rate: float = 25.0
    workers: int = 8
    path: str = "/api/notes/"
    max_s: float = 900.0
    results: list[tuple[float, int | str, str]] = field(default_factory=list)
    failed: list[tuple[float, str, int | str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _one(self, path: str) -> tuple[int | str, dict]:
        try:
            return self.server.https(self.host, path)
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}", {}

    def _worker(self, offset: float, path: str, interval: float) -> None:
        start = time.monotonic()
        n = 0
        while not self._stop.is_set() and time.monotonic() - start < self.max_s:
            delay = start + offset + n * interval - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            n += 1
            t = time.monotonic()
            status, data = self._one(path)
            version = str(data.get("version", "")) if path == "/health/" else ""
            with self._lock:
                self.results.append((t, status, version))
                if status != 200:
                    self.failed.append((t, path, status, json.dumps(data)[:300]))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        jobs = [(i / self.rate, self.path, self.workers / self.rate) for i in range(self.workers)]
        jobs.append((0.0, "/health/", 0.5))
        for args in jobs:
            thread = threading.Thread(target=self._worker, args=args, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.seconds = time.monotonic() - self.started

    @property
    def failures(self) -> list[tuple[float, str, int | str, str]]:
        return list(self.failed)

    @property
    def per_second(self) -> float:
        return len(self.results) / max(self.seconds, 1e-9)

    def versions(self) -> list[str]:
        """The versions /health/ reported, in the order they were first seen."""
        seen: list[str] = []
        for _, status, version in sorted(self.results):
            if status == 200 and version and version not in seen:
                seen.append(version)
        return seen

    def summary(self) -> str:
        return (
            f"{len(self.results)} requests in {self.seconds:.1f}s ({self.per_second:.1f}/s) "
            f"through nginx to {self.host}: {len(self.failed)} failed; versions seen "
            f"{' -> '.join(self.versions())}"
        )


def _is_stack_container(name: str) -> bool:
    guide = {"aiia_nginx", "aiia_postgresql", "aiia_pgbouncer", "aiia_redis"}
    return name in guide or name.startswith(("aiia_django_prod", "aiia_django_staging"))


@dataclass
class MemorySampler:
    """The stack's containers' memory, sampled in a loop while something happens.

    Read from each container's memory cgroup (v1 or v2) as `docker stats` computes it
    (usage less inactive file cache), so a sample takes milliseconds and the short overlap
    of two releases is not missed; `docker stats` itself where the cgroup cannot be read.
    """

    interval_s: float = 0.2
    peak_total_mb: float = 0.0
    peak_at: dict[str, float] = field(default_factory=dict)
    peak_daemons: list = field(default_factory=list)
    samples: int = 0
    overlap_samples: int = 0  # samples with two releases of one environment running

    def __post_init__(self) -> None:
        self._stop = threading.Event()

    @staticmethod
    def _cgroup_mb(cid: str) -> float | None:
        for usage, stat, inactive in (
            (f"/sys/fs/cgroup/memory/docker/{cid}/memory.usage_in_bytes",
             f"/sys/fs/cgroup/memory/docker/{cid}/memory.stat", "total_inactive_file"),
            (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.current",
             f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/memory.stat", "inactive_file"),
        ):  # fmt: skip
            try:
                used = int(Path(usage).read_text())
                fields = dict(line.split() for line in Path(stat).read_text().splitlines())
            except (OSError, ValueError):
                continue
            cache = int(fields.get(inactive, 0))
            return (used - cache if cache < used else used) / (1024 * 1024)
        return None

    def sample(self) -> dict[str, float]:
        from bench.memory import parse_stats_line

        listed = run(["docker", "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"],
                     check=False).stdout.split("\n")  # fmt: skip
        ids = dict(line.split(" ", 1)[::-1] for line in listed if " " in line)
        names = [n for n in ids if _is_stack_container(n)]
        usage: dict[str, float] = {}
        missing = []
        for name in names:
            mb = self._cgroup_mb(ids[name])
            if mb is None:
                missing.append(name)
            else:
                usage[name] = mb
        if missing:
            out = run(["docker", "stats", "--no-stream", "--format", "{{json .}}", *missing],
                      check=False).stdout  # fmt: skip
            for line in out.splitlines():
                try:
                    name, used = parse_stats_line(line)
                except (ValueError, KeyError):
                    continue
                usage[name] = used / (1024 * 1024)
        return usage

    def _loop(self) -> None:
        from bench.memory import daemons, identities

        while not self._stop.is_set():
            usage = self.sample()
            self.samples += 1
            if sum(n.startswith(("aiia_django_prod_", "aiia_django_staging_")) for n in usage):
                self.overlap_samples += 1
            total = sum(usage.values())
            if total > self.peak_total_mb:
                self.peak_total_mb, self.peak_at = total, usage
                try:
                    # the daemons as they serve these containers: dockerd and containerd,
                    # and only the shims and proxies of the stack (the engine is shared)
                    ids, addresses = identities(sorted(usage))
                    self.peak_daemons = daemons(ids, addresses)
                except SystemExit:  # a container went away between the two reads
                    pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    @property
    def peak_with_daemons_mb(self) -> float:
        return self.peak_total_mb + sum(d.pss_mb for d in self.peak_daemons)

    def report(self) -> str:
        rows = [f"    {name:<45} {mb:7.1f} MB" for name, mb in sorted(self.peak_at.items())]
        rows += [f"    {d.name:<45} {d.pss_mb:7.1f} MB (PSS, {d.processes} processes)"
                 for d in self.peak_daemons]  # fmt: skip
        return (
            f"peak memory of the stack's containers: {self.peak_total_mb:.1f} MB "
            f"({self.samples} samples, {self.overlap_samples} with two releases of one "
            f"environment running); with the Docker daemons serving "
            f"them {self.peak_with_daemons_mb:.1f} MB of the 512 MB box\n" + "\n".join(rows)
        )


@contextmanager
def ssh_server(base: Path) -> Iterator[object]:
    """sshd on a loopback port, as the `ssh_host` fixture starts it (for bench/deploy.py)."""
    from tests.harness import fixtures

    gen = fixtures.ssh_host.__wrapped__(_Factory(base))
    host = next(gen)
    try:
        yield host
    finally:
        gen.close()


class _Factory:
    """The one method of pytest's tmp_path_factory that the ssh_host fixture uses."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def mktemp(self, name: str) -> Path:
        path = self.base / f"{name}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True)
        return path
