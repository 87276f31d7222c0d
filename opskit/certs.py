"""Let's Encrypt certificates of the stack: certbot command lines and what they report.

certbot lives in the nginx image (the guide: `docker exec aiia_nginx certbot renew`) and
answers Let's Encrypt's HTTP-01 challenge through nginx's webroot (`/var/www/acme`, served
on port 80 at /.well-known/acme-challenge/). One certificate, lineage `eduaiia.com`,
covers the four names nginx serves. A renewed certificate is put in service by a graceful
`nginx -s reload` (certbot's deploy hook in the image's cli.ini), which keeps the master
and every connection in flight.

Everything here is pure: builders return argv lists, parsers read PEM text or certbot's
output. Renewal follows certbot's own rule (storage.RenewableCert.should_autorenew):
renew once fewer than 30 days are left, the guide's "rotation at 30 days before
expiration".
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509

from opskit import environments

CONTAINER = environments.NGINX
CERT_NAME = "eduaiia.com"
# nginx/defaults.env: the names of the prod, staging and devstatus sites
DOMAINS = ("eduaiia.com", "www.eduaiia.com", "staging.eduaiia.com", "devstatus.eduaiia.com")
LETSENCRYPT_DIR = "/etc/letsencrypt"
WEBROOT = "/var/www/acme"
# certbot's default renew_before_expiry, and the guide's rule
RENEW_BEFORE_DAYS = 30

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
# certbot's lineage names: the first domain, "-0001" and so on when taken; never a path
_LINEAGE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


class CertError(ValueError):
    """A certificate request that cannot be built, or output that is not what was expected."""


# ----------------------------------------------------------------------------- paths


def live_dir(cert_name: str = CERT_NAME, config_dir: str = LETSENCRYPT_DIR) -> str:
    """Where certbot keeps the current files of a lineage (symlinks into archive/)."""
    return f"{config_dir.rstrip('/')}/live/{_cert_name(cert_name)}"


def cert_path(cert_name: str = CERT_NAME, config_dir: str = LETSENCRYPT_DIR) -> str:
    """The leaf alone (`cert.pem`): what the guide's `openssl x509 -in ...` reads."""
    return f"{live_dir(cert_name, config_dir)}/cert.pem"


# ----------------------------------------------------------------------------- builders


@dataclass(frozen=True)
class CertbotDirs:
    """certbot's config, work and logs directories, when not its /etc, /var/lib, /var/log."""

    config_dir: str
    work_dir: str
    logs_dir: str

    def argv(self) -> list[str]:
        return [
            "--config-dir", self.config_dir,
            "--work-dir", self.work_dir,
            "--logs-dir", self.logs_dir,
        ]  # fmt: skip


def _cert_name(name: str) -> str:
    if not _LINEAGE.match(name or "") or ".." in name:
        raise CertError(f"cert_name: {name!r} should be a lineage name such as {CERT_NAME}")
    return name


def _domains(domains: Sequence[str]) -> list[str]:
    if isinstance(domains, str) or not domains:
        raise CertError("domains: give at least one name, e.g. eduaiia.com www.eduaiia.com")
    seen: list[str] = []
    for name in domains:
        # a name starting with '-' would be read as an option; wildcards need DNS-01
        if not _HOSTNAME.match(name or ""):
            raise CertError(f"domains: {name!r} is not a lower-case DNS name (no wildcards)")
        if name not in seen:
            seen.append(name)
    return seen


def _common(dirs: CertbotDirs | None, server: str | None) -> list[str]:
    argv = ["--non-interactive"]
    if dirs is not None:
        argv += dirs.argv()
    if server is not None:
        if not server.startswith("https://"):
            raise CertError(f"server: {server!r} should be an ACME directory URL (https://...)")
        argv += ["--server", server]
    return argv


def certonly(
    domains: Sequence[str] = DOMAINS,
    *,
    email: str | None,
    webroot: str = WEBROOT,
    cert_name: str = CERT_NAME,
    server: str | None = None,
    dirs: CertbotDirs | None = None,
    deploy_hook: str | None = None,
    dry_run: bool = False,
) -> list[str]:
    """First issuance through nginx's webroot: `certbot certonly --webroot ...`.

    `email` None registers without one (Let's Encrypt no longer mails expiry notices);
    `server` None is certbot's default, Let's Encrypt production. The deploy hook, when
    given, is stored in the lineage's renewal file and runs after every renewal too.
    """
    argv = ["certbot", "certonly", *_common(dirs, server), "--agree-tos"]
    if email is None:
        argv.append("--register-unsafely-without-email")
    elif re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email) and not email.startswith("-"):
        argv += ["--email", email]
    else:
        raise CertError(f"email: {email!r} is not an address")
    argv += ["--webroot", "--webroot-path", webroot, "--cert-name", _cert_name(cert_name)]
    for name in _domains(domains):
        argv += ["-d", name]
    if deploy_hook is not None:
        argv += ["--deploy-hook", deploy_hook]
    if dry_run:
        argv.append("--dry-run")
    return argv


def renew(
    *,
    cert_name: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    random_sleep: bool = False,
    server: str | None = None,
    dirs: CertbotDirs | None = None,
    deploy_hook: str | None = None,
    quiet: bool = False,
) -> list[str]:
    """`certbot renew`: every lineage due (fewer than 30 days left), or `cert_name` only.

    certbot sleeps up to 8 minutes before a renewal whenever stdin is not a terminal
    (so under Fabric and cron), to spread the load on Let's Encrypt: an operator waiting
    on `fab renew-certs` does not want that, the twice-daily cron run does
    (`random_sleep=True`). A dry run talks to Let's Encrypt's staging server unless
    `server` says otherwise, keeps nothing and runs no deploy hook.
    """
    if force and dry_run:
        raise CertError("force and dry_run: a dry run always renews, and keeps nothing")
    argv = ["certbot", "renew", *_common(dirs, server)]
    if cert_name is not None:
        argv += ["--cert-name", _cert_name(cert_name)]
    if force:
        argv.append("--force-renewal")
    if dry_run:
        argv.append("--dry-run")
    if not random_sleep:
        argv.append("--no-random-sleep-on-renew")
    if deploy_hook is not None:
        argv += ["--deploy-hook", deploy_hook]
    if quiet:
        argv.append("--quiet")
    return argv


def certificates(*, cert_name: str | None = None, dirs: CertbotDirs | None = None) -> list[str]:
    """`certbot certificates`: every lineage with its names, serial and expiry."""
    argv = ["certbot", "certificates", *_common(dirs, None)]
    if cert_name is not None:
        argv += ["--cert-name", _cert_name(cert_name)]
    return argv


def in_container(argv: Sequence[str], container: str = CONTAINER) -> list[str]:
    """`docker exec CONTAINER ...`: certbot, nginx and openssl live in the nginx image."""
    return ["docker", "exec", container, *argv]


def read_cert(cert_name: str = CERT_NAME, container: str = CONTAINER) -> list[str]:
    """The lineage's current leaf (`cert.pem`), printed by the nginx container."""
    return in_container(["cat", "--", cert_path(cert_name)], container)


def served_cert(
    server_name: str = CERT_NAME, port: int = 443, container: str = CONTAINER
) -> list[str]:
    """The certificate nginx presents for `server_name` (SNI), seen from inside its container.

    `docker exec` without -i gives openssl no input, so it ends after the handshake; the
    leaf is the first PEM block of its output (`first_pem`).
    """
    return in_container(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{int(port)}",
         "-servername", _domains([server_name])[0]],
        container,
    )  # fmt: skip


# ----------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class CertInfo:
    """What an operator asks of a certificate: which one, for what, until when."""

    serial: int
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def serial_hex(self) -> str:
        """As certbot and `openssl x509 -serial` print it (lower case here)."""
        return format(self.serial, "x")

    def remaining(self, now: dt.datetime) -> dt.timedelta:
        return self.not_after - _aware(now)

    def days_left(self, now: dt.datetime) -> int:
        """Whole days until expiry, rounded down (certbot's "VALID: N days"); < 0 expired."""
        return self.remaining(now).days

    def renewal_due(self, now: dt.datetime, before_days: int = RENEW_BEFORE_DAYS) -> bool:
        return should_renew(self.not_after, now, before_days)


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise CertError("now: give an aware datetime, e.g. datetime.now(timezone.utc)")
    return now


def should_renew(
    not_after: dt.datetime, now: dt.datetime, before_days: int = RENEW_BEFORE_DAYS
) -> bool:
    """certbot's rule: renew when the certificate expires within `before_days` of `now`.

    Exactly `before_days` left is not yet due (certbot compares expiry < now + interval).
    """
    if before_days < 0:
        raise CertError(f"before_days: {before_days} should be 0 or more")
    return _aware(not_after) < _aware(now) + dt.timedelta(days=before_days)


def pem_blocks(text: str | bytes) -> list[str]:
    """Every PEM certificate in `text` (a fullchain, openssl's output), in order."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    return [m.group(0) for m in _PEM.finditer(text)]


def first_pem(text: str | bytes) -> str:
    blocks = pem_blocks(text)
    if not blocks:
        raise CertError("no PEM certificate (-----BEGIN CERTIFICATE-----) in the output")
    return blocks[0]


def parse_cert(text: str | bytes) -> CertInfo:
    """The first certificate of PEM `text`: a cert.pem, or the leaf of a fullchain.pem."""
    try:
        cert = x509.load_pem_x509_certificate(first_pem(text).encode("ascii"))
    except ValueError as exc:
        raise CertError(f"not a readable PEM certificate: {exc}") from None
    return cert_info(cert)


def cert_info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return CertInfo(
        serial=cert.serial_number,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        names=names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


@dataclass(frozen=True)
class Lineage:
    """One entry of `certbot certificates`."""

    name: str
    serial_hex: str
    domains: tuple[str, ...]
    expiry: dt.datetime
    status: str  # certbot's verdict: "VALID: 89 days", "INVALID: EXPIRED", ...
    fullchain: str
    privkey: str

    def days_left(self, now: dt.datetime) -> int:
        return (self.expiry - _aware(now)).days


_FIELDS = {
    "Certificate Name": "name",
    "Serial Number": "serial_hex",
    "Domains": "domains",
    "Expiry Date": "expiry",
    "Certificate Path": "fullchain",
    "Private Key Path": "privkey",
}


def parse_certificates(output: str) -> list[Lineage]:
    """The lineages `certbot certificates` lists; [] when it found none."""
    entries: list[dict[str, str]] = []
    for line in output.splitlines():
        key, sep, value = line.strip().partition(": ")
        if not sep or key not in _FIELDS:
            continue
        if key == "Certificate Name":
            entries.append({})
        elif not entries:
            raise CertError(f"certbot certificates: {key!r} before any 'Certificate Name'")
        entries[-1][_FIELDS[key]] = value.strip()
    if not entries and "Found the following certs" in output:
        raise CertError("certbot certificates: 'Found the following certs' but none could be read")
    return [_lineage(e) for e in entries]


def _lineage(entry: dict[str, str]) -> Lineage:
    name = entry.get("name", "?")
    missing = sorted(set(_FIELDS.values()) - set(entry))
    if missing:
        raise CertError(f"certbot certificates: {name}: no {', '.join(missing)}")
    m = re.fullmatch(r"(\S+ \S+)\s+\((.+)\)", entry["expiry"])
    if not m:
        raise CertError(f"certbot certificates: {name}: Expiry Date {entry['expiry']!r}")
    try:
        expiry = dt.datetime.fromisoformat(m.group(1))
    except ValueError:
        raise CertError(f"certbot certificates: {name}: Expiry Date {m.group(1)!r}") from None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=dt.UTC)  # certbot prints UTC
    return Lineage(
        name=name,
        serial_hex=entry["serial_hex"].lower(),
        domains=tuple(entry["domains"].split()),
        expiry=expiry,
        status=m.group(2),
        fullchain=entry["fullchain"],
        privkey=entry["privkey"],
    )


def due_for_renewal(
    lineages: Iterable[Lineage], now: dt.datetime, before_days: int = RENEW_BEFORE_DAYS
) -> list[Lineage]:
    """The lineages `certbot renew` would renew now, soonest expiry first."""
    due = [lin for lin in lineages if should_renew(lin.expiry, now, before_days)]
    return sorted(due, key=lambda lin: lin.expiry)


def describe(info: CertInfo, now: dt.datetime, before_days: int = RENEW_BEFORE_DAYS) -> str:
    """One line: serial, expiry, days left and when renewal is due."""
    days = info.days_left(now)
    expires = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if info.remaining(now) <= dt.timedelta(0):
        when = "EXPIRED"
    elif info.renewal_due(now, before_days):
        when = f"renewal due now (fewer than {before_days} days left)"
    else:
        due_on = (info.not_after - dt.timedelta(days=before_days)).strftime("%Y-%m-%d")
        when = f"renewal due from {due_on}"
    return f"serial {info.serial_hex}, expires {expires}, {days} days left; {when}"
