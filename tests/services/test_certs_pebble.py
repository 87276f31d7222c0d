"""Let's Encrypt issuance and renewal, for real, against pebble (Let's Encrypt's test CA).

Everything runs on loopback. pebble-challtestsrv is the DNS server pebble asks: it
answers 127.0.0.1 for every name, so pebble validates each HTTP-01 challenge by a GET to
http://eduaiia.com:<nginx's http port>/.well-known/acme-challenge/<token>, which the
project's nginx (the shipped templates) serves from the webroot certbot wrote. Nothing
is marked valid without that request (no PEBBLE_VA_ALWAYS_VALID).

The story is the server's: nginx first runs on a stand-in certificate (the image's
entrypoint does the same until certbot has issued), certbot issues through nginx's
webroot, nginx is pointed at /etc/letsencrypt/live/eduaiia.com/ (here under a temporary
config dir, same layout) and reloaded; then renewals put new certificates in service
through certbot's deploy hook `nginx -s reload`, with the same master process and no
failed request. certbot's commands are opskit.certs' builders.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from opskit import certs
from tests.harness.acme import ChallengeDNS, Pebble
from tests.harness.core import (
    PrerequisiteError,
    free_port,
    require_binary,
    wait_until,
)
from tests.harness.native import NginxServer, _world_tmpdir, make_nginx

CERTBOT_TIMEOUT_S = 180  # a certbot that hangs fails the test instead of blocking the run


# =====================================================================================
# certbot (pebble and its DNS server: tests/harness/acme.py)
# =====================================================================================


@dataclass
class CertbotRun:
    argv: list[str]
    returncode: int
    output: str
    max_rss_kb: int

    def check(self) -> CertbotRun:
        if self.returncode != 0:
            raise AssertionError(
                f"{shlex.join(self.argv)} failed (exit {self.returncode}):\n{self.output[-4000:]}"
            )
        return self


@dataclass
class Certbot:
    """Debian's certbot with its config, work and logs dirs under `root`, trusting pebble."""

    root: Path
    pebble: Pebble

    @property
    def dirs(self) -> certs.CertbotDirs:
        return certs.CertbotDirs(
            str(self.root / "letsencrypt"), str(self.root / "work"), str(self.root / "logs")
        )

    @property
    def live(self) -> Path:
        return Path(certs.live_dir(certs.CERT_NAME, self.dirs.config_dir))

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "LANG": "C.UTF-8",
            "HOME": str(self.root),
            "XDG_CONFIG_HOME": str(self.root / "xdg"),
            "REQUESTS_CA_BUNDLE": str(self.pebble.listener_ca),
        }

    def run(self, argv: list[str]) -> CertbotRun:
        """Run certbot and wait for it; its peak RSS comes from the kernel (wait4)."""
        argv = [require_binary("certbot", "packages"), *argv[1:]]
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env(), cwd=self.root,
            )  # fmt: skip
            killer = threading.Timer(CERTBOT_TIMEOUT_S, proc.kill)
            killer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read().decode(errors="replace")
        return CertbotRun(argv, proc.returncode, text, usage.ru_maxrss)

    def leaf(self) -> certs.CertInfo:
        return certs.parse_cert((self.live / "cert.pem").read_bytes())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


@dataclass
class AcmeAccount:
    """certbot's ACME account at pebble, for the RFC 8555 requests certbot has no command for.

    Signs with certbot's own account key (accounts/<server>/<account id>/private_key.json,
    a JWK) and names the account by the URL certbot registered (regr.json).
    """

    pebble: Pebble
    url: str
    key: rsa.RSAPrivateKey
    nonce: str | None = None

    @classmethod
    def of(cls, certbot: Certbot) -> AcmeAccount:
        regrs = list(Path(certbot.dirs.config_dir, "accounts").glob("*/*/*/regr.json"))
        assert len(regrs) == 1, regrs
        jwk = json.loads((regrs[0].parent / "private_key.json").read_text())
        n, e, d, p, q, dp, dq, qi = (
            _b64url_int(jwk[k]) for k in ("n", "e", "d", "p", "q", "dp", "dq", "qi")
        )
        key = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n))
        url = json.loads(regrs[0].read_text())["uri"]
        return cls(certbot.pebble, url, key.private_key())

    def _open(self, url: str, method: str, data: bytes | None = None):
        """One request to pebble's ACME listener; the response's headers and body."""
        assert url.startswith(f"https://127.0.0.1:{self.pebble.port}/"), url
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/jose+json")
        context = ssl.create_default_context(cafile=str(self.pebble.listener_ca))
        try:
            resp = urllib.request.urlopen(request, context=context, timeout=10)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {url}: {exc.code} {exc.read().decode()}") from exc
        with resp:
            self.nonce = resp.headers.get("Replay-Nonce", self.nonce)
            return resp.headers, resp.read()

    def post(self, url: str, payload: dict | None = None) -> tuple[dict, object]:
        """A JWS-signed POST (payload None: POST-as-GET); the response's JSON and headers."""
        if self.nonce is None:
            directory = json.loads(self.pebble._get("/dir", self.pebble.port))
            self._open(directory["newNonce"], "HEAD")
        protected = _b64url(
            json.dumps({"alg": "RS256", "kid": self.url, "nonce": self.nonce, "url": url}).encode()
        )
        body = "" if payload is None else _b64url(json.dumps(payload).encode())
        signature = self.key.sign(
            f"{protected}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        jws = {"protected": protected, "payload": body, "signature": _b64url(signature)}
        headers, text = self._open(url, "POST", json.dumps(jws).encode())
        return json.loads(text), headers

    def orders(self) -> list[str]:
        account, _ = self.post(self.url)
        urls, page = [], account["orders"]
        while page:
            listing, headers = self.post(page)
            urls += listing["orders"]
            nexts = [
                m.group(1)
                for link in headers.get_all("Link") or []
                if (m := re.fullmatch(r'<([^>]+)>;\s*rel="next"', link.strip()))
            ]
            page = nexts[0] if nexts else None
        return urls

    def deactivate_valid_authorizations(self) -> list[str]:
        """Deactivate every valid authorization of the account's orders; their names."""
        names, seen = [], set()
        for order_url in self.orders():
            order, _ = self.post(order_url)
            for authz_url in order["authorizations"]:
                if authz_url in seen:
                    continue
                seen.add(authz_url)
                authz, _ = self.post(authz_url)
                if authz["status"] != "valid":
                    continue
                updated, _ = self.post(authz_url, {"status": "deactivated"})
                assert updated["status"] == "deactivated", updated
                names.append(authz["identifier"]["value"])
        return names


# =====================================================================================
# nginx with certificate paths of our choosing
# =====================================================================================


@dataclass
class AcmeNginx(NginxServer):
    """The services tier's nginx, its certificate paths settable (NGINX_TLS_CERT/KEY)."""

    tls_cert: Path | None = None
    tls_key: Path | None = None

    @classmethod
    def from_server(cls, server: NginxServer) -> AcmeNginx:
        return cls(**{f.name: getattr(server, f.name) for f in fields(server)})

    def render_env(self) -> dict[str, str]:
        env = super().render_env()
        if self.tls_cert is not None and self.tls_key is not None:
            env["NGINX_TLS_CERT"] = str(self.tls_cert)
            env["NGINX_TLS_KEY"] = str(self.tls_key)
        return env

    @property
    def master_pid(self) -> int:
        return int((self.root / "run" / "nginx.pid").read_text())

    def workers(self) -> set[int]:
        """The master's children: new ones after every reload."""
        pid = self.master_pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(p) for p in text.split()}

    def reload_hook(self) -> str:
        """certbot's deploy hook for this instance: the image's `nginx -s reload`."""
        argv = [require_binary("nginx", "packages"), "-p", str(self.root),
                "-c", str(self.conf_path), "-e", str(self.error_log), "-s", "reload"]  # fmt: skip
        return shlex.join(argv)

    def acme_requests(self) -> list[dict]:
        """Access-log entries of HTTP-01 challenge requests (JSON lines, nginx/README.md)."""
        entries = []
        for line in self.access_log.read_text().splitlines():
            entry = json.loads(line)
            if entry["uri"].startswith("/.well-known/acme-challenge/"):
                entries.append(entry)
        return entries


def handshake(
    nginx: NginxServer, server_name: str, roots: str | None = None
) -> tuple[x509.Certificate, str]:
    """TLS to nginx with SNI `server_name`; with `roots`, the chain must verify up to them.

    Returns the leaf nginx presented and the status line of GET /health on it.
    """
    if roots is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cadata=roots)
    with socket.create_connection((nginx.host, nginx.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as conn:
            der = conn.getpeercert(binary_form=True)
            conn.sendall(
                f"GET /health HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    return x509.load_der_x509_certificate(der), status


def served_serial(nginx: NginxServer, server_name: str = certs.CERT_NAME) -> int:
    return handshake(nginx, server_name)[0].serial_number


class RequestLoop:
    """Clients opening a new TLS connection per request (bounded), noting what they got."""

    def __init__(
        self,
        nginx: NginxServer,
        roots: str,
        clients: int = 2,
        max_requests: int = 20000,
        max_seconds: float = 180,
        pause_s: float = 0.005,
    ) -> None:
        self.nginx, self.roots = nginx, roots
        self.max_requests, self.pause_s = max_requests, pause_s
        self.deadline = time.monotonic() + max_seconds
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        # per client: (serial, status line) or (None, error), in order
        self.results: list[list[tuple[int | None, str]]] = [[] for _ in range(clients)]
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def _client(self, index: int) -> None:
        while (
            not self.stop_event.wait(self.pause_s)
            and self.count() < self.max_requests
            and time.monotonic() < self.deadline
        ):
            try:
                cert, status = handshake(self.nginx, certs.CERT_NAME, self.roots)
                result = (cert.serial_number, status)
            except (OSError, ssl.SSLError) as exc:
                result = (None, repr(exc))
            with self.lock:
                self.results[index].append(result)

    def count(self, serial: int | None = None) -> int:
        with self.lock:
            return sum(1 for rs in self.results for s, _ in rs if serial is None or s == serial)

    def __enter__(self) -> RequestLoop:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)


# =====================================================================================
# fixtures: one nginx, one DNS server, one pebble and one certbot lineage per module
# =====================================================================================


@pytest.fixture(scope="module")
def acme_root() -> Path:
    root = _world_tmpdir("acme")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def acme_dns(acme_root: Path) -> ChallengeDNS:
    dns = ChallengeDNS(port=free_port(), root=acme_root).start()
    yield dns
    dns.stop()


@pytest.fixture(scope="module")
def acme_nginx(acme_root: Path, nginx_upstreams) -> AcmeNginx:
    """nginx with the shipped templates, first on a stand-in certificate (not pebble's)."""
    require_binary("nginx", "packages")
    require_binary("envsubst", "packages")
    root = acme_root / "nginx"
    root.mkdir(mode=0o755)
    server = make_nginx(root, {k: v.address for k, v in nginx_upstreams.items()})
    nginx = AcmeNginx.from_server(server)
    nginx.start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def pebble(acme_root: Path, acme_nginx: AcmeNginx, acme_dns: ChallengeDNS) -> Pebble:
    server = Pebble(acme_root / "pebble", http_port=acme_nginx.http_port, dns=acme_dns)
    server.start()
    yield server
    server.stop()


@dataclass
class Issued:
    certbot: Certbot
    run: CertbotRun
    master_pid_before: int
    stand_in_serial: int


@pytest.fixture(scope="module")
def issued(acme_root: Path, acme_nginx: AcmeNginx, pebble: Pebble) -> Issued:
    """The first issuance, as on a new server, then nginx pointed at the live files."""
    nginx = acme_nginx
    master = nginx.master_pid
    stand_in = served_serial(nginx)
    certbot = Certbot(acme_root / "certbot", pebble)
    run = certbot.run(
        certs.certonly(
            certs.DOMAINS,
            email=None,
            webroot=str(nginx.site_root("acme")),
            server=pebble.directory_url,
            dirs=certbot.dirs,
            deploy_hook=nginx.reload_hook(),
        )
    ).check()
    print(f"certbot certonly: peak RSS {run.max_rss_kb / 1024:.1f} MiB")
    # what the image's entrypoint does at its next start, here without a restart
    nginx.tls_cert = certbot.live / "fullchain.pem"
    nginx.tls_key = certbot.live / "privkey.pem"
    nginx.render()
    reload = nginx.nginx("-s", "reload")
    if reload.returncode != 0:
        raise PrerequisiteError(f"nginx -s reload failed: {reload.stderr}")
    issued_serial = certbot.leaf().serial
    wait_until(
        lambda: served_serial(nginx) == issued_serial,
        timeout=30,
        what="nginx serving the issued certificate after its reload",
    )
    return Issued(certbot, run, master, stand_in)


# =====================================================================================
# tests
# =====================================================================================


def test_issuance_was_validated_through_nginx_webroot(issued: Issued, acme_nginx: AcmeNginx):
    """pebble fetched every name's token from nginx, and certbot kept the webroot setup."""
    fetched = [e for e in acme_nginx.acme_requests() if e["status"] == 200]
    assert {e["host"] for e in fetched} == set(certs.DOMAINS)
    assert all(e["method"] == "GET" and e["upstream_addr"] == "" for e in fetched)
    # the challenge files are gone once validated: a replay finds nothing
    for entry in fetched:
        path = acme_nginx.site_root("acme") / entry["uri"].lstrip("/")
        assert not path.exists()
    renewal = Path(issued.certbot.dirs.config_dir, "renewal", "eduaiia.com.conf").read_text()
    assert "authenticator = webroot" in renewal
    assert f"server = {issued.certbot.pebble.directory_url}" in renewal
    assert f"renew_hook = {acme_nginx.reload_hook()}" in renewal


def test_live_files_have_letsencrypts_layout(issued: Issued):
    live = issued.certbot.live
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"):
        # symlinks into archive/, version 1 until the first renewal
        assert re.fullmatch(rf"\.\./\.\./archive/eduaiia\.com/{name[:-4]}\d+\.pem",
                            os.readlink(live / name))  # fmt: skip
    leaf = issued.certbot.leaf()
    assert set(leaf.names) == set(certs.DOMAINS)
    assert leaf.issuer.startswith("CN=Pebble Intermediate CA")
    assert (live / "privkey.pem").resolve().stat().st_mode & 0o077 == 0


def test_nginx_serves_pebbles_certificate_for_every_name(
    issued: Issued, acme_nginx: AcmeNginx, pebble: Pebble
):
    roots = pebble.roots()
    serial = issued.certbot.leaf().serial
    assert serial != issued.stand_in_serial
    for name in certs.DOMAINS:
        # verification against pebble's root and the name: the chain is pebble's
        cert, status = handshake(acme_nginx, name, roots)
        assert cert.serial_number == serial, name
        assert status == "HTTP/1.1 200 OK", name
    # the stand-in was replaced by a reload: the master process is the first one
    assert acme_nginx.master_pid == issued.master_pid_before == acme_nginx.service.proc.pid


def test_renew_when_not_due_and_dry_run_change_nothing(issued: Issued, acme_nginx: AcmeNginx):
    certbot = issued.certbot
    before = certbot.leaf()
    now = dt.datetime.now(dt.UTC)
    assert not before.renewal_due(now)  # 90-day certificate, fresh: 89 days left
    workers = acme_nginx.workers()

    plain = certbot.run(certs.renew(dirs=certbot.dirs, server=certbot.pebble.directory_url))
    assert "not due for renewal" in plain.check().output
    dry = certbot.run(
        certs.renew(dry_run=True, dirs=certbot.dirs, server=certbot.pebble.directory_url)
    )
    # a dry run is a real order at pebble (validated through nginx), nothing kept
    assert "Congratulations, all simulated renewals succeeded" in dry.check().output

    assert certbot.leaf() == before
    assert served_serial(acme_nginx) == before.serial
    # no deploy hook ran: no reload, the same workers
    assert acme_nginx.workers() == workers


def test_forced_renewal_reloads_nginx_without_a_failed_request(
    issued: Issued, acme_nginx: AcmeNginx, pebble: Pebble
):
    certbot = issued.certbot
    old = certbot.leaf()
    master = acme_nginx.master_pid
    workers = acme_nginx.workers()
    # no valid authorization for pebble to reuse (PEBBLE_AUTHZREUSE=0 still reuses one name
    # in a hundred): the renewal's order must be validated again, name by name
    deactivated = AcmeAccount.of(certbot).deactivate_valid_authorizations()
    assert set(deactivated) >= set(certs.DOMAINS)
    challenges_before = len(acme_nginx.acme_requests())
    roots = pebble.roots()

    with RequestLoop(acme_nginx, roots) as loop:
        wait_until(lambda: loop.count(old.serial) >= 20, timeout=60, what="requests on the old")
        # the guide's full renewal; the deploy hook stored at issuance reloads nginx
        run = certbot.run(
            certs.renew(force=True, dirs=certbot.dirs, server=pebble.directory_url)
        ).check()
        new = certbot.leaf()
        wait_until(
            lambda: loop.count(new.serial) >= 20,
            timeout=60,
            what=f"requests served with the renewed certificate {new.serial_hex}",
        )
    print(
        f"certbot renew: peak RSS {run.max_rss_kb / 1024:.1f} MiB; "
        f"{loop.count()} requests during the renewal"
    )

    assert new.serial != old.serial
    assert new.not_after > old.not_after
    assert os.readlink(certbot.live / "cert.pem") == "../../archive/eduaiia.com/cert2.pem"
    # pebble validated every name again through nginx (none had an authorization to reuse)
    renewed = acme_nginx.acme_requests()[challenges_before:]
    assert {e["host"] for e in renewed if e["status"] == 200} == set(certs.DOMAINS)

    failures = [r for rs in loop.results for r in rs if r[0] is None or r[1] != "HTTP/1.1 200 OK"]
    assert failures == []
    mixed = 0
    for client in loop.results:
        serials = [s for s, _ in client]
        assert set(serials) == {old.serial, new.serial}
        # old first, new at the end. In between, for a moment, both: a reload starts the
        # new workers before it retires the old ones, and all accept on the same sockets
        assert serials[0] == old.serial and serials[-1] == new.serial
        first_new = serials.index(new.serial)
        last_old = len(serials) - 1 - serials[::-1].index(old.serial)
        assert set(serials[last_old + 1 :]) == {new.serial}
        mixed = max(mixed, last_old - first_new + 1)
    print(f"switch window: {mixed} requests with old and new certificates interleaved")
    assert loop.count(old.serial) >= 20 and loop.count(new.serial) >= 20

    # reloaded, not restarted: the same master, new workers
    assert acme_nginx.master_pid == master == acme_nginx.service.proc.pid
    assert acme_nginx.workers().isdisjoint(workers)


@pytest.mark.parametrize(
    ("validity", "due"),
    [
        pytest.param(dt.timedelta(days=30, hours=-1), True, id="29d23h-left-renews"),
        pytest.param(dt.timedelta(days=30, hours=1), False, id="30d1h-left-waits"),
    ],
)
def test_certbot_renews_exactly_when_opskit_says_due(
    validity, due, acme_root: Path, acme_nginx: AcmeNginx, acme_dns: ChallengeDNS, request
):
    """The 30-day rule: plain `certbot renew` on both sides of it, against should_renew."""
    root = acme_root / request.node.callspec.id
    server = Pebble(
        root / "pebble",
        http_port=acme_nginx.http_port,
        dns=acme_dns,
        validity_s=int(validity.total_seconds()),
    ).start()
    try:
        certbot = Certbot(root / "certbot", server)
        marker = root / "deploy-hook-ran"
        issue = certbot.run(
            certs.certonly(
                ["eduaiia.com"],
                email=None,
                webroot=str(acme_nginx.site_root("acme")),
                server=server.directory_url,
                dirs=certbot.dirs,
                deploy_hook=shlex.join(["touch", str(marker)]),
            )
        )
        issue.check()
        assert marker.exists()  # the deploy hook runs at issuance too
        marker.unlink()
        before = certbot.leaf()
        assert before.renewal_due(dt.datetime.now(dt.UTC)) is due

        run = certbot.run(certs.renew(dirs=certbot.dirs, server=server.directory_url)).check()

        after = certbot.leaf()
        assert (after.serial != before.serial) is due
        assert marker.exists() is due
        assert ("not due for renewal" in run.output) is not due
    finally:
        server.stop()
