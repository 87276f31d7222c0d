"""opskit.certs: certbot argv by exact output, PEM and `certbot certificates` parsing, and
the 30-day renewal rule at its boundary."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opskit import certs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "acme"
UTC = dt.UTC
FOUR = ["-d", "eduaiia.com", "-d", "www.eduaiia.com", "-d", "staging.eduaiia.com",
        "-d", "devstatus.eduaiia.com"]  # fmt: skip
TEST_DIRS = certs.CertbotDirs("/t/le", "/t/work", "/t/logs")
PEBBLE = "https://127.0.0.1:14000/dir"


def make_pem(not_after: dt.datetime, names=("eduaiia.com",), serial: int = 0xABC) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test issuer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_after - dt.timedelta(days=90))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.PEM)


# ----------------------------------------------------------------------------- builders


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"email": "ops@eduaiia.com"},
            ["certbot", "certonly", "--non-interactive", "--agree-tos",
             "--email", "ops@eduaiia.com", "--webroot", "--webroot-path", "/var/www/acme",
             "--cert-name", "eduaiia.com", *FOUR],
            id="production-first-issuance",
        ),
        pytest.param(
            {"email": None, "domains": ["eduaiia.com", "www.eduaiia.com", "eduaiia.com"],
             "server": PEBBLE, "dirs": TEST_DIRS, "webroot": "/t/acme",
             "deploy_hook": "nginx -s reload"},
            ["certbot", "certonly", "--non-interactive",
             "--config-dir", "/t/le", "--work-dir", "/t/work", "--logs-dir", "/t/logs",
             "--server", PEBBLE, "--agree-tos", "--register-unsafely-without-email",
             "--webroot", "--webroot-path", "/t/acme", "--cert-name", "eduaiia.com",
             "-d", "eduaiia.com", "-d", "www.eduaiia.com", "--deploy-hook", "nginx -s reload"],
            id="test-server-dirs-hook-dedup",
        ),
        pytest.param(
            {"email": None, "dry_run": True},
            ["certbot", "certonly", "--non-interactive", "--agree-tos",
             "--register-unsafely-without-email", "--webroot", "--webroot-path", "/var/www/acme",
             "--cert-name", "eduaiia.com", *FOUR, "--dry-run"],
            id="dry-run",
        ),
    ],
)  # fmt: skip
def test_certonly_argv(kwargs, expected):
    assert certs.certonly(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {},
            ["certbot", "renew", "--non-interactive", "--no-random-sleep-on-renew"],
            id="operator-due-only",
        ),
        pytest.param(
            {"force": True, "cert_name": "eduaiia.com"},
            ["certbot", "renew", "--non-interactive", "--cert-name", "eduaiia.com",
             "--force-renewal", "--no-random-sleep-on-renew"],
            id="guide-full-renewal",
        ),
        pytest.param(
            {"dry_run": True},
            ["certbot", "renew", "--non-interactive", "--dry-run", "--no-random-sleep-on-renew"],
            id="guide-dry-run",
        ),
        pytest.param(
            {"random_sleep": True, "quiet": True},
            ["certbot", "renew", "--non-interactive", "--quiet"],
            id="cron-spreads-load",
        ),
        pytest.param(
            {"force": True, "server": PEBBLE, "dirs": TEST_DIRS,
             "deploy_hook": "nginx -c /t/nginx.conf -s reload"},
            ["certbot", "renew", "--non-interactive",
             "--config-dir", "/t/le", "--work-dir", "/t/work", "--logs-dir", "/t/logs",
             "--server", PEBBLE, "--force-renewal", "--no-random-sleep-on-renew",
             "--deploy-hook", "nginx -c /t/nginx.conf -s reload"],
            id="test-server-with-hook",
        ),
    ],
)  # fmt: skip
def test_renew_argv(kwargs, expected):
    assert certs.renew(**kwargs) == expected


def test_certificates_argv():
    assert certs.certificates() == ["certbot", "certificates", "--non-interactive"]
    assert certs.certificates(cert_name="eduaiia.com-0001", dirs=TEST_DIRS) == [
        "certbot", "certificates", "--non-interactive",
        "--config-dir", "/t/le", "--work-dir", "/t/work", "--logs-dir", "/t/logs",
        "--cert-name", "eduaiia.com-0001",
    ]  # fmt: skip


def test_container_commands():
    assert certs.in_container(certs.renew(force=True)) == [
        "docker", "exec", "aiia_nginx",
        "certbot", "renew", "--non-interactive", "--force-renewal", "--no-random-sleep-on-renew",
    ]  # fmt: skip
    assert certs.read_cert() == [
        "docker", "exec", "aiia_nginx", "cat", "--", "/etc/letsencrypt/live/eduaiia.com/cert.pem"
    ]  # fmt: skip
    assert certs.served_cert() == [
        "docker", "exec", "aiia_nginx",
        "openssl", "s_client", "-connect", "127.0.0.1:443", "-servername", "eduaiia.com",
    ]  # fmt: skip
    assert certs.live_dir("eduaiia.com", "/t/le/") == "/t/le/live/eduaiia.com"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda: certs.renew(force=True, dry_run=True), "dry run always",
                     id="force-and-dry-run"),
        pytest.param(lambda: certs.certonly(["-x.eduaiia.com"], email=None), "not a lower-case",
                     id="option-like-domain"),
        pytest.param(lambda: certs.certonly(["*.eduaiia.com"], email=None), "no wildcards",
                     id="wildcard"),
        pytest.param(lambda: certs.certonly(["Eduaiia.com"], email=None), "lower-case",
                     id="upper-case"),
        pytest.param(lambda: certs.certonly([], email=None), "at least one", id="no-domain"),
        pytest.param(lambda: certs.certonly("eduaiia.com", email=None), "at least one",
                     id="string-not-list"),
        pytest.param(lambda: certs.certonly(email="--agree-tos"), "not an address",
                     id="bad-email"),
        pytest.param(lambda: certs.renew(server="http://127.0.0.1:14000/dir"), "https://",
                     id="plain-http-server"),
        pytest.param(lambda: certs.renew(cert_name="../../etc"), "lineage name",
                     id="path-as-cert-name"),
        pytest.param(lambda: certs.served_cert("-connect"), "lower-case", id="bad-sni"),
    ],
)  # fmt: skip
def test_builders_refuse(call, message):
    with pytest.raises(certs.CertError, match=message):
        call()


# ----------------------------------------------------------------------------- days left


def test_parse_pebble_fullchain_reads_the_leaf():
    """A fullchain.pem certbot saved from pebble: leaf first, then the intermediate."""
    text = (FIXTURES / "pebble-fullchain.pem").read_text()
    assert len(certs.pem_blocks(text)) == 2
    info = certs.parse_cert(text)
    assert info.serial_hex == "c6ab8e687990d95"
    assert info.names == ("eduaiia.com", "www.eduaiia.com")
    assert info.issuer.startswith("CN=Pebble Intermediate CA")
    assert info.not_after == dt.datetime(2031, 11, 28, 19, 32, 33, tzinfo=UTC)
    assert info.days_left(dt.datetime(2031, 10, 29, 19, 32, 33, tzinfo=UTC)) == 30


@pytest.mark.parametrize(
    ("left", "days", "due"),
    [
        pytest.param(dt.timedelta(days=89, hours=23), 89, False, id="fresh-89d"),
        pytest.param(dt.timedelta(days=30, seconds=1), 30, False, id="30d-and-1s"),
        pytest.param(dt.timedelta(days=30), 30, False, id="exactly-30d-not-yet"),
        pytest.param(dt.timedelta(days=30, seconds=-1), 29, True, id="30d-less-1s-due"),
        pytest.param(dt.timedelta(hours=5), 0, True, id="hours-left"),
        pytest.param(dt.timedelta(seconds=-1), -1, True, id="expired"),
    ],
)
def test_days_left_and_renewal_at_30_days(left, days, due):
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    info = certs.parse_cert(make_pem(now + left))
    assert info.days_left(now) == days
    assert info.renewal_due(now) is due
    assert certs.should_renew(info.not_after, now) is due


def test_renewal_rule_with_another_window_and_timezone():
    not_after = dt.datetime(2026, 6, 1, tzinfo=UTC)
    paris = dt.timezone(dt.timedelta(hours=2))
    # 2026-05-22 02:00+02:00 is 2026-05-22 00:00 UTC: exactly 10 days left
    assert not certs.should_renew(not_after, dt.datetime(2026, 5, 22, 2, 0, tzinfo=paris), 10)
    assert certs.should_renew(not_after, dt.datetime(2026, 5, 22, 2, 1, tzinfo=paris), 10)


def test_naive_time_and_garbage_are_refused():
    with pytest.raises(certs.CertError, match="aware datetime"):
        certs.should_renew(dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime(2026, 5, 1))
    with pytest.raises(certs.CertError, match="no PEM certificate"):
        certs.parse_cert("Could not open /etc/letsencrypt/live/eduaiia.com/cert.pem\n")
    with pytest.raises(certs.CertError, match="not a readable PEM"):
        certs.parse_cert("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(certs.CertError, match="0 or more"):
        certs.should_renew(dt.datetime(2026, 6, 1, tzinfo=UTC), dt.datetime.now(UTC), -1)


def test_served_certificate_from_openssl_output():
    pem = make_pem(dt.datetime(2027, 1, 1, tzinfo=UTC), serial=0x1F).decode()
    output = (
        "CONNECTED(00000003)\n---\nCertificate chain\n 0 s:\n   i:CN = test issuer\n---\n"
        f"Server certificate\n{pem}subject=\n\nissuer=CN = test issuer\n---\nDONE\n"
    )
    assert certs.parse_cert(output).serial_hex == "1f"


@pytest.mark.parametrize(
    ("left", "text"),
    [
        pytest.param(dt.timedelta(days=75, hours=1), "75 days left; renewal due from 2026-04-15",
                     id="ok"),
        pytest.param(dt.timedelta(days=12), "12 days left; renewal due now (fewer than 30 days",
                     id="due"),
        pytest.param(dt.timedelta(hours=-2), "-1 days left; EXPIRED", id="expired"),
    ],
)  # fmt: skip
def test_describe(left, text):
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    info = certs.parse_cert(make_pem(now + left, serial=0xBEEF))
    line = certs.describe(info, now)
    assert line.startswith("serial beef, expires ")
    assert text in line


# ----------------------------------------------------------------------------- lineages


def test_parse_certbot_certificates_saved_output():
    """Real output of certbot 2.1 `certificates` with three lineages from pebble."""
    lineages = certs.parse_certificates((FIXTURES / "certbot-certificates.txt").read_text())
    assert [lin.name for lin in lineages] == [
        "devstatus.eduaiia.com", "eduaiia.com", "staging.eduaiia.com"
    ]  # fmt: skip
    main = lineages[1]
    assert main.serial_hex == "c6ab8e687990d95"
    assert main.domains == ("eduaiia.com", "www.eduaiia.com")
    assert main.expiry == dt.datetime(2031, 11, 28, 19, 32, 33, tzinfo=UTC)
    assert main.status == "VALID: 1825 days"
    assert main.fullchain == "/etc/letsencrypt/live/eduaiia.com/fullchain.pem"
    assert main.privkey == "/etc/letsencrypt/live/eduaiia.com/privkey.pem"
    assert lineages[0].status == "INVALID: EXPIRED"
    assert lineages[2].status == "VALID: 19 days"


def test_which_certificates_to_renew():
    lineages = certs.parse_certificates((FIXTURES / "certbot-certificates.txt").read_text())
    # when certbot listed them: staging has 19 days left, devstatus expired, the main 1825
    now = dt.datetime(2026, 11, 28, 19, 34, tzinfo=UTC)
    assert [lin.name for lin in certs.due_for_renewal(lineages, now)] == [
        "devstatus.eduaiia.com", "staging.eduaiia.com"
    ]  # fmt: skip
    assert lineages[2].days_left(now) == 19
    # 30 days before the main certificate's expiry it joins them, last
    later = dt.datetime(2031, 10, 29, 19, 32, 34, tzinfo=UTC)
    assert [lin.name for lin in certs.due_for_renewal(lineages, later)][-1] == "eduaiia.com"
    assert certs.due_for_renewal(lineages[1:2], later - dt.timedelta(seconds=2)) == []


def test_no_certificates_and_unreadable_listing():
    none = (FIXTURES / "certbot-certificates-none.txt").read_text()
    assert "No certificates found." in none
    assert certs.parse_certificates(none) == []
    with pytest.raises(certs.CertError, match="Expiry Date"):
        certs.parse_certificates(
            "Found the following certs:\n  Certificate Name: a.com\n    Serial Number: 1\n"
            "    Domains: a.com\n    Expiry Date: soon\n    Certificate Path: /x\n"
            "    Private Key Path: /y\n"
        )
    with pytest.raises(certs.CertError, match="no expiry, fullchain"):
        certs.parse_certificates("  Certificate Name: a.com\n    Serial Number: 1\n"
                                 "    Domains: a.com\n    Private Key Path: /y\n")  # fmt: skip
    with pytest.raises(certs.CertError, match="none could be read"):
        certs.parse_certificates("Found the following certs:\n  (format changed)\n")
