"""nginx with the shipped templates (nginx/), proven on the real server.

Every request goes to 127.0.0.1 with the real site name in SNI and Host, verified
against the test CA, so the server blocks, certificates and headers are the shipped ones.
Rate-limit tests send from their own loopback source address (127.0.0.x) so the
per-address zones of one test never see another test's traffic.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.harness.core import ROOT, free_port, require_binary, venv_tool, wait_until
from tests.harness.native import NginxServer, _world_tmpdir, make_nginx

PROD, WWW, STAGING, STATUS = (
    "eduaiia.com",
    "www.eduaiia.com",
    "staging.eduaiia.com",
    "devstatus.eduaiia.com",
)
SECURITY_HEADERS = {
    "x-frame-options": "SAMEORIGIN",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": None,  # present; value checked in the snippet test
    "content-security-policy": None,
}
HSTS = "max-age=63072000"
THIRTY_DAYS = "public, max-age=2592000"
# Mozilla intermediate, guidelines v5.7: TLS 1.3 suites + the TLS 1.2 list of nginx.conf
MOZILLA_INTERMEDIATE = {
    "TLSv1.3": {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"},
    "TLSv1.2": {
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
    },
}  # fmt: skip


# --- a client that speaks to 127.0.0.1 as if it were the real site ---------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> dict:
        return json.loads(self.body)


def tls_context(nginx: NginxServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(nginx.ca_cert))


def open_socket(nginx: NginxServer, *, tls_name: str | None, port: int, source: str):
    sock = socket.create_connection((nginx.host, port), timeout=15, source_address=(source, 0))
    if tls_name is None:
        return sock
    return tls_context(nginx).wrap_socket(sock, server_hostname=tls_name)


def request(
    nginx: NginxServer,
    host: str,
    path: str = "/",
    *,
    scheme: str = "https",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    sni: str | None = "",
    body: bytes | None = None,
) -> Response:
    """One request; `host` goes in SNI (unless `sni` says otherwise) and in Host."""
    port = nginx.https_port if scheme == "https" else nginx.http_port
    tls_name = None if scheme == "http" else (host if sni == "" else sni)
    sock = open_socket(nginx, tls_name=tls_name, port=port, source=source)
    with sock:
        conn = http.client.HTTPConnection(nginx.host, port, timeout=15)
        conn.sock = sock
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())


class _Unclosable:
    """The connection's buffered stream, which a finished HTTPResponse may not close."""

    def __init__(self, fp):
        self._fp = fp

    def __getattr__(self, name):
        return getattr(self._fp, name)

    def close(self):
        pass


class _SharedFile:
    """Lets several HTTPResponse objects read one buffered stream (pipelined answers)."""

    def __init__(self, fp):
        self.fp = _Unclosable(fp)

    def makefile(self, *_args, **_kwargs):
        return self.fp


def pipeline(nginx: NginxServer, host: str, path: str, count: int, *, source: str) -> list:
    """`count` requests written at once on one TLS connection; answers in order.

    The burst's rate is then set by nginx itself (it reads the requests back to back),
    not by how fast this client can loop: above any limit on any machine.
    """
    sock = open_socket(nginx, tls_name=host, port=nginx.https_port, source=source)
    one = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    answers: list[Response] = []
    with sock:
        sock.sendall(one * count)
        shared = _SharedFile(sock.makefile("rb"))
        for _ in range(count):
            resp = http.client.HTTPResponse(shared)  # type: ignore[arg-type]
            resp.begin()
            answers.append(Response(resp.status, resp.getheaders(), resp.read()))
    return answers


def paced(nginx, host, path, count, *, per_second: float, source: str) -> list[Response]:
    """`count` requests, each sent only after the previous answer and a pause: the rate
    can only come out lower than `per_second`, never higher."""
    out = []
    for _ in range(count):
        out.append(request(nginx, host, path, source=source))
        time.sleep(1 / per_second)  # pacing, not waiting for readiness
    return out


def assert_security_headers(resp: Response, *, https: bool = True) -> None:
    for name, value in SECURITY_HEADERS.items():
        got = resp.all(name)
        assert len(got) == 1, f"{resp.status}: {name} {got}"
        if value is not None:
            assert got[0] == value, name
    hsts = resp.all("strict-transport-security")
    assert hsts == ([HSTS] if https else []), f"{resp.status}: HSTS {hsts}"


# --- the configuration itself --------------------------------------------------------


def test_nginx_accepts_the_rendered_config(nginx_server):
    check = nginx_server.nginx("-t")
    assert check.returncode == 0, check.stderr
    assert "syntax is ok" in check.stderr and "test is successful" in check.stderr


def test_effective_config_is_what_the_templates_say(nginx_server):
    dump = nginx_server.nginx("-T")
    assert dump.returncode == 0, dump.stderr
    text = dump.stdout
    for line in [
        "user www-data;",
        "worker_processes 2;",
        "worker_connections 1024;",
        "server_tokens off;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "ssl_session_tickets off;",
        "limit_req_zone $binary_remote_addr zone=general:1m rate=200r/s;",
        "limit_req_zone $binary_remote_addr zone=api:1m rate=500r/s;",
        "limit_req_status 429;",
        "limit_req zone=api burst=250 nodelay;",
        f"listen 127.0.0.1:{nginx_server.https_port} ssl http2 default_server;",
        "ssl_reject_handshake on;",
        f"server {nginx_server.upstreams['prod']};",
        "keepalive 4;",
        "gzip on;",
    ]:
        assert line in text, line
    # every template variable was filled in
    assert "${" not in text
    assert not re.search(r"\$\{?(NGINX|SITE)_", text)


def test_workers_run_unprivileged(nginx_server):
    master = nginx_server.service.proc.pid
    children = [
        line.split(None, 1)
        for line in subprocess.run(
            ["ps", "-o", "user=,args=", "--ppid", str(master)], capture_output=True, text=True
        ).stdout.splitlines()
    ]
    # two workers, the health cache's manager (and for its first minute, the loader)
    assert [args for _user, args in children].count("nginx: worker process") == 2, children
    assert {user for user, _args in children} == {"www-data"}, children


def render(conf: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """nginx/render.sh into `conf` with exactly `env` (defaults.env fills in the rest)."""
    return subprocess.run(
        ["sh", str(ROOT / "nginx" / "render.sh"), str(conf)],
        env=env,
        capture_output=True,
        text=True,
    )


def least_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """What render.sh needs besides its defaults: the status login and a run directory."""
    return {"PATH": "/usr/bin:/bin:/usr/sbin", "STATUS_USER": "ops", "STATUS_PASSWORD": "pw",
            "NGINX_RUN_DIR": str(tmp_path / "run"), **overrides}  # fmt: skip


def test_default_render_points_at_the_compose_services(tmp_path):
    """With no overrides the one place (defaults.env) gives the production layout."""
    proc = render(tmp_path / "conf", least_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    prod = (tmp_path / "conf" / "sites" / "prod.conf").read_text()
    staging = (tmp_path / "conf" / "sites" / "staging.conf").read_text()
    status = (tmp_path / "conf" / "sites" / "devstatus.conf").read_text()
    tls = (tmp_path / "conf" / "snippets" / "tls-server.conf").read_text()
    upstreams = tmp_path / "conf" / "upstreams"
    assert (upstreams / "prod.conf").read_text() == "server django_prod:8000;\n"
    assert (upstreams / "staging.conf").read_text() == "server django_staging:8001;\n"
    assert f"include {tmp_path / 'conf'}/upstreams/prod.conf;" in prod
    assert "server_name eduaiia.com www.eduaiia.com;" in prod
    assert "server_name staging.eduaiia.com;" in staging
    assert "server_name devstatus.eduaiia.com;" in status and "root /var/www/status;" in status
    assert "listen 443 ssl http2;" in prod and "root /var/www/prod;" in prod
    assert "/etc/letsencrypt/live/eduaiia.com/fullchain.pem" in tls
    htpasswd = (tmp_path / "run" / "devstatus.htpasswd").read_text()
    assert re.fullmatch(r"ops:\$6\$\S+\n", htpasswd)


@pytest.mark.parametrize(
    "env, message",
    [
        pytest.param({"STATUS_PASSWORD": "CHANGE_ME"}, "STATUS_PASSWORD", id="placeholder"),
        pytest.param({"STATUS_PASSWORD": ""}, "STATUS_PASSWORD", id="empty"),
        pytest.param({"NGINX_PROD_UPSTREAM": "x; evil"}, "must not contain", id="injection"),
        pytest.param({"NGINX_TLS_CERT": ""}, "NGINX_TLS_CERT is empty", id="empty-var"),
    ],
)
def test_render_refuses(tmp_path, env, message):
    proc = render(tmp_path / "conf", least_env(tmp_path, **env))
    assert proc.returncode != 0
    assert message in proc.stderr


def gixy(conf: Path) -> list[dict]:
    proc = subprocess.run(
        [venv_tool("gixy"), "-f", "json", str(conf)], capture_output=True, text=True
    )
    assert proc.stdout.strip().startswith("["), proc.stderr
    return json.loads(proc.stdout)


def test_gixy_finds_nothing(nginx_server):
    assert gixy(nginx_server.conf_path) == []


def test_gixy_would_catch_the_dropped_headers_trap(nginx_server, tmp_path):
    """Control: the analyser does see the trap the snippets avoid (add_header in a
    location without the security headers)."""
    env = {**nginx_server.render_env(), "NGINX_RUN_DIR": str(tmp_path / "run")}
    proc = render(tmp_path / "conf", env)
    assert proc.returncode == 0, proc.stderr
    assert gixy(tmp_path / "conf" / "nginx.conf") == []
    site = tmp_path / "conf" / "sites" / "prod.conf"
    text = site.read_text()
    broken = re.sub(r"(access_log off;\n)\s*include \S+/https-headers.conf;\n", r"\1", text)
    assert broken != text
    site.write_text(broken)
    findings = gixy(tmp_path / "conf" / "nginx.conf")
    assert [f["plugin"] for f in findings] == ["add_header_redefinition"], findings


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sslscan(nginx_server) -> ET.Element:
    exe = require_binary("sslscan", "packages")
    proc = subprocess.run(
        [exe, "--no-colour", f"--sni-name={PROD}", "--xml=-",
         f"{nginx_server.host}:{nginx_server.https_port}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    xml = proc.stdout[proc.stdout.index("<?xml") :]
    return ET.fromstring(xml)  # noqa: S314 - our own scanner's output about our server


def test_tls_scan_only_tls12_and_tls13(sslscan):
    enabled = {
        f"{p.get('type')}{p.get('version')}"
        for p in sslscan.iter("protocol")
        if p.get("enabled") == "1"
    }
    seen = {f"{p.get('type')}{p.get('version')}" for p in sslscan.iter("protocol")}
    assert {"ssl2", "ssl3", "tls1.0", "tls1.1"} <= seen  # the scanner did try them
    assert enabled == {"tls1.2", "tls1.3"}


def test_tls_scan_only_mozilla_intermediate_ciphers(sslscan):
    offered: dict[str, set[str]] = {}
    for c in sslscan.iter("cipher"):
        if c.get("status") in ("accepted", "preferred"):
            offered.setdefault(c.get("sslversion"), set()).add(c.get("cipher"))
    assert set(offered) == {"TLSv1.2", "TLSv1.3"}
    for version, ciphers in offered.items():
        assert ciphers <= MOZILLA_INTERMEDIATE[version], ciphers - MOZILLA_INTERMEDIATE[version]
    # ECDSA test certificate: the ECDSA half of the TLS 1.2 list, all of TLS 1.3
    assert offered["TLSv1.3"] == MOZILLA_INTERMEDIATE["TLSv1.3"]
    assert {c for c in offered["TLSv1.2"] if "ECDSA" in c} == {
        c for c in MOZILLA_INTERMEDIATE["TLSv1.2"] if "ECDSA" in c
    }


def test_tls_scan_no_known_weakness(sslscan):
    heartbleed = list(sslscan.iter("heartbleed"))
    assert {h.get("sslversion") for h in heartbleed} == {"TLSv1.2", "TLSv1.3"}
    assert all(h.get("vulnerable") == "0" for h in heartbleed)
    (reneg,) = sslscan.iter("renegotiation")
    assert reneg.get("supported") == "0" or reneg.get("secure") == "1"


def test_tls_scan_key_exchange_groups_are_mozillas(sslscan):
    groups = {g.get("name").split()[0] for g in sslscan.iter("group")}
    assert groups and groups <= {"x25519", "secp256r1", "secp384r1"}, groups


def test_hsts_on_https(nginx_server):
    resp = request(nginx_server, PROD, "/")
    assert resp.all("strict-transport-security") == [HSTS]


def test_tls_session_resumption_works_without_tickets(nginx_server):
    ctx = tls_context(nginx_server)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # session IDs, from the shared cache
    with socket.create_connection((nginx_server.host, nginx_server.https_port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=PROD) as first:
            session = first.session
    with socket.create_connection((nginx_server.host, nginx_server.https_port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=PROD, session=session) as second:
            assert second.session_reused


# --- names: what each Host gets ------------------------------------------------------------


@pytest.mark.parametrize("host", [PROD, WWW, STAGING, STATUS])
def test_http_redirects_to_https(nginx_server, host):
    resp = request(nginx_server, host, "/some/page?q=1", scheme="http")
    assert resp.status == 301
    assert resp.header("location") == f"https://{host}/some/page?q=1"
    assert_security_headers(resp, https=False)


def test_acme_challenge_is_served_over_http(nginx_server):
    token = "tok3n-for-test"
    acme = nginx_server.site_root("acme") / ".well-known" / "acme-challenge"
    acme.mkdir(parents=True, exist_ok=True)
    (acme / token).write_text("token.keyauth")
    resp = request(nginx_server, PROD, f"/.well-known/acme-challenge/{token}", scheme="http")
    assert resp.status == 200 and resp.body == b"token.keyauth"
    missing = request(nginx_server, STAGING, "/.well-known/acme-challenge/nope", scheme="http")
    assert missing.status == 404  # not a redirect: certbot sees the real answer


@pytest.mark.parametrize("host", ["unknown.example", "127.0.0.1", "eduaiia.com.evil.example"])
def test_unknown_host_on_http_gets_no_answer(nginx_server, host):
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        request(nginx_server, host, "/", scheme="http")


def test_http10_without_host_gets_no_answer(nginx_server):
    with socket.create_connection((nginx_server.host, nginx_server.http_port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(1024) == b""


@pytest.mark.parametrize("sni", ["unknown.example", None])
def test_unknown_or_missing_sni_is_refused_in_the_handshake(nginx_server, sni):
    ctx = ssl.create_default_context(cafile=str(nginx_server.ca_cert))
    ctx.check_hostname = False
    with socket.create_connection((nginx_server.host, nginx_server.https_port)) as raw:
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
            ctx.wrap_socket(raw, server_hostname=sni)


def test_known_sni_with_unknown_host_gets_421(nginx_server):
    resp = request(nginx_server, "unknown.example", "/", sni=PROD)
    assert resp.status == 421
    assert b"eduaiia" not in resp.body


@pytest.mark.parametrize("host, upstream", [(PROD, "prod"), (WWW, "prod"), (STAGING, "staging")])
def test_sites_proxy_to_their_environment(nginx_server, host, upstream):
    resp = request(nginx_server, host, "/admin/login/?next=/admin/")
    assert resp.status == 200
    seen = resp.json()
    assert seen["upstream"] == upstream
    assert seen["path"] == "/admin/login/?next=/admin/"
    assert seen["headers"]["host"] == host
    assert seen["headers"]["x-forwarded-proto"] == "https"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-request-id"]


def test_forwarded_for_cannot_be_spoofed(nginx_server):
    resp = request(nginx_server, PROD, "/", headers={"X-Forwarded-For": "10.9.9.9"})
    assert resp.json()["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_upstream_connections_are_kept_alive(nginx_server):
    """Two requests on one client connection reach gunicorn over one upstream socket."""
    sock = open_socket(nginx_server, tls_name=PROD, port=nginx_server.https_port,
                       source="127.0.0.1")  # fmt: skip
    with sock:
        conn = http.client.HTTPConnection(nginx_server.host)
        conn.sock = sock
        ports = []
        for _ in range(3):
            conn.request("GET", "/", headers={"Host": PROD})
            resp = conn.getresponse()
            seen = json.loads(resp.read())
            assert "connection" not in seen["headers"] or seen["headers"]["connection"] != "close"
            ports.append(seen["client_port"])
    assert len(set(ports)) == 1, ports


@pytest.mark.parametrize("host", [PROD, STAGING, STATUS])
def test_health_is_answered_by_nginx(nginx_server, host):
    resp = request(nginx_server, host, "/health")
    assert resp.status == 200 and resp.body == b"ok\n"
    assert_security_headers(resp)


def test_image_healthcheck_script(nginx_server):
    script = ROOT / "nginx" / "healthcheck.sh"
    env = {"PATH": "/usr/bin:/bin", "NGINX_DEFAULTS": str(ROOT / "nginx" / "defaults.env")}
    ok = subprocess.run(
        ["bash", str(script)],
        env={**env, "NGINX_HEALTH_PORT": str(nginx_server.http_port)},
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    # the https port does not speak plain HTTP: the check must fail, not pass by accident
    bad = subprocess.run(
        ["bash", str(script)],
        env={**env, "NGINX_HEALTH_PORT": str(nginx_server.https_port)},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


# --- headers on every kind of answer --------------------------------------------------------


def test_security_headers_on_proxied_200_replace_the_apps(nginx_server):
    resp = request(nginx_server, PROD, "/")
    assert resp.status == 200
    assert_security_headers(resp)  # the app sent DENY and its own CSP: exactly one of each
    assert "default-src 'self'" in resp.header("content-security-policy")


def test_security_headers_on_upstream_404(nginx_server):
    resp = request(nginx_server, STAGING, "/missing/page")
    assert resp.status == 404
    assert_security_headers(resp)


def test_static_file_has_30_day_cache_and_all_headers(nginx_server):
    resp = request(nginx_server, PROD, "/static/app.css")
    assert resp.status == 200 and b"prod" in resp.body
    assert resp.all("cache-control") == [THIRTY_DAYS]
    assert_security_headers(resp)


def test_media_file_has_30_day_cache_and_all_headers(nginx_server):
    media = nginx_server.site_root("staging") / "media" / "upload.txt"
    media.write_text("uploaded")
    resp = request(nginx_server, STAGING, "/media/upload.txt")
    assert resp.status == 200 and resp.body == b"uploaded"
    assert resp.all("cache-control") == [THIRTY_DAYS]
    assert_security_headers(resp)


def test_static_404_has_headers_but_is_not_cached_for_30_days(nginx_server):
    resp = request(nginx_server, PROD, "/static/nope.css")
    assert resp.status == 404
    assert_security_headers(resp)
    assert resp.all("cache-control") == []


def test_static_files_are_per_environment(nginx_server):
    assert b"staging" in request(nginx_server, STAGING, "/static/app.css").body


def test_static_traversal_is_refused(nginx_server):
    resp = request(nginx_server, PROD, "/static/../../../run/devstatus.htpasswd")
    assert resp.status in (400, 404)
    assert b"$6$" not in resp.body


def test_gzip_for_text(nginx_server):
    big = nginx_server.site_root("prod") / "static" / "big.css"
    big.write_text("body { color: black; }\n" * 200)
    resp = request(nginx_server, PROD, "/static/big.css", headers={"Accept-Encoding": "gzip"})
    assert resp.header("content-encoding") == "gzip"
    assert gzip.decompress(resp.body) == big.read_bytes()
    assert "Accept-Encoding" in resp.header("vary")


# --- devstatus -------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_devstatus_needs_credentials(nginx_server):
    resp = request(nginx_server, STATUS, "/")
    assert resp.status == 401
    assert resp.header("www-authenticate") == 'Basic realm="devstatus"'
    assert_security_headers(resp)
    wrong = request(nginx_server, STATUS, "/", headers=basic(nginx_server.status_user, "x"))
    assert wrong.status == 401


def test_devstatus_serves_the_page_the_collector_wrote(nginx_server, tmp_path):
    """The status collector (not the test) writes the page; nginx serves it and its CSS."""
    page_dir = nginx_server.site_root("status")
    auth = basic(nginx_server.status_user, nginx_server.status_password)
    proc = subprocess.run(
        [sys.executable, "-m", "opskit.status", "run", "--db", str(tmp_path / "status.db"),
         "--page-dir", str(page_dir), "--nginx", f"127.0.0.1:{nginx_server.https_port}",
         "--access-log", str(nginx_server.root / "log" / "access-file.log"),
         "--docker-socket", str(tmp_path / "no-engine.sock")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    resp = request(nginx_server, STATUS, "/", headers=auth)
    assert resp.status == 200
    body = resp.body.decode()
    # the file as written, less its SSI directives (a fresh page: no stale banner)
    written = (page_dir / "index.html").read_text()
    fresh = re.sub(r"<!--# else -->.*?<!--# endif -->", "", written, flags=re.S)
    assert body == re.sub(r"<!--#.*?-->", "", fresh)
    assert "<svg" in body and 'href="status.css"' in body
    # /health/ of both environments went through this nginx to the upstreams
    assert 'data-uptime="production-24h">100.00 %' in body
    assert_security_headers(resp)
    assert resp.header("cache-control") == "no-cache"
    css = request(nginx_server, STATUS, "/status.css", headers=auth)
    assert css.status == 200 and css.header("content-type").startswith("text/css")


def test_devstatus_says_stale_once_the_collector_stopped(nginx_server, tmp_path):
    """nginx (SSI) shows the banner when the page it serves is 3 minutes old or more."""
    page_dir = nginx_server.site_root("status")
    auth = basic(nginx_server.status_user, nginx_server.status_password)

    def page_written_at(now: float) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "opskit.status", "run", "--db", str(tmp_path / "status.db"),
             "--page-dir", str(page_dir), "--nginx", f"127.0.0.1:{nginx_server.https_port}",
             "--docker-socket", str(tmp_path / "no-engine.sock"), "--now", str(now)],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "<!--# if" in (page_dir / "index.html").read_text()
        resp = request(nginx_server, STATUS, "/", headers=auth)
        assert resp.status == 200 and b"<!--#" not in resp.body
        return resp.body.decode()

    # a minute that ends soon would make "now" a false stale: start in a fresh one
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    assert 'id="stale"' not in page_written_at(time.time())
    assert 'id="stale"' in page_written_at(time.time() - 3 * 60)
    assert 'id="stale"' in page_written_at(time.time() - 3600)


def test_htpasswd_is_not_world_readable(nginx_server):
    mode = (nginx_server.root / "run" / "devstatus.htpasswd").stat().st_mode & 0o777
    assert mode == 0o640
    assert (
        nginx_server.status_password
        not in (nginx_server.root / "run" / "devstatus.htpasswd").read_text()
    )


# --- rate limits -----------------------------------------------------------------------------


def error_log_rejections(nginx: NginxServer, zone: str) -> int:
    return len(re.findall(rf'limiting requests, excess: \S+ by zone "{zone}"',
                          nginx.error_log.read_text()))  # fmt: skip


def test_burst_above_general_limit_gets_429_with_headers(nginx_server):
    before = error_log_rejections(nginx_server, "general")
    answers = pipeline(nginx_server, PROD, "/static/app.css", 600, source="127.0.0.3")
    statuses = [a.status for a in answers]
    assert set(statuses) <= {200, 429}
    # burst=100 nodelay: the first 101 pass at once, then the limit answers 429
    assert statuses[:101] == [200] * 101
    rejected = [a for a in answers if a.status == 429]
    assert len(rejected) >= 300
    assert_security_headers(rejected[0])
    assert rejected[0].all("cache-control") == []
    wait_until(
        lambda: error_log_rejections(nginx_server, "general") >= before + len(rejected),
        timeout=10,
        what="limit_req lines in the error log",
    )


def test_health_is_never_rate_limited(nginx_server):
    answers = pipeline(nginx_server, PROD, "/health", 600, source="127.0.0.5")
    assert {a.status for a in answers} == {200}


def test_paced_client_under_the_limits_gets_no_429(nginx_server):
    static = paced(nginx_server, PROD, "/static/app.css", 60, per_second=100, source="127.0.0.6")
    api = paced(nginx_server, PROD, "/api/items/", 60, per_second=100, source="127.0.0.7")
    assert {r.status for r in static} == {200}
    assert {r.status for r in api} == {200}


@pytest.fixture(scope="module")
def nginx_fast_app() -> Iterator[NginxServer]:
    """The same config whose "app" is its own port-80 server: every proxied request is
    answered with that server's redirect at nginx's own speed, so an /api/ burst is
    above 500 r/s on any machine (a Python stand-in might not keep up)."""
    root = _world_tmpdir("nginx-fastapp")
    server = make_nginx(root, {})
    own = f"127.0.0.1:{server.http_port}"
    server.upstreams = {"prod": own, "staging": own}
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_api_has_its_own_higher_limit(nginx_fast_app):
    nginx = nginx_fast_app
    # 900: under nginx's keepalive_requests (1000 per connection)
    answers = pipeline(nginx, PROD, "/api/items/", 900, source="127.0.0.8")
    statuses = [a.status for a in answers]
    assert set(statuses) <= {301, 429}
    # burst=250 nodelay: 251 reach the app at once (above general's 101), then 429
    assert statuses[:251] == [301] * 251
    assert statuses.count(429) >= 400
    assert_security_headers(next(a for a in answers if a.status == 429))
    wait_until(lambda: error_log_rejections(nginx, "api") > 0, timeout=10, what="api zone log")
    assert error_log_rejections(nginx, "general") == 0  # /api/ is not in the general zone


# --- the access log the monitor reads -----------------------------------------------------------


def test_access_log_is_one_json_object_per_line(nginx_server):
    marker = "/log-probe?x=%22quoted%22"
    request(nginx_server, PROD, marker, headers={"User-Agent": 'probe "agent"'})

    def line():
        for raw in nginx_server.access_log.read_text().splitlines():
            entry = json.loads(raw)
            if entry["uri"] == marker:
                return entry
        return None

    entry = wait_until(line, timeout=10, what="the probe's access-log line")
    assert entry["status"] == 200 and entry["host"] == PROD and entry["method"] == "GET"
    assert entry["user_agent"] == 'probe "agent"'
    assert isinstance(entry["request_time"], float | int)
    assert float(entry["upstream_response_time"]) >= 0
    assert float(entry["upstream_connect_time"]) >= 0
    assert entry["upstream_status"] == "200"
    assert entry["upstream_addr"] == nginx_server.upstreams["prod"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", entry["time"])


# --- end to end: nginx -> gunicorn (app/) -> PgBouncer -> PostgreSQL, Redis -------------


class TLSBrowser:
    """Cookies and CSRF over real HTTPS through nginx, as a browser on eduaiia.com."""

    def __init__(self, nginx: NginxServer, host: str = PROD) -> None:
        self.nginx = nginx
        self.host = host
        self.cookies: dict[str, str] = {}

    def send(self, method: str, path: str, *, body: bytes | None = None, headers=None):
        origin = f"https://{self.host}"
        all_headers = {"Referer": origin + path, **(headers or {})}
        if method != "GET":
            all_headers["Origin"] = origin
            if "csrftoken" in self.cookies:
                all_headers["X-CSRFToken"] = self.cookies["csrftoken"]
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        resp = request(self.nginx, self.host, path, method=method, headers=all_headers, body=body)
        for raw in resp.all("set-cookie"):
            for name, morsel in SimpleCookie(raw).items():
                assert morsel["secure"], f"cookie {name} is not Secure behind nginx"
                self.cookies[name] = morsel.value
        return resp

    def login(self, username: str, password: str) -> None:
        self.send("GET", "/admin/login/")
        form = urlencode({"username": username, "password": password, "next": "/admin/",
                          "csrfmiddlewaretoken": self.cookies["csrftoken"]})  # fmt: skip
        resp = self.send(
            "POST",
            "/admin/login/?next=/admin/",
            body=form.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 302 and "sessionid" in self.cookies, resp.body[:500]


@pytest.fixture(scope="module")
def app_behind_nginx(app_environment):
    """The production app under gunicorn (app/gunicorn.conf.py) behind the shipped nginx;
    collectstatic writes into the static volume nginx serves."""
    from tests.harness.django_app import DjangoApp, manage

    root = _world_tmpdir("nginx-app")
    nginx = make_nginx(root, {})
    workdir = root / "app"
    workdir.mkdir(mode=0o700)
    env = app_environment("production", workdir)
    env["DJANGO_STATIC_ROOT"] = str(nginx.site_root("prod") / "static")
    env["DJANGO_MEDIA_ROOT"] = str(nginx.site_root("prod") / "media")
    manage(env, "migrate", "--noinput")
    manage(env, "collectstatic", "--noinput")
    username, password = f"ops-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    manage(
        {**env, "DJANGO_SUPERUSER_PASSWORD": password},
        "createsuperuser", "--noinput", "--username", username, "--email", "ops@example.com",
    )  # fmt: skip
    try:
        with DjangoApp(env, workdir) as app:
            gunicorn = f"127.0.0.1:{app.port}"
            nginx.upstreams = {"prod": gunicorn, "staging": gunicorn}
            with nginx:
                yield nginx, app, (username, password)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_end_to_end_write_and_read_through_nginx(app_behind_nginx, postgres_server):
    nginx, app, login = app_behind_nginx
    browser = TLSBrowser(nginx)
    browser.login(*login)
    title = f"via nginx {secrets.token_hex(4)}"
    created = browser.send(
        "POST",
        "/api/notes/",
        body=json.dumps({"title": title, "body": "nginx, gunicorn, pgbouncer"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert created.status == 201, created.body[:500]
    assert_security_headers(created)
    note = created.json()

    listed = request(nginx, PROD, "/api/notes/")
    assert listed.status == 200
    assert note in listed.json()["results"]
    assert request(nginx, PROD, f"/api/notes/{note['id']}/").json() == note

    query = f"SELECT title FROM core_note WHERE id = {int(note['id'])}"  # noqa: S608 - an int
    assert postgres_server.psql(query, db="aiia_prod") == title

    def logged():
        for raw in nginx.access_log.read_text().splitlines():
            entry = json.loads(raw)
            if entry["method"] == "POST" and entry["uri"] == "/api/notes/":
                return entry
        return None

    entry = wait_until(logged, timeout=10, what="the POST's access-log line")
    assert entry["status"] == 201 and entry["upstream_addr"] == f"127.0.0.1:{app.port}"
    assert float(entry["upstream_response_time"]) > 0


def test_end_to_end_app_health_and_collected_static(app_behind_nginx):
    nginx, _app, _login = app_behind_nginx
    health = request(nginx, PROD, "/health/")
    assert health.status == 200, health.body[:500]
    assert health.json()["status"] == "ok"
    css = request(nginx, PROD, "/static/admin/css/base.css")
    assert css.status == 200 and b"body" in css.body
    assert css.all("cache-control") == [THIRTY_DAYS]
    assert_security_headers(css)
    admin = request(nginx, PROD, "/admin/login/")
    assert admin.status == 200
    assert_security_headers(admin)


# --- /health/ for the internet, admin sign-in limit, uploads that cannot run script ----


def test_public_health_is_the_status_only_while_probes_get_details(app_behind_nginx):
    """From an address of the internet (127.0.0.3 is neither this host's 127.0.0.1 nor a
    private network to nginx.conf's geo), /health/ is the status only, whatever the client
    sends; the server's own probes (127.0.0.1 through nginx, or the container directly, as
    Docker, the deploy gate and `inv healthcheck` ask) get the details."""
    import requests

    nginx, app, _login = app_behind_nginx
    internet = "127.0.0.3"
    public = request(nginx, PROD, "/health/", source=internet)
    assert public.status == 200
    assert public.json() == {"status": "ok"}, public.body
    assert b"version" not in public.body and b"production" not in public.body
    for sent in ({"X-Forwarded-For": ""}, {"X-Real-IP": ""}, {"X-Forwarded-For": "127.0.0.1"}):
        spoofed = request(nginx, PROD, "/health/", source=internet, headers=sent)
        assert spoofed.json() == {"status": "ok"}, (sent, spoofed.body)
    # any other page still tells the app the client's address, from here too
    assert request(nginx, PROD, "/health/x", source="127.0.0.1").status == 404

    for body in (
        request(nginx, PROD, "/health/", source="127.0.0.1").json(),
        requests.get(f"{app.url}/health/", headers={"Host": "127.0.0.1"}, timeout=30).json(),
    ):
        assert body["status"] == "ok" and body["environment"] == "production", body
        assert body["version"] and set(body["checks"]) == {"database", "cache"}


def test_the_internets_health_answers_come_from_a_one_second_cache(app_behind_nginx):
    """A burst of public /health/ requests reaches the app about once a second (nginx
    answers the rest from its cache, access-log entries without an upstream), while the
    server's own probes through nginx reach the app every time and read the details."""
    nginx, _app, _login = app_behind_nginx
    public_agent, own_agent = (f"health-cache-{secrets.token_hex(4)}" for _ in range(2))
    started = time.monotonic()
    public = [
        request(nginx, PROD, "/health/", source="127.0.0.3", headers={"User-Agent": public_agent})
        for _ in range(40)
    ]
    elapsed = time.monotonic() - started
    own = [
        request(nginx, PROD, "/health/", source="127.0.0.1", headers={"User-Agent": own_agent})
        for _ in range(5)
    ]
    assert [(r.status, r.json()) for r in public] == [(200, {"status": "ok"})] * 40
    # the app's no-store still reaches the client: only nginx keeps the answer
    assert all(r.all("cache-control") == ["no-store"] for r in public)
    assert all(r.status == 200 and r.json()["version"] for r in own)

    def upstreams(agent: str, count: int) -> list[str]:
        """The upstream of each of `agent`'s `count` requests, once all are logged."""

        def logged() -> list[str] | None:
            entries = [json.loads(raw) for raw in nginx.access_log.read_text().splitlines()]
            found = [e["upstream_addr"] for e in entries if e["user_agent"] == agent]
            return found if len(found) == count else None

        return wait_until(logged, timeout=10, what=f"{count} access-log lines of {agent}")

    from_app = [u for u in upstreams(public_agent, 40) if u]
    # nginx keeps an answer for the rest of the second it was fetched in and the next one
    assert len(from_app) <= int(elapsed) + 2, (len(from_app), elapsed)
    own_upstreams = upstreams(own_agent, 5)
    assert all(own_upstreams), own_upstreams


# wrk with the URL's host in SNI and Host, connecting to nginx's loopback address
WRK_CONNECT = """
local connect = os.getenv("WRK_CONNECT")
function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup(connect, service)
end
"""


def upstream_connections(port: int) -> dict[int, int]:
    """Established connections on gunicorn's port, by the process that holds them."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    held: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        held[int(pid)] = held.get(int(pid), 0) + 1
    return held


def test_a_replaced_worker_gets_its_share_of_nginx_connections(app_behind_nginx, tmp_path):
    """Under load nginx keeps its connections to gunicorn busy, so they never idle out.
    When a worker exits (a max_requests recycle, a crash), nginx reconnects its share at
    once and the surviving worker, the only one accepting in that instant, takes them
    all. Kept alive, they would stay there: every request on one process and its GIL,
    half the CPUs, until the next recycle moved them all again. nginx's keepalive_time
    closes each upstream connection after a few seconds of use, and its successor goes
    to whichever worker accepts it: the replacement gets its share back."""
    require_binary("wrk", "packages")
    nginx, app, _login = app_behind_nginx
    script = tmp_path / "connect.lua"
    script.write_text(WRK_CONNECT)
    # /api/notes/ from 127.0.0.1: under the API's 500 r/s, and every request reaches gunicorn
    wrk = subprocess.Popen(
        ["wrk", "-t", "1", "-c", "32", "-d", "90s", "-s", str(script),
         f"https://{PROD}:{nginx.https_port}/api/notes/"],
        env={**os.environ, "WRK_CONNECT": nginx.host},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        master = app.service.proc.pid

        def workers() -> set[int]:
            out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)],
                                 capture_output=True, text=True).stdout  # fmt: skip
            return {int(pid) for pid in out.split()}

        def both_busy() -> dict[int, int] | None:
            held = upstream_connections(app.port)
            return held if set(held) == workers() and len(held) == 2 else None

        before = wait_until(both_busy, timeout=30, what="both workers holding connections")
        victim = max(before)
        os.kill(victim, signal.SIGTERM)  # a graceful exit, as a recycle is

        def successor() -> int | None:
            now = workers()
            return next(iter(now - set(before)), None) if len(now) == 2 else None

        wait_until(successor, timeout=30, what="the master replacing the worker")

        def spread() -> dict[int, int] | None:
            """Each worker (the replacement, or a later one if another recycled meanwhile)
            holding a quarter of the connections at least."""
            held = upstream_connections(app.port)
            total = sum(held.values())
            ok = len(held) == 2 and set(held) == workers() and min(held.values()) >= total // 4
            return held if total and ok else None

        wait_until(spread, timeout=45, what="nginx's connections spread over both workers")
        assert wrk.poll() is None, "wrk stopped early"
    finally:
        wrk.terminate()
        wrk.wait(30)


def test_admin_sign_in_burst_gets_429_past_five_a_minute(app_behind_nginx):
    nginx, _app, _login = app_behind_nginx
    # an address of its own, so other tests' sign-ins (from 127.0.0.1) do not count
    source = "127.0.0.3"
    form = urlencode({"username": "nobody", "password": "guess"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    statuses = [
        request(nginx, PROD, "/admin/login/", method="POST", body=form, headers=headers,
                source=source).status
        for _ in range(12)
    ]  # fmt: skip
    # 5 reach Django (403: no CSRF token), the rest are refused by nginx
    assert statuses[:5] == [403] * 5, statuses
    assert statuses[5:] == [429] * 7, statuses
    # the form itself is not limited beyond the general 200 r/s
    assert all(
        request(nginx, PROD, "/admin/login/", source=source).status == 200 for _ in range(10)
    )
    assert error_log_rejections(nginx, "admin_login") >= 7


MEDIA_PAGE = "MEDIA-PAGE-RENDERED"
SCRIPT_RAN = "SCRIPT-RAN"


def media_files(token: str) -> dict[str, bytes]:
    """An upload set that runs script wherever a browser treats it as a page of the site:
    the page loads a script that is itself an upload ('self' under the site's CSP), which
    marks the DOM and fetches a beacon; the page's image shows it rendered at all."""
    js = (
        f"document.documentElement.setAttribute('data-ran', '{SCRIPT_RAN}');"
        f"fetch('/media/beacon-{token}.txt');"
    )
    html = (
        f"<!doctype html><html><head><title>{MEDIA_PAGE}</title></head><body>"
        f"<p>{MEDIA_PAGE}</p><img src='/media/seen-html-{token}.png'>"
        f"<script src='/media/run-{token}.js'></script></body></html>"
    )
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' xmlns:xlink='http://www.w3.org/1999/xlink' "
        f"width='10' height='10'><title>{MEDIA_PAGE}</title>"
        f"<image href='/media/seen-svg-{token}.png' width='10' height='10'/>"
        f"<script xlink:href='/media/run-{token}.js'/></svg>"
    )
    return {
        f"page-{token}.html": html.encode(),
        f"drawing-{token}.svg": svg.encode(),
        f"run-{token}.js": js.encode(),
        f"photo-{token}.png": base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
        ),
    }


def upload(env: dict, files: dict[str, bytes], tmp: Path) -> None:
    """Store the files through the app's own storage (MEDIA_ROOT), as an upload would."""
    from tests.harness.django_app import manage

    src = tmp / "uploads"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    code = (
        "import pathlib; from django.core.files import File; "
        "from django.core.files.storage import default_storage as s\n"
        f"for p in sorted(pathlib.Path({str(src)!r}).iterdir()):\n"
        "    with p.open('rb') as f: assert s.save(p.name, File(f)) == p.name\n"
    )
    manage(env, "shell", "-c", code)


def chromium_dump(url: str, resolve: str, tmp: Path, wait_s: float = 8) -> str:
    """Headless Chromium opens `url` (host names mapped to loopback) and prints the DOM.

    A response that is a download never becomes a document: Chromium then prints nothing
    and waits, so it is stopped after `wait_s` (a page renders and prints within a second
    or two here) with everything it started.
    """
    import signal

    binary = require_binary("chromium")
    profile = tmp / f"profile-{secrets.token_hex(3)}"
    argv = [
        binary, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={profile}", "--ignore-certificate-errors",
        # every name but ours is unresolvable: nothing leaves loopback
        f"--host-resolver-rules=MAP {resolve} 127.0.0.1, MAP * ~NOTFOUND",
        "--virtual-time-budget=3000", "--dump-dom", url,
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={"HOME": str(tmp), "PATH": "/usr/bin:/bin"}, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return out or ""


def test_uploads_in_media_cannot_run_script(app_behind_nginx, tmp_path):
    nginx, app, _login = app_behind_nginx
    token = secrets.token_hex(4)
    files = media_files(token)
    upload(app.env, files, tmp_path)

    # the headers, per type
    for name in files:
        resp = request(nginx, PROD, f"/media/{name}")
        assert resp.status == 200 and resp.body == files[name], name
        assert_security_headers(resp)
        assert resp.all("x-content-type-options") == ["nosniff"]
        csp = resp.all("content-security-policy")
        assert len(csp) == 1 and csp[0].startswith("sandbox;"), (name, csp)
        disposition = resp.all("content-disposition")
        if name.endswith(".png"):
            assert disposition == [], name  # a plain image is shown
        else:
            assert disposition == ["attachment"], (name, disposition)
    assert request(nginx, PROD, f"/media/drawing-{token}.svg").header("content-type") == (
        "image/svg+xml"
    )

    # a real browser opening each: no script runs, nothing renders as a page of the site
    origin = f"https://{PROD}:{nginx.https_port}"
    for name in (f"page-{token}.html", f"drawing-{token}.svg"):
        dom = chromium_dump(f"{origin}/media/{name}", PROD, tmp_path)
        assert SCRIPT_RAN not in dom and MEDIA_PAGE not in dom, (name, dom[:500])
    # Chromium did fetch both files, and nothing they would have loaded
    log = [json.loads(line) for line in nginx.access_log.read_text().splitlines() if line]
    uris = [e["uri"] for e in log if token in e["uri"] and "Chrome" in e["user_agent"]]
    assert f"/media/page-{token}.html" in uris and f"/media/drawing-{token}.svg" in uris
    loaded = [u for u in uris if "beacon" in u or "seen-" in u or "run-" in u]
    assert loaded == [], loaded


def test_the_browser_check_sees_script_that_runs(tmp_path):
    """The same files from a plain server without these headers: Chromium renders the page
    and runs its script, so the test above would see it if nginx let it happen."""
    token = secrets.token_hex(4)
    root = tmp_path / "site"
    (root / "media").mkdir(parents=True)
    for name, data in media_files(token).items():
        (root / "media" / name).write_bytes(data)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True,
                   timeout=10, what="http.server")  # fmt: skip
        dom = chromium_dump(
            f"http://plain.test:{port}/media/page-{token}.html", "plain.test", tmp_path
        )
    finally:
        server.terminate()
        server.wait(10)
    assert MEDIA_PAGE in dom and SCRIPT_RAN in dom, dom[:500]
