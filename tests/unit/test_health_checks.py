"""Health check parsers on saved output, the probes' scripts run for real, collect() end to end.

Fixtures under tests/fixtures/health/ are the real output of the probe commands against
PostgreSQL 15, PgBouncer 1.18, Redis 7, the reference app and Docker on this project's
machines (how each was made is in its test's docstring).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from opskit import health, tls
from opskit.commands import docker as docker_cmd
from opskit.commands import probes
from opskit.health import GREEN, RED, YELLOW, Check
from opskit.runner import Result

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "health"
NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- PostgreSQL ------------------------------------------------------------------------


def test_postgres_connections_from_saved_psql_output():
    """probes.postgres_connections() run by psql 15 --csv against a fresh cluster."""
    check = health.postgres_check(fixture("postgres_connections.csv"))
    assert check.status == GREEN
    assert check.details == {"connections": 2, "max_connections": 100, "reserved": 3}
    assert check.summary == "2 of 97 connections in use (2%; max_connections 100)"


@pytest.mark.parametrize(
    ("used", "status"),
    [(37, GREEN), (38, YELLOW), (44, YELLOW), (45, RED), (47, RED)],
    ids=["below-80%", "at-80%", "below-95%", "at-95%", "full"],
)
def test_postgres_thresholds_on_the_guides_50_connections(used, status):
    text = f"connections,max_connections,reserved\n{used},50,3\n"
    assert health.postgres_check(text).status == status


@pytest.mark.parametrize(
    "text",
    ["", "connections,max_connections\nmany,50\n", "a,b\n1,2\n3,4\n"],
    ids=["empty", "not-a-number", "two-rows"],
)
def test_postgres_output_of_another_shape_is_a_probe_error(text):
    with pytest.raises(health.ProbeError):
        health.postgres_check(text)


# --- PgBouncer -------------------------------------------------------------------------


def test_pgbouncer_idle_pools_are_green():
    """SHOW POOLS (psql --csv) on PgBouncer 1.18 in transaction mode, nothing running."""
    check = health.pgbouncer_check(fixture("pgbouncer_show_pools_idle.csv"))
    assert check.status == GREEN
    # the admin console's own pool is not an application pool
    assert check.details == {"pools": 1, "active": 0, "waiting": 0, "max_wait_s": 0}


def test_pgbouncer_waiting_clients_are_yellow_and_named():
    """SHOW POOLS while one client held the only server connection and two waited ~2 s."""
    check = health.pgbouncer_check(fixture("pgbouncer_show_pools_waiting.csv"))
    assert check.status == YELLOW
    assert check.details["waiting"] == 2 and check.details["max_wait_s"] == 2
    assert check.summary.endswith("2 waiting (longest 2s, in postgres/postgres)")


def test_pgbouncer_long_wait_is_red():
    saved = fixture("pgbouncer_show_pools_waiting.csv").splitlines()
    header, rows = saved[0], saved[1:]
    columns = header.split(",")
    longer = []
    for row in rows:
        values = dict(zip(columns, row.split(","), strict=True))
        if values["database"] != "pgbouncer":
            values["maxwait"] = str(health.PGBOUNCER_RED_WAIT_S)
        longer.append(",".join(values[c] for c in columns))
    check = health.pgbouncer_check("\n".join([header, *longer]))
    assert check.status == RED


# --- Redis -----------------------------------------------------------------------------


def test_redis_idle_with_the_guides_limit_is_green():
    """INFO memory of redis-server 7 with maxmemory 50mb, allkeys-lru, empty."""
    check = health.redis_check(fixture("redis_info_memory.txt"))
    assert check.status == GREEN
    assert check.details["maxmemory"] == 50 * 1024 * 1024
    assert check.summary.startswith("0.9 MB of 50.0 MB (2%, allkeys-lru)")


def test_redis_at_its_limit_is_yellow_not_red():
    """INFO memory after writing 70 MB into the 50 MB LRU cache (23129 keys evicted)."""
    check = health.redis_check(fixture("redis_info_memory_full.txt"))
    assert check.status == YELLOW
    assert "100%" in check.summary


def test_redis_without_maxmemory_is_red():
    """INFO memory of a redis-server started without maxmemory."""
    check = health.redis_check(fixture("redis_info_memory_nolimit.txt"))
    assert check.status == RED
    assert "no maxmemory" in check.summary


def test_redis_far_over_its_limit_is_red():
    text = "used_memory:60000000\r\nmaxmemory:52428800\r\nmaxmemory_policy:noeviction\r\n"
    assert health.redis_check(text).status == RED


def test_redis_garbage_is_a_probe_error():
    with pytest.raises(health.ProbeError):
        health.parse_info("(error) NOAUTH Authentication required.")


# --- Django and nginx ------------------------------------------------------------------


def test_django_health_ok():
    """probes.django_health() against the reference app (runserver) with both dependencies up."""
    check = health.django_check(fixture("django_health_ok.txt"), "django_prod")
    assert check.status == GREEN
    assert check.name == "django_prod"
    assert check.summary == "/health/ 200 (database 2.3 ms, cache 2.3 ms)"
    assert check.details["environment"] == "local"


def test_django_health_names_redis_when_the_cache_is_down():
    """The same with Redis stopped: 503 and the cache's error class."""
    check = health.django_check(fixture("django_health_cache_down.txt"))
    assert check.status == RED
    assert check.summary == "/health/ 503: cache (Redis) ConnectionError"


def test_django_health_refused():
    """The probe with nothing listening on the port."""
    check = health.django_check(fixture("django_health_refused.txt"))
    assert check.status == RED
    assert "did not answer" in check.summary and "Connection refused" in check.summary


def test_django_health_without_json_is_red():
    assert health.django_check("502 <html>bad gateway</html>").status == RED
    with pytest.raises(health.ProbeError):
        health.django_check("Traceback (most recent call last):")


def test_nginx_check():
    assert health.nginx_check(200, "ok\n", "127.0.0.1:80").status == GREEN
    bad = health.nginx_check(0, "ConnectionRefusedError: refused", "127.0.0.1:80")
    assert bad.status == RED and "refused" in bad.summary


# --- docker output ---------------------------------------------------------------------


def test_containers_by_service_from_saved_docker_ps():
    """docker ps --format PS_FORMAT for a compose project whose redis was stopped."""
    found = health.parse_containers(fixture("docker_ps_local_redis_exited.jsonl"))
    assert set(found) == {"django", "postgresql", "redis"}
    assert found["redis"].state == "exited" and not found["redis"].running
    assert found["django"].running and not found["django"].unhealthy


@pytest.mark.parametrize(
    ("name", "port"),
    [("docker_port_loopback.txt", 32769), ("docker_port_all_interfaces.txt", 32768)],
)
def test_published_port_from_saved_docker_port(name, port):
    assert health.parse_port(fixture(name)) == port


def test_no_published_port_is_a_probe_error():
    with pytest.raises(health.ProbeError):
        health.parse_port("")


# --- certificates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("valid_days", "status"),
    [(90, GREEN), (30, GREEN), (29, YELLOW), (7, YELLOW), (6, RED), (0, RED)],
)
def test_certificate_days_left(valid_days, status):
    ca = tls.create_ca(now=NOW - dt.timedelta(days=1))
    # valid from an hour after NOW (minus tls.BACKDATE): whole days plus an hour are left
    start = NOW + tls.BACKDATE + dt.timedelta(hours=1)
    leaf = tls.issue_leaf(ca, ["eduaiia.com"], valid_days=valid_days, now=start)
    check = health.certificate_check(leaf.cert, NOW, "eduaiia.com")
    assert check.status == status, check.summary
    assert check.details["days_left"] == valid_days


def test_expired_certificate_is_red():
    ca = tls.create_ca(now=NOW - dt.timedelta(days=400))
    leaf = tls.issue_leaf(ca, ["eduaiia.com"], valid_days=90, now=NOW - dt.timedelta(days=91))
    check = health.certificate_check(leaf.cert, NOW, "eduaiia.com")
    assert check.status == RED and "expired on" in check.summary


# --- the probes' scripts, run for real -------------------------------------------------


def fake_redis_cli(tmp_path: Path) -> Path:
    """A redis-cli that prints its argv and whether REDISCLI_AUTH reached it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "redis-cli"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'auth': os.environ.get('REDISCLI_AUTH')}))\n"
    )
    script.chmod(0o755)
    return bindir


def run_redis_script(tmp_path: Path, env: dict[str, str]) -> dict:
    bindir = fake_redis_cli(tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REDIS")}
    proc = subprocess.run(
        probes.redis_info("memory"),
        env={**clean, **env, "PATH": f"{bindir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def test_redis_probe_authenticates_as_admin_without_the_password_in_argv(tmp_path):
    seen = run_redis_script(tmp_path, {"REDIS_ADMIN_PASSWORD": "s3cret-admin"})
    assert seen["auth"] == "s3cret-admin"
    assert seen["argv"] == [
        *("--no-auth-warning", "-h", "127.0.0.1", "-p", "6379"),
        *("--user", "admin", "INFO", "memory"),
    ]
    assert not any("s3cret" in word for word in seen["argv"])


def test_redis_probe_reads_the_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file")
    seen = run_redis_script(tmp_path, {"REDIS_ADMIN_PASSWORD_FILE": str(secret)})
    assert seen["auth"] == "from-a-file" and "--user" in seen["argv"]


def test_redis_probe_of_the_local_redis_has_no_user(tmp_path):
    seen = run_redis_script(tmp_path, {})
    assert seen["auth"] is None
    assert seen["argv"] == ["--no-auth-warning", "-h", "127.0.0.1", "-p", "6379", "INFO", "memory"]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 503
    body = b'{"status": "fail"}'

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_django_probe_prints_status_and_body_of_an_error(http_server):
    argv = probes.django_health(http_server.server_address[1], 5)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out == '503 {"status": "fail"}\n'


def test_http_get_sends_the_host_header(http_server):
    status, body = health.http_get(http_server.server_address[1], "/health", "eduaiia.com")
    assert (status, body) == (503, '{"status": "fail"}')


def test_http_get_reports_nothing_listening(http_server):
    port = http_server.server_address[1]
    http_server.shutdown()
    http_server.server_close()
    status, body = health.http_get(port, "/health", "eduaiia.com", timeout_s=2)
    assert status == 0 and "Error" in body


def test_fetch_certificate_reads_the_served_certificate_by_sni(tmp_path):
    ca = tls.create_ca()
    leaf = tls.issue_leaf(ca, ["eduaiia.com"], valid_days=40)
    leaf.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    seen_sni = []
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cert = health.fetch_certificate(server.server_address[1], "eduaiia.com")
    finally:
        server.shutdown()
        server.server_close()
    assert cert.serial_number == leaf.cert.serial_number
    assert seen_sni == ["eduaiia.com"]


# --- collect(): the checks of a stack from probe output --------------------------------


class FakeEngine:
    """Answers each probe command with saved output; fails loudly on anything else."""

    def __init__(self, answers: dict[tuple[str, ...], Result]):
        self.answers = answers
        self.asked: list[list[str]] = []

    def __call__(self, argv: list[str]) -> Result:
        self.asked.append(argv)
        try:
            return self.answers[tuple(argv)]
        except KeyError:
            raise AssertionError(f"unexpected command: {argv}") from None


def ok(text: str) -> Result:
    return Result.of(True, text)


def local_answers(ps: str) -> dict[tuple[str, ...], Result]:
    prefix = "opskit_fx_proj"
    return {
        tuple(docker_cmd.project_containers(prefix)): ok(ps),
        tuple(docker_cmd.exec_(f"{prefix}-django-1", probes.django_health(8000))): ok(
            fixture("django_health_cache_down.txt")
        ),
        tuple(docker_cmd.exec_(f"{prefix}-postgresql-1", probes.postgres_connections())): ok(
            fixture("postgres_connections.csv")
        ),
    }


def test_collect_local_stack_with_redis_stopped_names_redis():
    engine = FakeEngine(local_answers(fixture("docker_ps_local_redis_exited.jsonl")))
    lay = health.Layout("opskit_fx_proj", health.LOCAL_SERVICES, cert_file=None)
    checks = health.collect(lay, engine, now=NOW)
    assert [(c.name, c.status) for c in checks] == [
        ("django", RED),
        ("postgresql", GREEN),
        ("redis", RED),
    ]
    assert checks[2].summary.startswith("container opskit_fx_proj-redis-1 is exited")
    assert "cache (Redis)" in checks[0].summary
    # nothing was asked of the stopped container
    assert not any("opskit_fx_proj-redis-1" in argv for argv in engine.asked)
    assert [c.name for c in health.red(checks)] == ["django", "redis"]
    assert health.overall(checks) == RED


def test_collect_reports_a_missing_service_and_a_failed_probe():
    ps = "\n".join(
        line
        for line in fixture("docker_ps_local_redis_exited.jsonl").splitlines()
        if '"redis"' not in line
    )
    answers = local_answers(ps)
    key = tuple(docker_cmd.exec_("opskit_fx_proj-postgresql-1", probes.postgres_connections()))
    answers[key] = Result.of(False, "", 'psql: error: FATAL:  role "aiia" does not exist\n')
    lay = health.Layout("opskit_fx_proj", health.LOCAL_SERVICES)
    checks = {c.name: c for c in health.collect(lay, FakeEngine(answers), now=NOW)}
    assert checks["redis"].status == RED and "not created" in checks["redis"].summary
    assert (
        checks["postgresql"].summary
        == 'probe failed: psql: error: FATAL:  role "aiia" does not exist'
    )


def test_collect_server_stack_all_green(tmp_path):
    names = {s.name: f"aiia_{s.name}" for s in health.SERVER_SERVICES}
    ps = "\n".join(
        json.dumps(
            {"service": s, "name": n, "state": "running", "status": "Up 2 minutes (healthy)"}
        )
        for s, n in names.items()
    )
    ca = tls.create_ca(now=NOW - dt.timedelta(days=10))
    leaf = tls.issue_leaf(ca, ["eduaiia.com"], valid_days=80, now=NOW - dt.timedelta(days=10))
    requests = []

    def http_get(port, path, host):
        requests.append((port, path, host))
        return 200, "ok\n"

    def fetch_certificate(port, name):
        requests.append((port, name))
        return leaf.cert

    answers = {
        tuple(docker_cmd.project_containers("aiia")): ok(ps),
        tuple(docker_cmd.port("aiia_nginx", "80/tcp")): ok(fixture("docker_port_loopback.txt")),
        tuple(docker_cmd.port("aiia_nginx", "443/tcp")): ok("127.0.0.1:40443\n"),
        tuple(docker_cmd.exec_("aiia_django_prod", probes.django_health(8000))): ok(
            fixture("django_health_ok.txt")
        ),
        tuple(docker_cmd.exec_("aiia_django_staging", probes.django_health(8001))): ok(
            fixture("django_health_ok.txt")
        ),
        tuple(docker_cmd.exec_("aiia_postgresql", probes.postgres_connections())): ok(
            fixture("postgres_connections.csv")
        ),
        tuple(docker_cmd.exec_("aiia_pgbouncer", probes.pgbouncer_pools())): ok(
            fixture("pgbouncer_show_pools_idle.csv")
        ),
        tuple(docker_cmd.exec_("aiia_redis", probes.redis_info())): ok(
            fixture("redis_info_memory.txt")
        ),
    }
    net = health.Network(http_get=http_get, fetch_certificate=fetch_certificate)
    checks = health.collect(health.layout("production"), FakeEngine(answers), net=net, now=NOW)
    assert [(c.name, c.status) for c in checks] == [
        ("nginx", GREEN),
        ("django_prod", GREEN),
        ("django_staging", GREEN),
        ("postgresql", GREEN),
        ("pgbouncer", GREEN),
        ("redis", GREEN),
        ("tls", GREEN),
    ]
    assert requests == [(32769, "/health", "eduaiia.com"), (40443, "eduaiia.com")]
    # issued 10 days (and tls.BACKDATE) before NOW for 80 days
    assert checks[-1].details["days_left"] == 69


def test_local_layout_checks_the_setup_certificate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = tls.ensure_local_certificates(tmp_path / "certs", ["localhost"])
    assert str(paths.cert.relative_to(tmp_path)) == health.LOCAL_CERT
    lay = health.layout("local", project="opskit_fx_proj")
    engine = FakeEngine(local_answers(fixture("docker_ps_local_redis_exited.jsonl")))
    checks = health.collect(lay, engine)
    assert checks[-1].name == "tls" and checks[-1].status == GREEN
    assert checks[-1].details["source"] == health.LOCAL_CERT


def test_collect_when_docker_cannot_list():
    engine = FakeEngine(
        {
            tuple(docker_cmd.project_containers("aiia_local")): Result.of(
                False, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
            )
        }
    )
    checks = health.collect(health.layout("local"), engine)
    assert [(c.name, c.status) for c in checks] == [("docker", RED)]


def test_table_and_report():
    checks = [Check("redis", RED, "container aiia_redis is exited"), Check("nginx", GREEN, "ok")]
    assert health.render_table(checks).splitlines() == [
        "SERVICE  STATUS  DETAIL",
        "redis    red     container aiia_redis is exited",
        "nginx    green   ok",
    ]
    report = health.report("production", checks)
    assert report["status"] == RED and report["red"] == ["redis"]
    assert report["checks"][0] == {
        "name": "redis",
        "status": "red",
        "summary": "container aiia_redis is exited",
    }
