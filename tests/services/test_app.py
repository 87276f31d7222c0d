"""The reference app under gunicorn: API and admin through PgBouncer, sessions and Redis.

Production settings throughout; requests come the way nginx forwards them (Host
eduaiia.com, X-Forwarded-Proto https), see tests/harness/django_app.Browser.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest

import redis
from tests.harness.core import wait_until
from tests.harness.django_app import Browser, DjangoApp, manage

HOST = "eduaiia.com"


@pytest.fixture(scope="module")
def admin_login() -> tuple[str, str]:
    return f"admin-{secrets.token_hex(3)}", secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def app(tmp_path_factory, app_environment, admin_login):
    workdir = tmp_path_factory.mktemp("app")
    env = app_environment("production", workdir)
    # migrations go through PgBouncer, as the deploy runs them in the app container
    manage(env, "migrate", "--noinput")
    username, password = admin_login
    # the password travels in the environment, never in argv
    manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": password},
        "createsuperuser", "--noinput", "--username", username, "--email", "ops@example.com",
    )  # fmt: skip
    with DjangoApp(env, workdir) as server:
        yield server


@pytest.fixture
def browser(app, admin_login) -> Browser:
    client = Browser(app, HOST)
    client.login(*admin_login)
    return client


def prod_redis(redis_server) -> redis.Redis:
    """A client with production's own ACL user, as the app connects."""
    user, password, _, db = redis_server.users["production"]
    return redis.Redis(
        host=redis_server.host,
        port=redis_server.port,
        db=db,
        username=user,
        password=password,
        socket_timeout=10,
    )


def test_migrations_applied_and_none_missing(app):
    assert manage(app.env, "migrate", "--check", check=False).returncode == 0
    missing = manage(app.env, "makemigrations", "--check", "--dry-run", check=False)
    assert missing.returncode == 0, missing.stdout


def test_api_writes_and_reads_through_pgbouncer(app, browser, postgres_server, pgbouncer_server):
    title = f"note {secrets.token_hex(4)}"
    created = browser.post(
        "/api/notes/",
        data=json.dumps({"title": title, "body": "written through PgBouncer"}),
        headers={"Content-Type": "application/json"},
    )
    assert created.status_code == 201, created.text
    note = created.json()

    anonymous = Browser(app, HOST)
    listed = anonymous.get("/api/notes/")
    assert listed.status_code == 200
    assert listed.json()["results"][0] == note
    assert anonymous.get(f"/api/notes/{note['id']}/").json() == note

    # the row is in PostgreSQL itself ...
    query = f"SELECT body FROM core_note WHERE id = {int(note['id'])}"  # noqa: S608 - an int
    stored = postgres_server.psql(query, db="aiia_prod")
    assert stored == "written through PgBouncer"
    # ... and the app's connections are PgBouncer's clients
    clients = pgbouncer_server.admin("SHOW CLIENTS")
    assert any("|aiia_prod|aiia_prod|" in f"|{line}|" and "aiia_production" in line
               for line in clients.splitlines()), clients  # fmt: skip


def test_post_is_refused_without_session_or_csrf_token(app, browser):
    payload = {"data": json.dumps({"title": "x"}), "headers": {"Content-Type": "application/json"}}
    anonymous = Browser(app, HOST)
    assert "CSRF cookie not set" in anonymous.post("/api/notes/", **payload).json()["error"]
    anonymous.get("/admin/login/")  # a CSRF token, but no session
    refused = anonymous.post("/api/notes/", **payload)
    assert refused.status_code == 403
    assert "log in" in refused.json()["error"]

    no_token = browser.request("POST", "/api/notes/", **payload)
    assert no_token.status_code == 403
    assert "CSRF" in no_token.json()["error"]

    payload["headers"]["Origin"] = "https://evil.example"
    other_origin = browser.post("/api/notes/", **payload)
    assert other_origin.status_code == 403
    assert "Origin checking failed" in other_origin.json()["error"]


def test_admin_session_survives_the_cache_filling_up(app, browser, redis_server):
    """Redis evicts (allkeys-lru) at maxmemory; cached_db sessions fall back to PostgreSQL."""
    assert browser.get("/admin/").status_code == 200
    session_key = f"prod:1:django.contrib.sessions.cached_db{browser.cookies['sessionid']}"
    client = prod_redis(redis_server)
    # booleans: an assertion on client.exists() prints the client, password and all
    cached = bool(client.exists(session_key))
    assert cached, "the session should be cached in Redis after login"

    # Redis stamps a key's last use in whole seconds: a fill that starts in the second
    # of the login gives its keys the session's stamp, and LRU may then evict around the
    # session for good. Wait (OBJECT IDLETIME does not touch) until the session is older.
    wait_until(lambda: int(redis_server.cli("OBJECT", "IDLETIME", session_key)) >= 1,
               timeout=10, what="the session older than a second in Redis's LRU clock")  # fmt: skip

    maxmemory = int(redis_server.cli("CONFIG", "GET", "maxmemory").split()[-1])
    assert maxmemory > 0
    chunk = b"x" * 256 * 1024
    written = 0
    keys = []
    try:
        # write as production's user until Redis has evicted the session, at most 8x
        # maxmemory: LRU is approximated by sampling, and an older session outlasted up to
        # 374 evictions (1 in 150 trials; a same-second one survived 644, 2 in 150)
        while client.exists(session_key) and written < 8 * maxmemory:
            pipe = client.pipeline(transaction=False)
            for _ in range(16):
                keys.append(f"prod:fill:{len(keys)}")
                pipe.set(keys[-1], chunk)
            pipe.execute()  # would raise OOM instead of evicting under another policy
            written += 16 * len(chunk)
        cached = bool(client.exists(session_key))
        stats = redis_server.cli("INFO", "stats")
        evicted = int(stats.split("evicted_keys:")[1].split()[0])
        idle = "" if not cached else redis_server.cli("OBJECT", "IDLETIME", session_key)
        assert not cached, f"still cached after {written} bytes, {evicted} evicted, idle {idle} s"
        assert evicted > 0
        # a full cache is a working cache: writes evict, so /health/ stays green
        assert app.health()[0] == 200

        page = browser.get("/admin/")
        assert page.status_code == 200, "logged out: the session did not survive eviction"
        assert "Site administration" in page.text
        # the session was read back from PostgreSQL and cached again
        cached = bool(client.exists(session_key))
        assert cached, "the session was not cached again"
    finally:
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start : start + 500])


def test_logout_ends_the_session(app, browser):
    assert browser.post("/admin/logout/").status_code == 200
    assert "sessionid" not in browser.cookies
    assert browser.get("/admin/").status_code == 302


SHELL = """
import json
from django.db import connection, transaction
from core.models import Note

Note.objects.bulk_create([Note(title=f"iterate {i}") for i in range(7)])
seen = sum(1 for _ in Note.objects.filter(title__startswith="iterate ").iterator(chunk_size=2))
with transaction.atomic():
    for _ in range(12):
        list(Note.objects.filter(title="iterate 3"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        prepared = cursor.fetchone()[0]
        cursor.execute("SHOW port")
        server_port = cursor.fetchone()[0]
print(json.dumps({
    "seen": seen,
    "prepared": prepared,
    "threshold": connection.connection.prepare_threshold,
    "server_port": int(server_port),
    "client_port": connection.connection.info.port,
}))
"""


def test_iterator_works_and_nothing_is_prepared_through_pgbouncer(
    app, pgbouncer_server, postgres_server
):
    out = manage(app.env, "shell", "--no-imports", "-c", SHELL).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["client_port"] == pgbouncer_server.port
    assert result["server_port"] == postgres_server.port
    assert result["seen"] >= 7
    assert result["threshold"] is None
    assert result["prepared"] == 0


def test_collectstatic_fills_static_root(app):
    manage(app.env, "collectstatic", "--noinput")
    static_root = app.workdir / "static"
    assert (static_root / "admin" / "css" / "base.css").is_file()


def test_the_apps_own_django_tests_pass(app, postgres_server, tmp_path):
    """`manage.py test` needs to create a database: PostgreSQL directly, as its superuser."""
    env = {
        **app.env,
        "POSTGRES_HOST": postgres_server.host,
        "POSTGRES_PORT": str(postgres_server.port),
        "POSTGRES_USER": postgres_server.superuser,
        "POSTGRES_PASSWORD": postgres_server.superuser_password,
    }
    proc = manage(env, "test", "core", "--noinput", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = re.search(r"^Ran (\d+) tests? ", proc.stderr, re.MULTILINE)
    assert ran and int(ran.group(1)) >= 10, proc.stderr
    assert re.search(r"^OK$", proc.stderr, re.MULTILINE), proc.stderr
