"""`fab renew-certs` and `fab cert-status` over Fabric's mocked SSH session.

fabric.testing's MockRemote replaces the SSH client, so nothing here can reach a server;
every command the tasks send is checked byte for byte, in order.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from fabric import Connection
from invoke import Exit

from opskit.remote import certs as remote_certs
from opskit.shell import join
from tests.harness.core import venv_tool
from tests.harness.fabtest import run_task

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("eduaiia.com", "www.eduaiia.com", "staging.eduaiia.com", "devstatus.eduaiia.com")

READ = "docker exec aiia_nginx cat -- /etc/letsencrypt/live/eduaiia.com/cert.pem"
SERVED = "docker exec aiia_nginx openssl s_client -connect 127.0.0.1:443 -servername eduaiia.com"
RENEW = "docker exec aiia_nginx certbot renew --non-interactive --cert-name eduaiia.com"
NGINX_T = "docker exec aiia_nginx nginx -t -q"
RELOAD = (
    "docker exec aiia_nginx sh -c 'command -v aiia-reload >/dev/null 2>&1 && exec aiia-reload;"
    " exec nginx -s reload'"
)

NOT_DUE = """Saving debug log to /var/log/letsencrypt/letsencrypt.log

- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Processing /etc/letsencrypt/renewal/eduaiia.com.conf
- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
Certificate not yet due for renewal

- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
The following certificates are not due for renewal yet:
  /etc/letsencrypt/live/eduaiia.com/fullchain.pem expires on 2027-01-30 (skipped)
No renewals were attempted.
- - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - - -
"""
RENEWED = """Renewing an existing certificate for eduaiia.com and 3 more domains
Congratulations, all renewals succeeded:
  /etc/letsencrypt/live/eduaiia.com/fullchain.pem (success)
"""


def pem(days_left: float, serial: int) -> str:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "(STAGING) Test E1")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eduaiia.com")]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now + dt.timedelta(days=days_left))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode()


def s_client(cert_pem: str) -> str:
    """The shape of `openssl s_client` output: the leaf after "Server certificate"."""
    return (
        "CONNECTED(00000003)\n---\nCertificate chain\n 0 s:CN = eduaiia.com\n---\n"
        f"Server certificate\n{cert_pem}subject=CN = eduaiia.com\n---\nDONE\n"
    )


OLD = pem(60.5, 0xA1)
NEW = pem(89.9, 0xB2)
DUE_ONLY = RENEW + " --no-random-sleep-on-renew"
FORCED = RENEW + " --force-renewal --no-random-sleep-on-renew"
RELOADED = [(NGINX_T, "", 0), (RELOAD, "", 0)]  # nginx -t first, then the reload


def renewal(before: str, certbot: str, after: str, *, force: bool = False) -> list:
    """What renew-certs sends first: read the certificate, certbot renew, read it again."""
    return [(READ, before, 0), (FORCED if force else DUE_ONLY, certbot, 0), (READ, after, 0)]


def serving(*certs: str) -> list:
    """One handshake a certificate: what nginx serves at each look."""
    return [(SERVED, s_client(cert), 0) for cert in certs]


def test_fab_lists_the_certificate_tasks_with_their_options():
    fab = venv_tool("fab")
    listed = subprocess.run([fab, "--list"], cwd=ROOT, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.startswith("  ")]
    assert {"renew-certs", "cert-status"} <= set(names)
    help_ = subprocess.run([fab, "--help", "renew-certs"], cwd=ROOT, capture_output=True, text=True)
    for option in ("--force", "--dry-run", "--name"):
        assert option in help_.stdout


# ----------------------------------------------------------------------------- cert-status


def test_cert_status_healthy(capsys):
    run_task(remote_certs.cert_status, [(READ, OLD, 0), (SERVED, s_client(OLD), 0)])
    out = capsys.readouterr().out
    assert "eduaiia.com: /etc/letsencrypt/live/eduaiia.com/cert.pem" in out
    assert "names:  " + " ".join(NAMES) in out
    assert "serial a1, expires " in out and "60 days left; renewal due from " in out
    assert "nginx serves this certificate" in out


@pytest.mark.parametrize(
    ("file", "served", "expect"),
    [
        pytest.param(pem(12.5, 0xA1), pem(12.5, 0xA1), "12 days left; renewal due now", id="due"),
        pytest.param(pem(-0.5, 0xA1), pem(-0.5, 0xA1), "EXPIRED", id="expired"),
        pytest.param(NEW, OLD, "nginx serves serial a1", id="renewed-not-reloaded"),
    ],
)
def test_cert_status_exits_1_when_something_needs_doing(file, served, expect, capsys):
    with pytest.raises(Exit) as exc:
        run_task(remote_certs.cert_status, [(READ, file, 0), (SERVED, s_client(served), 0)])
    assert exc.value.code == 1
    out = capsys.readouterr().out
    assert expect in out
    assert "next: fab -H ubuntu@server.example renew-certs" in out


def test_cert_status_without_a_certificate_says_how_to_issue():
    with pytest.raises(Exit) as exc:
        run_task(
            remote_certs.cert_status,
            [(READ, "cat: /etc/letsencrypt/live/eduaiia.com/cert.pem: No such file", 1)],
        )
    assert exc.value.code == 1
    assert "no certificate at /etc/letsencrypt/live/eduaiia.com/cert.pem" in str(exc.value)
    assert "certbot certonly --webroot" in str(exc.value)


def test_cert_status_when_the_container_is_down_says_so():
    down = "Error response from daemon: Container 6b63 is not running"
    with pytest.raises(Exit) as exc:
        run_task(remote_certs.cert_status, [(READ, down, 1)])
    assert exc.value.code == 1
    assert "could not read /etc/letsencrypt/live/eduaiia.com/cert.pem in aiia_nginx (exit 1)" in (
        str(exc.value)
    )
    assert "is not running" in str(exc.value)
    assert "issue one first" not in str(exc.value)


def test_cert_status_when_nginx_does_not_answer(capsys):
    with pytest.raises(Exit):
        run_task(
            remote_certs.cert_status,
            [(READ, OLD, 0), (SERVED, "connect:errno=111\n", 1)],
        )
    assert "no TLS handshake for eduaiia.com on 127.0.0.1:443" in capsys.readouterr().out


# ----------------------------------------------------------------------------- renew-certs


def test_renew_not_due_changes_nothing_and_does_not_reload(capsys):
    run_task(
        remote_certs.renew_certs,
        [*renewal(OLD, NOT_DUE, OLD), *serving(OLD)],
    )
    out = capsys.readouterr().out
    assert "before: serial a1" in out
    assert "  certbot: Certificate not yet due for renewal" in out
    assert "Saving debug log" not in out and "- - -" not in out
    assert "after:  not renewed (not due); nginx serves it" in out
    assert "to renew anyway: fab -H ubuntu@server.example renew-certs --force" in out


def test_forced_renewal_put_in_service_by_certbots_hook_is_not_reloaded_again(capsys):
    run_task(
        remote_certs.renew_certs,
        # certbot's deploy hook (aiia-reload) reloaded: nginx serves the new one, no reload
        [*renewal(OLD, RENEWED, NEW, force=True), *serving(NEW)],
        force=True,
    )
    out = capsys.readouterr().out
    assert "before: serial a1" in out and "60 days left" in out
    assert "after:  serial b2" in out and "89 days left" in out
    assert "nginx reloaded by certbot's hook, serving it" in out


def test_forced_renewal_whose_hook_did_not_reload_reloads_nginx_and_checks_it(capsys):
    run_task(
        remote_certs.renew_certs,
        [*renewal(OLD, RENEWED, NEW, force=True), *serving(OLD), *RELOADED, *serving(NEW)],
        force=True,
    )
    out = capsys.readouterr().out
    assert "after:  serial b2" in out and "89 days left" in out
    assert "nginx reloaded, serving it" in out


def test_not_due_but_nginx_serving_an_old_one_is_reloaded(capsys):
    run_task(
        remote_certs.renew_certs,
        [*renewal(NEW, NOT_DUE, NEW), *serving(OLD), *RELOADED, *serving(OLD, NEW)],
    )
    assert "not renewed (not due); nginx reloaded, now serving it" in capsys.readouterr().out


def test_reload_that_never_takes_effect_fails(monkeypatch):
    monkeypatch.setattr(remote_certs, "SERVED_ATTEMPTS", 2)
    monkeypatch.setattr(remote_certs, "SERVED_INTERVAL_S", 0)
    with pytest.raises(Exit) as exc:
        run_task(
            remote_certs.renew_certs,
            [*renewal(OLD, RENEWED, NEW, force=True), *serving(OLD), *RELOADED, *serving(OLD, OLD)],
            force=True,
        )
    assert exc.value.code == 1
    assert "renewed to serial b2, but after a reload nginx still serves serial a1" in str(exc.value)


def test_broken_nginx_config_is_not_reloaded():
    with pytest.raises(Exit) as exc:
        run_task(
            remote_certs.renew_certs,
            [
                *renewal(OLD, RENEWED, NEW, force=True),
                *serving(OLD),
                (NGINX_T, 'nginx: [emerg] unknown directive "sever"', 1),
            ],
            force=True,
        )
    assert "nginx -t refused the configuration, nginx was not reloaded" in str(exc.value)


def test_failed_certbot_says_what_is_in_service_and_where_the_log_is(capsys):
    failure = (
        "Failed to renew certificate eduaiia.com with error: Some challenges have failed.\n"
        "All renewals failed. The following certificates could not be renewed:\n"
    )
    with pytest.raises(Exit) as exc:
        run_task(
            remote_certs.renew_certs,
            [(READ, OLD, 0), (FORCED, failure, 1)],
            force=True,
        )
    message = str(exc.value)
    assert exc.value.code == 1
    assert "certbot renew failed (exit 1)" in message
    assert "The certificate on the server is unchanged: serial a1" in message
    assert "tail -n 50 /var/log/letsencrypt/letsencrypt.log" in message
    assert "certbot: All renewals failed." in capsys.readouterr().out


def test_dry_run_keeps_nothing_and_reloads_nothing(capsys):
    run_task(
        remote_certs.renew_certs,
        [(READ, OLD, 0), (RENEW + " --dry-run --no-random-sleep-on-renew", "ok\n", 0)],
        dry_run=True,
    )
    assert "dry run: Let's Encrypt's staging server issued a test certificate" in (
        capsys.readouterr().out
    )


def test_force_with_dry_run_is_refused_before_connecting():
    with pytest.raises(Exit) as exc:
        remote_certs.renew_certs(Connection("server.example"), force=True, dry_run=True)
    assert exc.value.code == 2


def test_commands_are_the_builders_joined():
    from opskit import certs

    assert join(certs.read_cert()) == READ
    assert join(certs.served_cert()) == SERVED


def test_certbot_killed_by_the_memory_limit_is_named():
    with pytest.raises(Exit) as exc:
        run_task(
            remote_certs.renew_certs,
            [(READ, OLD, 0), (DUE_ONLY, "", 137)],
        )
    assert "certbot was killed (exit 137), most likely by aiia_nginx's memory limit" in str(
        exc.value
    )
