"""opskit.tls: the local CA and its leaf certificates, checked with the ssl module itself."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from opskit import tls

NAMES = ["eduaiia.com", "www.eduaiia.com", "staging.eduaiia.com", "127.0.0.1"]


@pytest.fixture(scope="module")
def ca() -> tls.KeyPair:
    return tls.create_ca()


def handshake(tmp_path, ca: tls.KeyPair, leaf: tls.KeyPair, server_hostname: str) -> str:
    """Complete a real TLS handshake over a socketpair; return the negotiated protocol."""
    leaf.write(tmp_path / "cert.pem", tmp_path / "key.pem")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.create_default_context(cadata=ca.cert_pem().decode())
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            c.sendall(b"x")
            return c.version() or ""
    finally:
        t.join(5)


def test_ca_is_a_ca_that_signs_only_leaves(ca):
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True and bc.path_length == 0
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    assert ca.cert.issuer == ca.cert.subject


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_leaf_verifies_against_the_ca_for_every_name(tmp_path, ca, key_type):
    leaf = tls.issue_leaf(ca, NAMES, key_type=key_type)
    expected = ec.EllipticCurvePrivateKey if key_type == "ec" else rsa.RSAPrivateKey
    assert isinstance(leaf.key, expected)
    assert leaf.hostnames == NAMES
    for name in ("eduaiia.com", "staging.eduaiia.com"):
        assert handshake(tmp_path, ca, leaf, name).startswith("TLSv1.")


def test_leaf_is_refused_for_a_name_it_does_not_carry(tmp_path, ca):
    leaf = tls.issue_leaf(ca, ["eduaiia.com"])
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake(tmp_path, ca, leaf, "devstatus.eduaiia.com")


def test_leaf_from_another_ca_is_refused(tmp_path, ca):
    other = tls.create_ca("someone else")
    leaf = tls.issue_leaf(other, ["eduaiia.com"])
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(tmp_path, ca, leaf, "eduaiia.com")


def test_leaf_is_a_server_certificate_within_browser_lifetime(ca):
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    leaf = tls.issue_leaf(ca, ["eduaiia.com"], now=now)
    eku = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert not leaf.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = leaf.cert.not_valid_after_utc - leaf.cert.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=398)
    assert leaf.cert.not_valid_before_utc < now


@pytest.mark.parametrize(
    "names, message",
    [
        pytest.param([], "at least one name", id="no-names"),
        pytest.param(["bad name"], "not a hostname", id="space"),
        pytest.param([""], "not a hostname", id="empty"),
        pytest.param(["a/b"], "not a hostname", id="slash"),
    ],
)
def test_bad_hostnames_are_rejected(ca, names, message):
    with pytest.raises(tls.TLSError, match=message):
        tls.issue_leaf(ca, names)


def test_unknown_key_type_names_the_choices():
    with pytest.raises(tls.TLSError, match="ec, rsa"):
        tls.new_key("dsa")


def test_written_key_is_private_and_round_trips(tmp_path, ca):
    leaf = tls.issue_leaf(ca, ["eduaiia.com"])
    leaf.write(tmp_path / "c.pem", tmp_path / "k.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c.pem").stat().st_mode) == 0o644
    again = tls.KeyPair.load(tmp_path / "c.pem", tmp_path / "k.pem")
    assert again.cert == leaf.cert
    assert again.key_pem() == leaf.key_pem()


def test_ensure_local_certificates_reuses_ca_and_reissues_only_when_needed(tmp_path):
    first = tls.ensure_local_certificates(tmp_path, ["eduaiia.com"])
    ca_pem, leaf_pem = first.ca_cert.read_bytes(), first.cert.read_bytes()
    assert stat.S_IMODE(first.ca_key.stat().st_mode) == 0o600

    same = tls.ensure_local_certificates(tmp_path, ["eduaiia.com"])
    assert same.cert.read_bytes() == leaf_pem  # still valid: kept

    wider = tls.ensure_local_certificates(tmp_path, ["eduaiia.com", "staging.eduaiia.com"])
    assert wider.ca_cert.read_bytes() == ca_pem  # the CA a browser trusts stays
    assert wider.cert.read_bytes() != leaf_pem
    assert set(tls.KeyPair.load(wider.cert, wider.key).hostnames) == {
        "eduaiia.com",
        "staging.eduaiia.com",
    }


def test_ensure_local_certificates_replaces_a_leaf_whose_key_does_not_match(tmp_path):
    paths = tls.ensure_local_certificates(tmp_path, ["eduaiia.com"])
    stranger = tls.issue_leaf(tls.KeyPair.load(paths.ca_cert, paths.ca_key), ["eduaiia.com"])
    tls.write_private(paths.key, stranger.key_pem())  # cert and key no longer belong together
    tls.ensure_local_certificates(tmp_path, ["eduaiia.com"])
    pair = tls.KeyPair.load(paths.cert, paths.key)
    assert tls._same_public_key(pair)
