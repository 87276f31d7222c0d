"""The stacks bench/load.py puts under load, started natively on loopback outside pytest.

Everything is started by the services tier's own code (tests/harness): the same
entrypoints, config folders and gunicorn wrapper, so the tuned stack here is the one the
tests prove. What this module adds is the baseline (stock settings in place of ours) and
an nginx variant without rate limits.

tuned   nginx (the shipped templates) -> gunicorn gthread with app/gunicorn.conf.py
        (production: 2 workers x 2 threads) -> PgBouncer (transaction pooling) ->
        PostgreSQL with postgres/postgresql.conf; Redis with redis/redis.conf
stock   what a Django deploy looks like without that tuning: gunicorn with its defaults
        (sync worker, `--workers 2`), Django's default database settings (a new
        PostgreSQL connection per request, CONN_MAX_AGE=0) straight to PostgreSQL, no
        PgBouncer, translations on (USE_I18N, Django's default); Django's default
        session engine and cache (sessions in the database, `db`, read with a query per
        request; the per-process LocMemCache), not the project's cached_db sessions
        over its Redis cache; PostgreSQL with the packaged sample postgresql.conf (all
        defaults). Same app, same roles and passwords (pg_hba.conf). Redis still runs,
        with an empty redis.conf (all defaults: no maxmemory), but the stock app does
        not use it. Until this baseline took Django's session and cache defaults it
        inherited the project's Redis-backed ones; with those, stock's logged-in /admin/
        cost about 7 % less stack CPU per answer in one side-by-side run (24.1 against
        26.1 ms, README "Tuned against stock").
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.core import ROOT, PrerequisiteError, Service
from tests.harness.django_app import APP, DjangoApp, app_env, manage
from tests.harness.native import (
    NginxServer,
    create_app_databases,
    running_pgbouncer,
    running_postgres,
    running_redis,
)
from tests.harness.native import running_nginx as harness_nginx

SITE = "eduaiia.com"
# what initdb copies into a new cluster: every setting commented out, so all defaults
PG_SAMPLE_CONF = Path("/usr/share/postgresql/15/postgresql.conf.sample")
# gunicorn with nothing but the worker count: sync worker, no preload, no recycling
STOCK_GUNICORN = ["aiia.wsgi:application", "--chdir", str(APP), "--workers", "2"]
# Django's defaults for a PostgreSQL database, over the project's PgBouncer-minded ones
STOCK_SETTINGS = '''"""Bench-only: the project's settings with Django's default database options."""
from aiia.settings import *  # noqa: F403

_db = DATABASES["default"]  # noqa: F405
for _key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS", "DISABLE_SERVER_SIDE_CURSORS"):
    _db.pop(_key, None)
for _key in ("prepare_threshold", "server_side_binding"):
    _db["OPTIONS"].pop(_key, None)
USE_I18N = True  # Django's default; the project turns translations off
# Django's defaults: sessions in the database, a per-process in-memory cache (the project
# keeps cached_db sessions over Redis: its tuning, not a stock deploy's)
SESSION_ENGINE = "django.contrib.sessions.backends.db"
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
'''


@dataclass
class Backend:
    """The app with its data layer, ready for nginx to proxy to."""

    name: str
    app: DjangoApp
    # role -> the server process (a session leader: its children share its session id)
    services: dict[str, Service]
    login: tuple[str, str]


def _conf_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("Dockerfile", "*.md"))
    return dst


def stock_postgres_conf(dst: Path) -> Path:
    """postgres/ with postgresql.conf replaced by the packaged sample (all defaults)."""
    if not PG_SAMPLE_CONF.is_file():
        raise PrerequisiteError(f"{PG_SAMPLE_CONF} missing (postgresql-15)")
    _conf_copy(ROOT / "postgres", dst)
    shutil.copyfile(PG_SAMPLE_CONF, dst / "postgresql.conf")
    return dst


def stock_redis_conf(dst: Path) -> Path:
    """redis/ with an empty redis.conf: Redis's built-in defaults (ACL users still rendered)."""
    _conf_copy(ROOT / "redis", dst)
    (dst / "redis.conf").write_text("# bench baseline: Redis defaults\n")
    return dst


def seed(env: dict, notes: int) -> None:
    """`notes` rows for /api/notes/ to list (it shows the newest 20)."""
    code = (
        "from core.models import Note\n"
        f"Note.objects.bulk_create([Note(title=f'bench note {{i}}', body='x' * 200) "
        f"for i in range({int(notes)})])\n"
    )
    manage(env, "shell", "--no-imports", "-c", code)


@contextmanager
def _prepared_app(
    workdir: Path,
    notes: int,
    *,
    front,
    database,
    redis_server,
    extra_env: dict | None = None,
    gunicorn_args=None,
) -> Iterator[tuple[DjangoApp, tuple[str, str]]]:
    """Production's app connecting to `front` (PgBouncer, or PostgreSQL itself for the
    baseline): migrated, an admin, `notes` notes; gunicorn runs while the block does."""
    env = app_env(
        "production", workdir=workdir, pgbouncer=front, database=database, redis_server=redis_server
    )
    env.update(extra_env or {})
    manage(env, "migrate", "--noinput")
    username, password = f"bench-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    # the password travels in the environment, never in argv
    manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": password},
        "createsuperuser",
        "--noinput",
        "--username",
        username,
        "--email",
        "ops@example.com",
    )
    seed(env, notes)
    app = DjangoApp(env, workdir)
    if gunicorn_args is not None:
        app.gunicorn_args = gunicorn_args
    with app:
        yield app, (username, password)


@contextmanager
def tuned_backend(workdir: Path, *, notes: int = 50) -> Iterator[Backend]:
    """Production's app and data layer with the project's config files."""
    with running_postgres() as pg:
        databases = create_app_databases(pg)
        with (
            running_pgbouncer(pg) as bouncer,
            running_redis() as redis,
            _prepared_app(
                workdir, notes, front=bouncer, database=databases["production"], redis_server=redis
            ) as (app, login),
        ):
            services = {
                "postgresql": pg.service,
                "pgbouncer": bouncer.service,
                "redis": redis.service,
                "gunicorn": app.service,
            }
            yield Backend("tuned", app, services, login)


@contextmanager
def stock_backend(workdir: Path, *, notes: int = 50) -> Iterator[Backend]:
    """The same app on stock settings, straight to PostgreSQL (see the module docstring)."""
    confs = Path(tempfile.mkdtemp(prefix="aiia-bench-stock-"))
    try:
        pg_conf = stock_postgres_conf(confs / "postgres")
        redis_conf = stock_redis_conf(confs / "redis")
        with running_postgres(pg_conf) as pg, running_redis(redis_conf) as redis:
            databases = create_app_databases(pg)
            settings_dir = workdir / "settings"
            settings_dir.mkdir()
            (settings_dir / "bench_stock_settings.py").write_text(STOCK_SETTINGS)
            # the app connects to PostgreSQL itself (app_env's `pgbouncer` is only where)
            with _prepared_app(
                workdir,
                notes,
                front=pg,
                database=databases["production"],
                redis_server=redis,
                extra_env={
                    "PYTHONPATH": str(settings_dir),
                    "DJANGO_SETTINGS_MODULE": "bench_stock_settings",
                },
                gunicorn_args=STOCK_GUNICORN,
            ) as (app, login):
                services = {
                    "postgresql": pg.service,
                    "redis": redis.service,
                    "gunicorn": app.service,
                }
                yield Backend("stock", app, services, login)
    finally:
        shutil.rmtree(confs, ignore_errors=True)


class BenchNginx(NginxServer):
    """The shipped nginx config, reached the way the internet reaches it.

    The load comes from 127.0.0.1, which nginx.conf counts as the server itself (its own
    probes get /health/'s details and skip the health cache); here loopback is an address
    of the internet like any other, as a user's browser would be. The subclasses take
    one piece of the tuning out (bench-only).
    """

    limits = True
    health_cache = True

    def render(self) -> None:
        super().render()
        conf = self.confdir / "nginx.conf"
        text = conf.read_text()
        loopback = r"(?m)^(\s*)(127\.0\.0\.1/32|::1/128) 1;$"
        if len(re.findall(loopback, text)) != 2:
            raise PrerequisiteError("nginx.conf's geo no longer lists 127.0.0.1/32 and ::1/128")
        text = re.sub(loopback, r"\1\2 0;", text)
        if not self.health_cache:
            # the zone as well, and with it nginx's cache manager process
            text, found = re.subn(r"(?m)^\s*proxy_cache_path\s[^;]*;", "", text)
            if found != 1:
                raise PrerequisiteError("nginx.conf no longer has one proxy_cache_path")
        conf.write_text(text)
        for site in (self.confdir / "sites").glob("*.conf"):
            text = site.read_text()
            if not self.limits:
                text = re.sub(r"(?m)^(\s*)limit_req\s[^\n]*$", r"\1# limit_req: off", text)
            if not self.health_cache:
                text = re.sub(
                    r"(?m)^(\s*)proxy_(cache|cache_\w+|no_cache|ignore_headers)\s[^\n]*$",
                    r"\1# health cache: off",
                    text,
                )
            site.write_text(text)
        check = self.nginx("-t", "-q")
        if check.returncode != 0:
            raise PrerequisiteError(f"nginx -t refused the bench's config:\n{check.stderr}")


class UnlimitedNginx(BenchNginx):
    """Without any `limit_req` line: what the backend does when nginx lets everything in."""

    limits = False


class StockNginx(UnlimitedNginx):
    """Without limits and without the health cache: the baseline's nginx. It keeps the
    rest of the shipped config (TLS, upstream keepalive, gzip), so the comparison is the
    backend's and the one-second cache of the internet's /health/ answers."""

    health_cache = False


NGINX_CLASSES = {"tuned": BenchNginx, "tuned-nolimit": UnlimitedNginx, "stock": StockNginx}


@contextmanager
def running_nginx(upstream: str, *, cls: type[BenchNginx] = BenchNginx) -> Iterator[NginxServer]:
    """nginx from nginx/templates in front of `upstream` (both sites), on loopback."""
    with harness_nginx(
        {"prod": upstream, "staging": upstream},
        prefix="bench-nginx",
        cls=cls,
    ) as server:
        yield server


@dataclass
class Config:
    """One column of the comparison: nginx in front of a backend."""

    name: str
    description: str
    nginx: NginxServer
    backend: Backend

    @property
    def services(self) -> dict[str, Service]:
        return {"nginx": self.nginx.service, **self.backend.services}


DESCRIPTIONS = {
    "tuned": "project configs; nginx with its rate limits (200 r/s, /api/ 500 r/s per address)",
    "tuned-nolimit": "project configs; bench-only nginx without limit_req",
    "stock": "stock PostgreSQL/gunicorn sync x2, no PgBouncer, Django DB, session and cache "
    "defaults (no Redis); nginx without limit_req and without the health cache",
}


@contextmanager
def running_configs(names: list[str], workdir: Path, *, notes: int = 50) -> Iterator[dict]:
    """Every named config started at once (side by side): name -> Config."""
    unknown = set(names) - set(DESCRIPTIONS)
    if unknown:
        raise ValueError(f"unknown configs: {', '.join(sorted(unknown))}")
    with ExitStack() as stack:
        backends: dict[str, Backend] = {}
        if {"tuned", "tuned-nolimit"} & set(names):
            (workdir / "tuned").mkdir()
            backends["tuned"] = stack.enter_context(tuned_backend(workdir / "tuned", notes=notes))
        if "stock" in names:
            (workdir / "stock").mkdir()
            backends["stock"] = stack.enter_context(stock_backend(workdir / "stock", notes=notes))
        configs = {}
        for name in names:
            backend = backends["stock" if name == "stock" else "tuned"]
            upstream = f"127.0.0.1:{backend.app.port}"
            nginx = stack.enter_context(running_nginx(upstream, cls=NGINX_CLASSES[name]))
            configs[name] = Config(name, DESCRIPTIONS[name], nginx, backend)
        yield configs
