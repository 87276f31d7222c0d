"""PgBouncer 1.18 started natively by pgbouncer/docker-entrypoint.sh with pgbouncer/*.ini and
pg_hba.conf, in front of the native PostgreSQL with the project's databases.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from tests.harness.core import ROOT, wait_until
from tests.harness.native import PG_OS_USER

INI = ROOT / "pgbouncer" / "pgbouncer.ini"
DATABASES_INI = ROOT / "pgbouncer" / "databases.ini"


def ini_section(path: Path, section: str) -> dict[str, str]:
    """key -> value of one section of a PgBouncer ini file (comments are whole lines)."""
    current, values = None, {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def database_params(name: str) -> dict[str, str]:
    """The libpq-style parameters of one [databases] entry."""
    entry = ini_section(DATABASES_INI, "databases")[name]
    return dict(pair.split("=", 1) for pair in entry.split())


def connect(server, app, db: str | None = None, password: str | None = None, **kwargs):
    return psycopg.connect(
        host=server.host,
        port=server.port,
        dbname=db or app.db,
        user=app.user,
        password=app.password if password is None else password,
        connect_timeout=10,
        **kwargs,
    )


# --- the effective configuration --------------------------------------------------------


@pytest.fixture(scope="module")
def show_config(pgbouncer_server) -> dict[str, str]:
    return {row["key"]: row["value"] for row in pgbouncer_server.admin_rows("SHOW CONFIG")}


@pytest.mark.parametrize("key", sorted(ini_section(INI, "pgbouncer")))
def test_show_config_equals_the_file(show_config, key):
    assert show_config[key] == ini_section(INI, "pgbouncer")[key]


def test_the_file_sets_the_decisions():
    ini = ini_section(INI, "pgbouncer")
    assert ini["pool_mode"] == "transaction"
    assert ini["auth_user"] == "pgbouncer_auth"
    assert "pgbouncer.user_lookup" in ini["auth_query"]
    assert "password" not in DATABASES_INI.read_text().lower()


def test_runtime_settings_come_from_the_environment(pgbouncer_server, show_config):
    run = pgbouncer_server.run_dir
    assert show_config["listen_addr"] == "127.0.0.1"
    assert show_config["listen_port"] == str(pgbouncer_server.port)
    assert show_config["unix_socket_dir"] == str(run)
    assert int(show_config["unix_socket_mode"]) == 0o700
    assert show_config["auth_file"] == str(run / "userlist.txt")
    assert show_config["auth_hba_file"] == str(pgbouncer_server.confdir / "pg_hba.conf")
    assert show_config["conffile"] == str(run / "pgbouncer.ini")


@pytest.mark.parametrize("name", ["aiia_prod", "aiia_staging"])
def test_show_databases_equals_databases_ini(pgbouncer_server, postgres_server, name):
    rows = {r["name"]: r for r in pgbouncer_server.admin_rows("SHOW DATABASES")}
    want = database_params(name)
    got = rows[name]
    assert got["host"] == postgres_server.host
    assert got["port"] == str(postgres_server.port)
    assert got["database"] == want["dbname"]
    assert got["pool_size"] == want["pool_size"]
    assert got["reserve_pool"] == want["reserve_pool"]
    assert got["max_connections"] == want["max_db_connections"]


def test_pools_leave_room_under_max_connections(pgbouncer_server, postgres_server):
    """Server connections PgBouncer may open, against what PostgreSQL accepts."""
    max_connections = int(postgres_server.psql("SHOW max_connections"))
    reserved = int(postgres_server.psql("SHOW superuser_reserved_connections"))
    rows = pgbouncer_server.admin_rows("SHOW DATABASES")
    caps = {r["name"]: int(r["max_connections"]) for r in rows if r["name"] != "pgbouncer"}
    assert set(caps) == {"aiia_prod", "aiia_staging"}
    for name, cap in caps.items():
        params = database_params(name)
        # the pool, its reserve and the auth_query connection fit under the cap
        assert int(params["pool_size"]) + int(params["reserve_pool"]) + 1 <= cap
    room = max_connections - reserved - sum(caps.values())
    # migrations, pg_dump/pg_restore, the health check and an operator's psql
    assert room >= 20, f"only {room} connections left outside PgBouncer"


def as_postgres(argv: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`argv` as OS user postgres, the user the image runs PgBouncer and its scripts as."""
    return subprocess.run(
        argv, env=env, user=PG_OS_USER, cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_a_broken_ini_is_refused(pgbouncer_server, postgres_server):
    rendered = (pgbouncer_server.run_dir / "pgbouncer.ini").read_text()
    path = pgbouncer_server.root / "broken.ini"
    path.write_text(rendered.replace("pool_mode = transaction", "pool_mode = transactions"))
    os.chown(path, postgres_server.owner.pw_uid, postgres_server.owner.pw_gid)
    proc = as_postgres(
        ["pgbouncer", str(path)],
        env={"PATH": os.environ["PATH"] + ":/usr/sbin"},
        cwd=pgbouncer_server.root,
    )
    assert proc.returncode != 0
    assert 'invalid value "transactions" for parameter pool_mode' in proc.stderr


def test_rendered_secrets_are_private(pgbouncer_server, postgres_server, app_databases):
    run = pgbouncer_server.run_dir
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    userlist = run / "userlist.txt"
    assert stat.S_IMODE(userlist.stat().st_mode) == 0o600
    assert stat.S_IMODE((run / "pgbouncer.ini").stat().st_mode) == 0o600
    text = userlist.read_text()
    assert f'"pgbouncer_auth" "{postgres_server.pgbouncer_auth_password}"' in text
    # application passwords are never written anywhere by PgBouncer's side
    for path in [*run.iterdir(), *pgbouncer_server.confdir.iterdir()]:
        if path.is_file():
            for app in app_databases.values():
                assert app.password not in path.read_text(errors="replace"), path


def test_render_refuses_a_placeholder_password(pgbouncer_server):
    env = {**pgbouncer_server.env, "PGBOUNCER_AUTH_PASSWORD": "CHANGE_ME",
           "PGBOUNCER_RUN_DIR": str(pgbouncer_server.root / "never")}  # fmt: skip
    proc = as_postgres(
        ["bash", str(pgbouncer_server.confdir / "render-config.sh")],
        env=env,
        cwd=pgbouncer_server.root,
    )
    assert proc.returncode != 0
    assert "PGBOUNCER_AUTH_PASSWORD" in proc.stderr
    assert not (pgbouncer_server.root / "never").exists()


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["production", "staging"])
def test_app_roles_log_in_through_auth_query(pgbouncer_server, app_databases, env):
    app = app_databases[env]
    with connect(pgbouncer_server, app) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == (app.user, app.db)
    pools = pgbouncer_server.admin_rows("SHOW POOLS")
    modes = {(p["database"], p["user"]): p["pool_mode"] for p in pools}
    assert modes[(app.db, app.user)] == "transaction"


def test_a_wrong_password_is_refused(pgbouncer_server, app_databases):
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        connect(pgbouncer_server, app_databases["production"], password="wrong")


@pytest.mark.parametrize(("who", "target"), [("staging", "production"), ("production", "staging")])
def test_an_environment_cannot_use_the_others_database(
    pgbouncer_server, app_databases, who, target
):
    me, other = app_databases[who], app_databases[target]
    with pytest.raises(psycopg.OperationalError):
        connect(pgbouncer_server, me, db=other.db)


@pytest.mark.parametrize("user", ["postgres", "pgbouncer_auth"])
def test_privileged_roles_cannot_log_in_through_pgbouncer(
    pgbouncer_server, postgres_server, app_databases, user
):
    password = {
        "postgres": postgres_server.superuser_password,
        "pgbouncer_auth": postgres_server.pgbouncer_auth_password,
    }[user]
    for app in app_databases.values():
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(
                host=pgbouncer_server.host, port=pgbouncer_server.port, dbname=app.db,
                user=user, password=password, connect_timeout=10,
            )  # fmt: skip


def test_admin_and_stats_users_on_the_socket(pgbouncer_server):
    # the guide: docker exec aiia_pgbouncer psql -U aiia -c "SHOW POOLS"
    assert pgbouncer_server.admin_rows("SHOW POOLS", user="aiia")
    with pytest.raises(RuntimeError, match="admin access needed"):
        pgbouncer_server.admin("PAUSE aiia_prod", user="aiia")
    assert pgbouncer_server.admin("SHOW VERSION").startswith("PgBouncer 1.18")


def test_the_console_is_closed_over_tcp(pgbouncer_server, postgres_server):
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            host=pgbouncer_server.host, port=pgbouncer_server.port, dbname="pgbouncer",
            user="postgres", password=postgres_server.superuser_password, connect_timeout=10,
        )  # fmt: skip


# --- pooling -----------------------------------------------------------------------------------


def test_a_full_pool_queues_clients_instead_of_opening_more(
    pgbouncer_server, postgres_server, app_databases
):
    """staging: pool_size + reserve_pool server connections at most; the rest wait."""
    staging = app_databases["staging"]
    params = database_params(staging.db)
    limit = int(params["pool_size"]) + int(params["reserve_pool"])
    clients = limit + 2
    release = threading.Event()
    errors: list[BaseException] = []
    conns = [connect(pgbouncer_server, staging) for _ in range(clients)]

    def hold(conn):
        try:
            conn.execute("SELECT 1")  # opens a transaction: the server stays with this client
            release.wait(120)
            conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hold, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    try:

        def pool():
            rows = pgbouncer_server.admin_rows("SHOW POOLS")
            row = next(r for r in rows if (r["database"], r["user"]) == (staging.db, staging.user))
            full = int(row["sv_active"]) == limit and int(row["cl_waiting"]) == clients - limit
            return row if full else None

        wait_until(pool, timeout=60, what=f"{limit} active servers and waiting clients")
        where = f"datname = '{staging.db}' AND usename = '{staging.user}'"
        backends = postgres_server.psql(f"SELECT count(*) FROM pg_stat_activity WHERE {where}")  # noqa: S608
        assert int(backends) == limit
    finally:
        release.set()
        for t in threads:
            t.join(120)
        for c in conns:
            c.close()
    assert not errors, errors


DJANGO_PROBE = r"""
import json, sys
import django
from django.conf import settings

django.setup()
from django.db import connection, models

connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = sys.argv[1] == "client-side"


class IteratorProbe(models.Model):
    n = models.IntegerField()

    class Meta:
        app_label = "core"
        db_table = "iterator_probe"
        managed = False


with connection.cursor() as cursor:
    cursor.execute("DROP TABLE IF EXISTS iterator_probe")
    cursor.execute("CREATE TABLE iterator_probe (id serial PRIMARY KEY, n int NOT NULL)")
IteratorProbe.objects.bulk_create([IteratorProbe(n=i) for i in range(50)])

backends = set()
for _ in range(6):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backends.add(cursor.fetchone()[0])
# the same parametrized query many times: psycopg would prepare it after 5 uses by default
counts = [IteratorProbe.objects.filter(n=i % 3).count() for i in range(12)]
try:
    seen = [p.n for p in IteratorProbe.objects.order_by("id").iterator(chunk_size=5)]
    error = None
except Exception as exc:
    seen, error = [], f"{type(exc).__name__}: {exc}"
with connection.cursor() as cursor:
    cursor.execute("DROP TABLE iterator_probe")
print(json.dumps({"backends": len(backends), "counts": counts, "seen": seen, "error": error}))
"""


@pytest.fixture
def round_robin(pgbouncer_server, app_databases):
    """server_round_robin = 1, with several server connections open in production's pool."""
    prod = app_databases["production"]
    pgbouncer_server.admin("SET server_round_robin = 1")
    try:
        # three concurrent transactions leave three idle servers to rotate through
        conns = [connect(pgbouncer_server, prod) for _ in range(3)]
        for c in conns:
            c.execute("SELECT 1")
        for c in conns:
            c.commit()
            c.close()
        yield
    finally:
        pgbouncer_server.admin("SET server_round_robin = 0")


def run_django_probe(pgbouncer_server, app, tmp_path, mode: str) -> dict:
    env_file = tmp_path / "probe.env"
    env_file.write_text("")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "aiia.settings",
        "DJANGO_ENV_FILE": str(env_file),
        "ENVIRONMENT": "local",
        "POSTGRES_HOST": pgbouncer_server.host,
        "POSTGRES_PORT": str(pgbouncer_server.port),
        "POSTGRES_DB": app.db,
        "POSTGRES_USER": app.user,
        "POSTGRES_PASSWORD": app.password,
        "PYTHONPATH": str(ROOT / "app"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DJANGO_PROBE, mode],
        env=env,
        cwd=ROOT / "app",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_django_iterator_works_through_round_robin_pooling(
    pgbouncer_server, app_databases, round_robin, tmp_path
):
    """The app's own DATABASES settings (app/aiia/settings.py) behind transaction pooling."""
    result = run_django_probe(pgbouncer_server, app_databases["production"], tmp_path,
                              "client-side")  # fmt: skip
    # the condition under test: consecutive transactions really land on different servers
    assert result["backends"] >= 2
    assert result["error"] is None
    assert result["seen"] == list(range(50))
    assert result["counts"] == [1] * 12


def test_server_side_cursors_break_under_round_robin(
    pgbouncer_server, app_databases, round_robin, tmp_path
):
    """Why DISABLE_SERVER_SIDE_CURSORS matters: the check above can fail."""
    result = run_django_probe(pgbouncer_server, app_databases["production"], tmp_path,
                              "server-side")  # fmt: skip
    assert result["backends"] >= 2
    assert result["error"] is not None
    # DECLARE ran on one server connection, FETCH on another
    assert re.search(r'(cursor|portal) "_django_curs_\w+" does not exist', result["error"])
