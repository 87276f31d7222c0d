"""Session fixtures for the real servers run natively on loopback (the `services` tier).

Each server is started with the project's own config files and, where the image has one,
its own entrypoint script, so a test of the config is a test of what ships.
"""

from __future__ import annotations

import csv
import io
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from tests.harness.core import (
    ROOT,
    PrerequisiteError,
    Service,
    Started,
    ensure,
    free_port,
    port_open,
    require_binary,
    wait_until,
)

# =====================================================================================
# PostgreSQL and PgBouncer: postgres_server, app_databases, pgbouncer_server
# =====================================================================================

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_OS_USER = "postgres"  # root cannot run postgres; pgbouncer refuses root as well


def _pg_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        ensure("packages")  # the postgresql-common package creates the user
        try:
            return pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise PrerequisiteError(
                "OS user postgres is missing after scripts/ensure.sh packages (postgresql-15)"
            ) from None


def _pg_binary(name: str) -> str:
    path = PG_BIN / name
    if not os.access(path, os.X_OK):
        ensure("packages")
    if not os.access(path, os.X_OK):
        raise PrerequisiteError(f"{path} missing after scripts/ensure.sh packages (postgresql-15)")
    return str(path)


def _owned_tmpdir(prefix: str, owner: pwd.struct_passwd) -> Path:
    """A fresh directory the service's OS user owns.

    Not under tmp_path_factory: pytest keeps its base directory mode 0700 for root and
    resets that at every session start, so the postgres user could not reach files there.
    mkdtemp gives the same uniqueness.
    """
    path = Path(tempfile.mkdtemp(prefix=f"aiia-{prefix}-", dir="/tmp"))
    os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o700)
    return path


@contextmanager
def _owned_root(prefix: str, owner: pwd.struct_passwd, conf: Path) -> Iterator[Path]:
    """A server's fresh root (see _owned_tmpdir) with `conf` copied to root/conf for
    `owner`, removed with everything in it afterwards."""
    root = _owned_tmpdir(prefix, owner)
    try:
        _copy_owned(conf, root / "conf", owner)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _private_dir(path: Path, owner: pwd.struct_passwd) -> Path:
    """A 0700 directory of `owner`'s (a socket's or a rendered secret's)."""
    path.mkdir(mode=0o700)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _copy_owned(src: Path, dst: Path, owner: pwd.struct_passwd) -> Path:
    """Copy a config folder of the repo for the service's OS user (the repo may be private)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("Dockerfile", "*.md"))
    for path in [dst, *dst.rglob("*")]:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return dst


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def _write_secret(path: Path, text: str, owner: pwd.struct_passwd) -> Path:
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _wait_service(service: Service, probe, *, timeout: float, what: str) -> None:
    """Wait for `probe`; a service that exits meanwhile fails at once with its log."""

    def check():
        return (not service.running) or probe()

    wait_until(check, timeout=timeout, what=what)
    service.check_alive()


def _run(argv: list[str], *, what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a client command; a hang (a login nobody answers) fails instead of blocking."""
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} did not finish within 120 s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


@dataclass(kw_only=True)
class NativeServer(Started):
    """A server run natively from its own directory `root`: the copy of its repo folder
    in root/conf, its output in root/LOG_NAME; `with server:` starts and stops it."""

    root: Path
    host: str = "127.0.0.1"
    service: Service | None = field(default=None, repr=False)

    LOG_NAME: ClassVar[str]
    CONF_NAME: ClassVar[str]  # its main config file in confdir
    # how it stops: the signal of its fast but clean shutdown, and the seconds that may take
    STOP: ClassVar[tuple[int, float]] = (signal.SIGTERM, 15)

    @property
    def confdir(self) -> Path:
        """The copy of the server's folder of the repo (postgres/, redis/ ...) that it reads."""
        return self.root / "conf"

    @property
    def conf_path(self) -> Path:
        return self.confdir / self.CONF_NAME

    @property
    def log_path(self) -> Path:
        return self.root / self.LOG_NAME

    @property
    def run_dir(self) -> Path:
        """What it makes while it runs: sockets, pid file, rendered secrets (0700)."""
        return self.root / "run"

    def serve(self, argv: list[str], ready, *, timeout: float, what: str, **kwargs):
        """Run `argv` in root (output to log_path) until `ready()`; kwargs go to Service."""
        self.service = Service(argv, log=self.log_path, cwd=self.root, **kwargs).start()
        _wait_service(self.service, ready, timeout=timeout, what=what)
        return self

    def stop(self) -> None:
        if self.service is not None:
            sig, timeout = self.STOP
            self.service.stop(sig=sig, timeout=timeout)


@dataclass(kw_only=True)
class PostgresServer(NativeServer):
    """PostgreSQL 15 started by postgres/docker-entrypoint.sh with postgres/*.conf.

    confdir holds what the server reads (config_file, hba_file)."""

    owner: pwd.struct_passwd
    port: int = field(default_factory=free_port)
    superuser_password: str = field(default_factory=_new_password, repr=False)
    pgbouncer_auth_password: str = field(default_factory=_new_password, repr=False)
    superuser: str = "postgres"

    LOG_NAME = "postgres.log"
    CONF_NAME = "postgresql.conf"
    # SIGINT = fast shutdown; SIGTERM (smart) would wait for PgBouncer's connections
    STOP = (signal.SIGINT, 30)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """unix_socket_directories: the run directory."""
        return self.run_dir

    def server_options(self) -> list[str]:
        """What the native server sets on top of postgresql.conf: where it listens."""
        return [
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
        ]  # fmt: skip

    def entrypoint_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PGDATA": str(self.datadir),
            "POSTGRES_CONFIG_DIR": str(self.confdir),
            "POSTGRES_SUPERUSER_PASSWORD": self.superuser_password,
            "PGBOUNCER_AUTH_PASSWORD": self.pgbouncer_auth_password,
        }

    def start(self) -> PostgresServer:
        # the entrypoint's temporary server listens on the socket only: TCP answers when
        # init is done and the real server runs; pg_isready, not an open port, because the
        # port opens before recovery ends ("the database system is starting up")
        return self.serve(
            ["bash", str(self.confdir / "docker-entrypoint.sh"), *self.server_options()],
            self.ready,
            timeout=120,
            what=f"PostgreSQL on {self.host}:{self.port} (log: {self.log_path})",
            env=self.entrypoint_env(),
            user=PG_OS_USER,
        )

    def ready(self) -> bool:
        """pg_isready over TCP: the server accepts connections (not starting up)."""
        argv = [_pg_binary("pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=30).returncode == 0

    def psql(
        self,
        sql: str,
        db: str = "postgres",
        user: str | None = None,
        password: str | None = None,
    ) -> str:
        """Run `sql` over TCP (scram); returns psql's unaligned tuples-only stdout."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        env = {**os.environ, "PGPASSWORD": password or "", "PGCONNECT_TIMEOUT": "10"}
        argv = [
            _pg_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", user, "-d", db,
        ]  # fmt: skip
        return _run(argv, input=sql, env=env, what=f"psql as {user} on {db}").stdout.rstrip("\n")

    def psql_socket(self, sql: str, db: str = "postgres", user: str = "postgres") -> str:
        """Run `sql` over the unix socket as OS user postgres (peer, map=ops in pg_ident)."""
        argv = [
            _pg_binary("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, "-d", db,
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        return _run(
            argv, input=sql, env=env, user=PG_OS_USER, cwd=self.root, what=f"psql as {user}"
        ).stdout.rstrip("\n")

    def init_databases(self, **env: str) -> subprocess.CompletedProcess:
        """Run postgres/init-databases.sh (the entrypoint's init step) against this server.

        `env` adds POSTGRES_DB/POSTGRES_USER/POSTGRES_PASSWORD, POSTGRES_ENV_FILES, ...;
        PGBOUNCER_AUTH_PASSWORD is this server's. Not checked: callers read returncode.
        """
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
            "PSQL": _pg_binary("psql"),
            "PGBOUNCER_AUTH_PASSWORD": self.pgbouncer_auth_password,
            **env,
        }
        return subprocess.run(
            ["bash", str(self.confdir / "init-databases.sh")],
            env=full_env,
            user=PG_OS_USER,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def dsn(self, db: str, user: str, password: str) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "dbname": db, "user": user,
                "password": password}  # fmt: skip


@dataclass(frozen=True)
class AppDatabase:
    """One environment's database as its env file declares it."""

    env: str
    db: str
    user: str
    password: str = field(repr=False)
    env_file: Path


@dataclass(kw_only=True)
class PgBouncerServer(NativeServer):
    """PgBouncer started by pgbouncer/docker-entrypoint.sh with pgbouncer/*.ini."""

    port: int
    env: dict[str, str] = field(repr=False)

    LOG_NAME = "pgbouncer.log"
    CONF_NAME = "pgbouncer.ini"  # the template: what it reads is rendered into run_dir
    # SIGTERM = immediate shutdown (SIGINT would wait for clients to finish); run_dir holds
    # the rendered pgbouncer.ini, userlist.txt (0600) and the admin socket
    STOP = (signal.SIGTERM, 15)

    def start(self) -> PgBouncerServer:
        return self.serve(
            ["bash", str(self.confdir / "docker-entrypoint.sh")],
            lambda: port_open(self.host, self.port),
            timeout=30,
            what=f"PgBouncer on {self.host}:{self.port} (log: {self.log_path})",
            env=self.env,
            user=PG_OS_USER,
        )

    def admin(self, sql: str, user: str = "postgres") -> str:
        """A console command (SHOW POOLS, SHOW CONFIG, SET ...) over the socket.

        As OS user postgres: `postgres` is admin_users (peer), `aiia` is stats_users.
        """
        argv = [
            _pg_binary("psql"), "-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.run_dir), "-p", str(self.port), "-U", user, "-d", "pgbouncer",
            "-c", sql,
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        return _run(
            argv, env=env, user=PG_OS_USER, cwd=self.root, what=f"pgbouncer console: {sql}"
        ).stdout.rstrip("\n")

    def admin_rows(self, sql: str, user: str = "postgres") -> list[dict[str, str]]:
        """A console SHOW command as rows keyed by column name."""
        argv = [
            _pg_binary("psql"), "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.run_dir), "-p", str(self.port), "-U", user, "-d", "pgbouncer",
            "-c", sql,
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        out = _run(
            argv, env=env, user=PG_OS_USER, cwd=self.root, what=f"pgbouncer console: {sql}"
        ).stdout
        return list(csv.DictReader(io.StringIO(out)))


def _env_file_value(path: Path, key: str) -> str:
    for line in reversed(path.read_text().splitlines()):
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise KeyError(f"{path.name}: no {key}")


@contextmanager
def running_postgres(conf: Path = ROOT / "postgres") -> Iterator[PostgresServer]:
    """A PostgreSQL 15 server on 127.0.0.1 and a free port, run as OS user postgres.

    Started through postgres/docker-entrypoint.sh (initdb, cluster roles, then the real
    server) with postgres/postgresql.conf, pg_hba.conf and pg_ident.conf; `conf` is the
    folder copied in their place (the repo's postgres/ unless a benchmark swaps a file).
    """
    _pg_binary("postgres")
    owner = _pg_os_user()
    with _owned_root("postgres", owner, conf) as root:
        _private_dir(root / "run", owner)
        with PostgresServer(root=root, owner=owner) as server:
            yield server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """running_postgres() with the repo's postgres/ folder, for the whole session."""
    with running_postgres() as server:
        yield server


def create_app_databases(server: PostgresServer) -> dict[str, AppDatabase]:
    """aiia_prod and aiia_staging, created by postgres/init-databases.sh from env files.

    Names come from config/prod.env.example and config/staging.env.example; passwords are
    fresh. Keys: "production", "staging".
    """
    examples = {"production": "prod.env.example", "staging": "staging.env.example"}
    databases: dict[str, AppDatabase] = {}
    for env, example in examples.items():
        source = ROOT / "config" / example
        db = _env_file_value(source, "POSTGRES_DB")
        user = _env_file_value(source, "POSTGRES_USER")
        password = _new_password()
        env_file = _write_secret(
            server.root / f"{env}.env",
            f"POSTGRES_DB={db}\nPOSTGRES_USER={user}\nPOSTGRES_PASSWORD={password}\n",
            server.owner,
        )
        databases[env] = AppDatabase(env, db, user, password, env_file)
    files = " ".join(str(d.env_file) for d in databases.values())
    proc = server.init_databases(POSTGRES_ENV_FILES=files)
    if proc.returncode != 0:
        raise RuntimeError(f"postgres/init-databases.sh failed:\n{proc.stderr}{proc.stdout}")
    return databases


@pytest.fixture(scope="session")
def app_databases(postgres_server: PostgresServer) -> dict[str, AppDatabase]:
    """create_app_databases() on the session's postgres_server."""
    return create_app_databases(postgres_server)


@contextmanager
def running_pgbouncer(postgres_server: PostgresServer) -> Iterator[PgBouncerServer]:
    """PgBouncer 1.18 on 127.0.0.1 and a free port in front of postgres_server.

    Rendered and started by pgbouncer/docker-entrypoint.sh from pgbouncer/pgbouncer.ini,
    databases.ini and pg_hba.conf; app roles authenticate through auth_query.
    """
    require_binary("pgbouncer", "packages")
    with _owned_root("pgbouncer", _pg_os_user(), ROOT / "pgbouncer") as root:
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "LANG": "C.UTF-8",
            "PGBOUNCER_AUTH_PASSWORD": postgres_server.pgbouncer_auth_password,
            "PGBOUNCER_CONFIG_DIR": str(root / "conf"),
            "PGBOUNCER_RUN_DIR": str(root / "run"),
            "PGBOUNCER_LISTEN_ADDR": "127.0.0.1",
            "PGBOUNCER_LISTEN_PORT": str(port),
            "PGBOUNCER_SERVER_HOST": postgres_server.host,
            "PGBOUNCER_SERVER_PORT": str(postgres_server.port),
        }
        with PgBouncerServer(port=port, root=root, env=env) as bouncer:
            yield bouncer


@pytest.fixture(scope="session")
def pgbouncer_server(
    postgres_server: PostgresServer, app_databases: dict[str, AppDatabase]
) -> PgBouncerServer:
    """running_pgbouncer() in front of postgres_server, its app databases created first."""
    with running_pgbouncer(postgres_server) as bouncer:
        yield bouncer


# =====================================================================================
# Redis and nginx: redis_server, nginx_server
# =====================================================================================

REDIS_USER_NAME = "redis"
NGINX_WORKER_USER = "www-data"


def _example_value(example: str, key: str) -> str:
    return _env_file_value(ROOT / "config" / example, key)


@dataclass(kw_only=True)
class RedisServer(NativeServer):
    """redis-server with redis/redis.conf and an ACL file from redis/render-acl.sh.

    Runs as OS user redis, like the image; the command line sets only port, bind,
    aclfile and dir on top of the shipped file.
    """

    # env -> (user, password, key_prefix, db), from config/<env>.env.example
    users: dict[str, tuple[str, str, str, int]] = field(repr=False)  # passwords inside
    owner: pwd.struct_passwd = field(repr=False)
    port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=_new_password, repr=False)

    LOG_NAME = "redis.log"
    CONF_NAME = "redis.conf"

    @property
    def acl_path(self) -> Path:
        return self.run_dir / "users.acl"

    def render_env(self) -> dict[str, str]:
        """What the image's environment would hold: the renderer reads only this."""
        prod_user, prod_password, prod_prefix, _ = self.users["production"]
        stg_user, stg_password, stg_prefix, _ = self.users["staging"]
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "REDIS_ADMIN_PASSWORD": self.admin_password,
            "REDIS_PROD_USER": prod_user,
            "REDIS_PROD_PASSWORD": prod_password,
            "REDIS_PROD_KEY_PREFIX": prod_prefix,
            "REDIS_STAGING_USER": stg_user,
            "REDIS_STAGING_PASSWORD": stg_password,
            "REDIS_STAGING_KEY_PREFIX": stg_prefix,
        }

    def server_options(self) -> list[str]:
        return [
            "--port", str(self.port),
            "--bind", self.host,
            "--aclfile", str(self.acl_path),
            "--dir", str(self.root),
        ]  # fmt: skip

    def start(self) -> RedisServer:
        _run(
            ["sh", str(self.confdir / "render-acl.sh"), str(self.acl_path)],
            env=self.render_env(),
            user=REDIS_USER_NAME,
            cwd=self.root,
            what="redis/render-acl.sh",
        )

        def ready() -> bool:
            return port_open(self.host, self.port) and self.cli("PING") == "PONG"

        return self.serve(
            [require_binary("redis-server", "packages"), str(self.conf_path),
             *self.server_options()],
            ready,
            timeout=30,
            what=f"Redis on {self.port}",
            user=REDIS_USER_NAME,
        )  # fmt: skip

    def cli(self, *args: str, user: str | None = None, password: str | None = None) -> str:
        """redis-cli ARGS as `user` (default: admin); returns its stdout, stripped.

        Error replies come back as text ("NOPERM ...", "WRONGPASS ..."), as redis-cli
        prints them; the password travels in REDISCLI_AUTH, not in argv.
        """
        if user is None:
            user, password = "admin", self.admin_password
        elif password is None:
            password = next((p for u, p, _, _ in self.users.values() if u == user), "")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDISCLI_AUTH": password}
        argv = [require_binary("redis-cli", "packages"), "--no-auth-warning",
                "-h", self.host, "-p", str(self.port), "--user", user, *args]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30)
        return (proc.stdout + proc.stderr).strip()


@contextmanager
def running_redis(conf: Path = ROOT / "redis") -> Iterator[RedisServer]:
    """Redis 7 on 127.0.0.1 and a free port with redis/redis.conf and rendered ACL users.

    users: "production" and "staging" -> (user, password, key_prefix, db), names and db
    numbers from config/prod.env.example and config/staging.env.example, fresh passwords.
    `conf` is the folder copied as the server's (the repo's redis/ unless a benchmark
    swaps redis.conf).
    """
    require_binary("redis-server", "packages")
    try:
        owner = pwd.getpwnam(REDIS_USER_NAME)
    except KeyError:
        ensure("packages")
        owner = pwd.getpwnam(REDIS_USER_NAME)
    with _owned_root("redis", owner, conf) as root:
        _private_dir(root / "run", owner)
        users = {}
        for env, example in (("production", "prod.env.example"),
                             ("staging", "staging.env.example")):  # fmt: skip
            users[env] = (
                _example_value(example, "REDIS_USER"),
                _new_password(),
                _example_value(example, "REDIS_KEY_PREFIX"),
                int(_example_value(example, "REDIS_DB")),
            )
        with RedisServer(users=users, root=root, owner=owner) as server:
            yield server


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """running_redis() with the repo's redis/ folder, for the whole session."""
    with running_redis() as server:
        yield server


# --- nginx -----------------------------------------------------------------------------

NGINX_SITE_NAMES = ("eduaiia.com", "www.eduaiia.com", "staging.eduaiia.com",
                    "devstatus.eduaiia.com")  # fmt: skip


@dataclass(kw_only=True)
class NginxServer(NativeServer):
    """nginx with the templates of nginx/ rendered by nginx/render.sh for loopback.

    Master as root, workers as www-data, exactly as in the image; only the values of
    nginx/defaults.env differ (ports, upstreams, certificate, roots, logs).
    """

    http_port: int
    https_port: int
    ca_cert: Path
    upstreams: dict[str, str]
    status_user: str
    status_password: str = field(repr=False)

    LOG_NAME = "nginx.out"  # the master's own output; its logs: error_log
    CONF_NAME = "nginx.conf"  # rendered by nginx/render.sh
    # SIGQUIT: graceful shutdown, workers finish what they serve
    STOP = (signal.SIGQUIT, 15)

    @property
    def access_log(self) -> Path:
        return self.root / "log" / "access.log"

    @property
    def error_log(self) -> Path:
        return self.root / "log" / "error.log"

    def site_root(self, site: str) -> Path:
        """Holds static/ and media/ for "prod" and "staging"; "status" is the status page."""
        return self.root / "www" / site

    def render_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "NGINX_HTTP_LISTEN": f"{self.host}:{self.http_port}",
            "NGINX_HTTPS_LISTEN": f"{self.host}:{self.https_port}",
            "NGINX_PROD_UPSTREAM": self.upstreams["prod"],
            "NGINX_STAGING_UPSTREAM": self.upstreams["staging"],
            "NGINX_TLS_CERT": str(self.root / "tls" / "cert.pem"),
            "NGINX_TLS_KEY": str(self.root / "tls" / "key.pem"),
            "NGINX_PROD_ROOT": str(self.site_root("prod")),
            "NGINX_STAGING_ROOT": str(self.site_root("staging")),
            "NGINX_STATUS_ROOT": str(self.site_root("status")),
            "NGINX_ACME_ROOT": str(self.site_root("acme")),
            "NGINX_RUN_DIR": str(self.run_dir),
            "NGINX_ACCESS_LOG": str(self.access_log),
            "NGINX_ACCESS_LOG_FILE": str(self.root / "log" / "access-file.log"),
            "NGINX_ERROR_LOG": str(self.error_log),
            "STATUS_USER": self.status_user,
            "STATUS_PASSWORD": self.status_password,
        }

    def nginx(self, *args: str) -> subprocess.CompletedProcess:
        """The nginx binary on this instance's files (e.g. nginx("-t"), nginx("-T"))."""
        argv = [require_binary("nginx", "packages"), "-p", str(self.root),
                "-c", str(self.conf_path), "-e", str(self.error_log), *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def render(self) -> None:
        _run(
            ["sh", str(ROOT / "nginx" / "render.sh"), str(self.confdir)],
            env=self.render_env(),
            what="nginx/render.sh",
        )
        check = self.nginx("-t", "-q")
        if check.returncode != 0:
            raise PrerequisiteError(f"nginx -t refused the rendered config:\n{check.stderr}")

    def start(self) -> NginxServer:
        self.render()
        argv = [require_binary("nginx", "packages"), "-p", str(self.root),
                "-c", str(self.conf_path), "-e", str(self.error_log)]  # fmt: skip
        return self.serve(
            argv,
            lambda: port_open(self.host, self.https_port) and port_open(self.host, self.http_port),
            timeout=30,
            what=f"nginx on {self.http_port}/{self.https_port} (log: {self.error_log})",
        )


def make_nginx(
    root: Path, upstreams: dict[str, str], cls: type[NginxServer] = NginxServer
) -> NginxServer:
    """Lay out certificates and roots under `root` (not yet started); the status page is
    the collector's to write (tests/services/test_nginx.py runs it).

    `root` must be reachable by the www-data workers (see _world_tmpdir); `cls` is
    NginxServer or a variant of it (a benchmark's).
    """
    from opskit import tls

    paths = tls.ensure_local_certificates(root / "tls", NGINX_SITE_NAMES)
    paths.ca_key.unlink()  # the test needs only the CA's certificate
    www = pwd.getpwnam(NGINX_WORKER_USER)
    for site in ("prod", "staging", "status", "acme"):
        (root / "www" / site).mkdir(parents=True)
    for site in ("prod", "staging"):
        for sub in ("static", "media"):
            (root / "www" / site / sub).mkdir()
        (root / "www" / site / "static" / "app.css").write_text(f"/* {site} */ body {{}}\n")
    (root / "log").mkdir()
    (root / "run").mkdir()
    os.chown(root / "run", 0, www.pw_gid)
    return cls(
        http_port=free_port(),
        https_port=free_port(),
        ca_cert=paths.ca_cert,
        root=root,
        upstreams=upstreams,
        status_user="ops",
        status_password=secrets.token_urlsafe(18),
    )


def _world_tmpdir(prefix: str) -> Path:
    """A fresh directory www-data may traverse (0755); private files inside stay 0600."""
    path = Path(tempfile.mkdtemp(prefix=f"aiia-{prefix}-", dir="/tmp"))
    path.chmod(0o755)
    return path


class EchoUpstream:
    """A small real HTTP/1.1 server standing in for gunicorn: answers JSON about the
    request it got, sets the security headers nginx must replace, and 404s on /missing.
    """

    def __init__(self, name: str) -> None:
        import http.server
        import json
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status = 404 if self.path.startswith("/missing") else 200
                body = json.dumps({
                    "upstream": outer.name, "path": self.path, "method": self.command,
                    "client_port": self.client_address[1],
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }).encode()  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                # what Django's middleware would send; nginx's values must win
                self.send_header("X-Frame-Options", "DENY")
                self.send_header("Content-Security-Policy", "default-src *")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, format, *args):  # noqa: A002 - the base class's name
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EchoUpstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def nginx_upstreams() -> dict[str, EchoUpstream]:
    """Stand-ins for django_prod and django_staging: keys "prod", "staging"."""
    ups = {name: EchoUpstream(name).start() for name in ("prod", "staging")}
    yield ups
    for up in ups.values():
        up.stop()


@contextmanager
def running_nginx(
    upstreams: dict[str, str], *, prefix: str = "nginx", cls: type[NginxServer] = NginxServer
) -> Iterator[NginxServer]:
    """nginx on 127.0.0.1 (free http_port / https_port) with the shipped templates.

    Certificates for the four site names come from a test CA (ca_cert); "prod" and
    "staging" are proxied to `upstreams`; the status page and static files live in
    root/www, a fresh directory (named after `prefix`) removed afterwards.
    """
    require_binary("nginx", "packages")
    require_binary("envsubst", "packages")
    root = _world_tmpdir(prefix)
    try:
        with make_nginx(root, upstreams, cls) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def nginx_server(nginx_upstreams: dict[str, EchoUpstream]) -> NginxServer:
    """running_nginx() in front of nginx_upstreams, for the whole session."""
    with running_nginx({k: v.address for k, v in nginx_upstreams.items()}) as server:
        yield server


# --- the app's environment -------------------------------------------------------------


@pytest.fixture(scope="session")
def app_environment(
    pgbouncer_server: PgBouncerServer,
    app_databases: dict[str, AppDatabase],
    redis_server: RedisServer,
):
    """app_environment(environment, workdir): tests.harness.django_app.app_env for
    "production" or "staging", pointed at the session's PgBouncer, database and Redis."""
    from tests.harness.django_app import app_env

    def environment(name: str, workdir: Path) -> dict:
        return app_env(
            name,
            workdir=workdir,
            pgbouncer=pgbouncer_server,
            database=app_databases[name],
            redis_server=redis_server,
        )

    return environment
