"""A local certificate authority and leaf certificates, for development and tests.

Let's Encrypt issues the real certificates on the server (certbot in the nginx image).
Everywhere else (a laptop's `inv setup`, the services tier) nginx needs a certificate
for eduaiia.com & co. that a client can verify: this module makes a small CA and signs
leaf certificates for given hostnames with it, using only the `cryptography` package.

Keys are ECDSA P-256 by default, like certbot's default key type, and a leaf is valid
for 397 days at most, the lifetime browsers accept for a server certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_VALID_DAYS = 3650
# browsers refuse server certificates valid for longer than 398 days (CA/B Forum, 2020)
LEAF_VALID_DAYS = 397
# leave room for a clock that runs a little behind the one that signed
BACKDATE = dt.timedelta(minutes=5)
KEY_TYPES = ("ec", "rsa")


class TLSError(ValueError):
    """A certificate request that cannot be honoured (no hostnames, a bad name, ...)."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def hostnames(self) -> list[str]:
        """DNS names and IP addresses of the subjectAltName extension, as strings."""
        try:
            san = self.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        names: list[str] = list(san.value.get_values_for_type(x509.DNSName))
        names += [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
        return names

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write PEM files; the key is created with mode 0600 and never readable by others."""
        write_private(key_path, self.key_pem())
        write_public(cert_path, self.cert_pem())

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> KeyPair:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise TLSError(f"{key_path}: unsupported key type {type(key).__name__}")
        return cls(cert, key)


def new_key(key_type: str = "ec") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        # 2048 bits: Mozilla's intermediate profile minimum and Let's Encrypt's default
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise TLSError(f"key_type: should be one of {', '.join(KEY_TYPES)}, not {key_type!r}")


def create_ca(
    common_name: str = "AIIA local development CA",
    *,
    valid_days: int = CA_VALID_DAYS,
    key_type: str = "ec",
    now: dt.datetime | None = None,
) -> KeyPair:
    """A self-signed root that may sign server certificates and nothing below them."""
    key = new_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = (now or dt.datetime.now(dt.UTC)) - BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def _san_entries(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    if not hostnames:
        raise TLSError("hostnames: at least one name is needed for a server certificate")
    entries: list[x509.GeneralName] = []
    for name in hostnames:
        if not name or any(c.isspace() for c in name) or "/" in name:
            raise TLSError(f"hostnames: {name!r} is not a hostname or an IP address")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name.lower()))
    return entries


def issue_leaf(
    ca: KeyPair,
    hostnames: Sequence[str],
    *,
    valid_days: int = LEAF_VALID_DAYS,
    key_type: str = "ec",
    now: dt.datetime | None = None,
) -> KeyPair:
    """A server certificate for `hostnames` (DNS names or IP addresses) signed by `ca`."""
    entries = _san_entries(hostnames)
    key = new_key(key_type)
    start = (now or dt.datetime.now(dt.UTC)) - BACKDATE
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange needs it; for ECDSA it is simply unused
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(entries), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert, key)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the first byte on (no window with 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_public(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class LocalCertificates:
    """Where ensure_local_certificates put its files."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def ensure_local_certificates(
    directory: Path, hostnames: Sequence[str], *, key_type: str = "ec"
) -> LocalCertificates:
    """A CA and a leaf for `hostnames` in `directory`, reusing what is already there.

    The CA is kept once made (a browser or OS that was told to trust it keeps working);
    the leaf is issued again when missing, not signed by that CA, expiring within 30
    days, or not covering every name asked for.
    """
    directory = Path(directory)
    paths = LocalCertificates(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        cert=directory / "cert.pem",
        key=directory / "key.pem",
    )
    _san_entries(hostnames)  # reject bad names before touching any file
    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca = KeyPair.load(paths.ca_cert, paths.ca_key)
    else:
        ca = create_ca(key_type=key_type)
        ca.write(paths.ca_cert, paths.ca_key)
    if not _leaf_is_current(paths, ca, hostnames):
        issue_leaf(ca, hostnames, key_type=key_type).write(paths.cert, paths.key)
    return paths


def _leaf_is_current(paths: LocalCertificates, ca: KeyPair, hostnames: Sequence[str]) -> bool:
    if not (paths.cert.exists() and paths.key.exists()):
        return False
    try:
        leaf = KeyPair.load(paths.cert, paths.key)
    except (ValueError, TLSError):
        return False
    if leaf.cert.issuer != ca.cert.subject or not _same_public_key(leaf):
        return False
    try:
        leaf.cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    remaining = leaf.cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    wanted = {str(e.value).lower() for e in _san_entries(hostnames)}
    return remaining > dt.timedelta(days=30) and wanted <= {n.lower() for n in leaf.hostnames}


def _same_public_key(pair: KeyPair) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return pair.cert.public_key().public_bytes(der, spki) == pair.key.public_key().public_bytes(
        der, spki
    )
