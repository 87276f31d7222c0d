"""/health/ under real gunicorn, against PostgreSQL through PgBouncer and Redis.

The production environment (config/prod.env.example filled in), so the HTTPS redirect,
ALLOWED_HOSTS and secure cookies are all on, as behind nginx on the server.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.harness.core import wait_until
from tests.harness.django_app import DjangoApp, manage


@pytest.fixture(scope="module")
def app(tmp_path_factory, app_environment):
    workdir = tmp_path_factory.mktemp("health-app")
    env = app_environment("production", workdir)
    manage(env, "migrate", "--noinput")
    with DjangoApp(env, workdir) as server:
        yield server


@pytest.fixture(scope="module")
def single_worker_app(tmp_path_factory, app_environment):
    """Production settings in one worker of two threads: every probe shares one process."""
    workdir = tmp_path_factory.mktemp("health-single-worker")
    env = app_environment("production", workdir)
    env.update(GUNICORN_WORKERS="1", GUNICORN_THREADS="2")
    manage(env, "migrate", "--noinput")
    with DjangoApp(env, workdir) as server:
        yield server


def healthy(app: DjangoApp) -> bool:
    status, body = app.health()
    return status == 200 and body["status"] == "ok"


def recovered(app: DjangoApp) -> bool:
    """Four 200s in a row: no worker still serves a result from the outage (kept for 1 s)."""
    return all(healthy(app) for _ in range(4))


def failing_answers(app: DjangoApp, *, timeout: float) -> list[tuple[int, dict]]:
    """Four answers in a row, none of them 200, once an outage has begun.

    A worker reuses its database and cache results for a second (*_RESULT_TTL_S): right after
    a stop, the last good result may still be served, by either worker. Polled, bounded;
    a request that gets no answer within the client's timeout fails the test.
    """
    unanswered: list[requests.RequestException] = []

    def four_failing():
        try:
            answers = [app.health() for _ in range(4)]
        except requests.RequestException as exc:
            unanswered.append(exc)
            return None
        return answers if all(status != 200 for status, _ in answers) else None

    answers = wait_until(four_failing, timeout=timeout, what="four 503 answers in a row")
    assert not unanswered, unanswered
    return answers


def assert_outage_seen(app: DjangoApp, failing: str, *, timeout: float, error: str = "") -> None:
    """Each of failing_answers() is a 503 "fail" with the `failing` check (database or
    cache) down, naming `error` where given, and the other check up."""
    working = {"database": "cache", "cache": "database"}[failing]
    for status, body in failing_answers(app, timeout=timeout):
        assert status == 503
        assert body["status"] == "fail"
        assert body["checks"][failing]["ok"] is False
        if error:
            assert body["checks"][failing]["error"] == error
        assert body["checks"][working]["ok"] is True


def test_ok_with_database_and_cache(app):
    response = app.get("/health/", headers={"Host": "127.0.0.1"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["cache"]["ok"] is True
    assert body["version"] == app.env["APP_VERSION"]
    assert body["environment"] == "production"


def test_a_burst_of_concurrent_probes_is_all_200(single_worker_app):
    """Docker, the deploy gate, nginx and the monitor may ask at once: overlapping probes
    in one worker share the database probe instead of answering 503 "busy"."""
    app = single_worker_app
    assert app.logs().count("Booting worker") == 1

    def probe(_: int) -> tuple[int, str]:
        response = requests.get(f"{app.url}/health/", headers={"Host": "127.0.0.1"}, timeout=60)
        return response.status_code, response.text

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(probe, range(200)))
    statuses = Counter(status for status, _ in answers)
    failures = [text for status, text in answers if status != 200][:3]
    assert statuses == Counter({200: 200}), failures


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost:8000", "aiia_django_prod:8000"])
def test_probes_get_in_with_any_host_over_plain_http(app, host):
    response = app.get("/health/", headers={"Host": host})
    assert response.status_code == 200, response.text
    assert "Set-Cookie" not in response.headers
    assert "Location" not in response.headers


def test_other_pages_keep_allowed_hosts_and_the_https_redirect(app):
    unknown = app.get("/api/notes/", headers={"Host": "127.0.0.1"})
    assert unknown.status_code == 400
    # logged as one line, without a traceback per scanner request
    wait_until(
        lambda: "Invalid HTTP_HOST header: '127.0.0.1'" in app.logs(),
        timeout=10,
        what="the DisallowedHost log line",
    )
    assert "Traceback" not in app.logs()
    plain = app.get("/api/notes/", headers={"Host": "eduaiia.com"})
    assert plain.status_code == 301
    assert plain.headers["Location"] == "https://eduaiia.com/api/notes/"
    proxied = app.get("/api/notes/", headers={"Host": "eduaiia.com", "X-Forwarded-Proto": "https"})
    assert proxied.status_code == 200
    assert "max-age=31536000" in proxied.headers["Strict-Transport-Security"]


def test_503_naming_cache_while_redis_is_down(app, redis_server):
    assert healthy(app)
    redis_server.stop()
    try:
        # a worker reuses its cache result for a second (CACHE_RESULT_TTL_S), as for the
        # database: the outage shows within it
        assert_outage_seen(app, "cache", timeout=30, error="ConnectionError")
    finally:
        redis_server.start()
    # the worker that saw the failure logs the recovery once it answers again (which of
    # the two workers accepts a request is up to them)
    wait_until(
        lambda: healthy(app) and "health: cache recovered" in app.logs(),
        timeout=30,
        what="/health/ 200 after Redis is back",
    )
    assert "health: cache failing: ConnectionError" in app.logs()


def test_503_naming_database_while_pgbouncer_is_down(app, pgbouncer_server):
    wait_until(lambda: recovered(app), timeout=30, what="/health/ 200 before the outage")
    pgbouncer_server.stop()
    try:
        # each of the two workers probes with its own connection: ask both of them
        assert_outage_seen(app, "database", timeout=30, error="OperationalError")
    finally:
        pgbouncer_server.start()
    wait_until(lambda: recovered(app), timeout=30, what="/health/ 200 after PgBouncer is back")
    # the app's own request connections (CONN_MAX_AGE) recover as well
    proxied = app.get("/api/notes/", headers={"Host": "eduaiia.com", "X-Forwarded-Proto": "https"})
    assert proxied.status_code == 200


def test_bounded_when_pgbouncer_waits_for_a_stopped_postgres(app, postgres_server):
    """PgBouncer queues the probe's query while PostgreSQL is down: the answer still comes."""
    wait_until(lambda: recovered(app), timeout=30, what="/health/ 200 before the outage")
    postgres_server.stop()
    try:
        assert_outage_seen(app, "database", timeout=60)
    finally:
        postgres_server.start()
    wait_until(lambda: recovered(app), timeout=60, what="/health/ 200 after PostgreSQL is back")
    secrets_in_env = [
        app.env[k] for k in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY")
    ]
    logs = app.logs()
    assert "health: database failing" in logs
    assert not any(s in logs for s in secrets_in_env)


def test_nothing_written_under_home(app):
    """gunicorn's control socket would go to $HOME/.gunicorn: it is disabled."""
    assert list((app.workdir / "home").iterdir()) == []


def test_staging_is_healthy_with_its_own_database_redis_db_and_user(
    tmp_path_factory, app_environment, redis_server
):
    """Staging: aiia_staging through PgBouncer, Redis db 1 as aiia_staging, 1 worker x 2."""
    workdir = tmp_path_factory.mktemp("health-staging")
    env = app_environment("staging", workdir)
    assert (env["REDIS_DB"], env["GUNICORN_WORKERS"]) == ("1", "1")
    manage(env, "migrate", "--noinput")
    with DjangoApp(env, workdir) as server:
        status, body = server.health()
        assert status == 200, body
        assert body["environment"] == "staging"
        assert server.logs().count("Booting worker") == 1
    # its probe key went to db 1 under its own prefix
    prefix = redis_server.users["staging"][2]
    keys = redis_server.cli("--scan", "--pattern", f"{prefix}:1:health:*", "-n", "1")
    assert keys.startswith(f"{prefix}:1:health:"), keys


class ForgetfulRelay:
    """A TCP relay to Redis that can forget its connections the way a lost NAT or
    overlay entry does: the client hears nothing until it next sends, then a reset.

    The client's side then looks idle and healthy, so a pool's check on checkout passes;
    only the next command finds out.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.resets = 0
        self.seen: list[bytes] = []  # what went through, both ways
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._forgotten: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def forget_all(self) -> int:
        with self._lock:
            self._forgotten = set(self._live)
            return len(self._forgotten)

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._live.append(client)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with self._lock:
                forgotten = src in self._forgotten
                if not data or forgotten:
                    self._forgotten.discard(src)
                    if src in self._live:
                        self._live.remove(src)
                    self.resets += bool(data and forgotten)
                    break
            self.seen.append(data)
            try:
                dst.sendall(data)
            except OSError:
                break
        if data and forgotten:
            # SO_LINGER 0: close() sends a reset, not a FIN
            src.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_a_pooled_redis_connection_the_network_forgot_costs_no_answer(
    tmp_path_factory, app_environment, redis_server
):
    """The command that meets a connection forgotten while it idled gets a reset, and
    runs again on a new connection: /health/ (a cache write and read) stays 200.

    One thread: Django's caches are per thread, so its one pooled connection is the one
    every probe uses."""
    relay = ForgetfulRelay(redis_server.host, redis_server.port)
    workdir = tmp_path_factory.mktemp("health-forgotten")
    env = app_environment("production", workdir)
    env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(relay.port),
               GUNICORN_WORKERS="1", GUNICORN_THREADS="1")  # fmt: skip
    manage(env, "migrate", "--noinput")
    try:
        with DjangoApp(env, workdir) as server:
            wait_until(lambda: recovered(server), timeout=30, what="/health/ 200 through the relay")
            for round_ in range(1, 4):
                assert relay.forget_all() == 1
                # past CACHE_RESULT_TTL_S: the next answer probes Redis again
                time.sleep(1.2)
                status, body = server.health()
                assert status == 200, body
                assert relay.resets == round_, "no command met the forgotten connection"
            assert "health: cache failing" not in server.logs()
        # each new connection (four or more) authenticated and went straight to work: no
        # command this Redis does not know (CLIENT SETINFO), no error answer. The relay saw
        # the password: only counts and flags reach an assertion's message.
        relay_log = b"".join(relay.seen)
        connections = relay_log.count(b"AUTH")
        setinfo, errors = b"SETINFO" in relay_log, b"\r\n-ERR" in relay_log
        assert connections >= 4, "fewer connections than rounds"
        assert not setinfo, "a new connection sent CLIENT SETINFO"
        assert not errors, "Redis answered an error"
    finally:
        relay.close()
