"""`fab renew-certs` and `fab cert-status`: the Let's Encrypt certificate on the server.

certbot runs inside the nginx container (the guide's `docker exec aiia_nginx certbot
renew`); its deploy hook (nginx/certbot-cli.ini) reloads nginx after a renewal. These
tasks read the lineage's cert.pem before and after, compare it with the certificate
nginx actually presents, and reload nginx gracefully when the two differ, so a renewal
is only reported done once it is in service.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from fabric import task
from invoke import Collection, Exit

from opskit import certs
from opskit.commands import deploy as deploy_cmd
from opskit.remote._common import host_arg, runner
from opskit.runner import Runner

# certbot renews every name of the lineage through Let's Encrypt: a few seconds each
RENEW_TIMEOUT_S = 600
# after a reload: new workers take over within milliseconds; this bounds the wait
SERVED_ATTEMPTS = 10
SERVED_INTERVAL_S = 0.5
NAME_HELP = f"the certificate's lineage (default: {certs.CERT_NAME})"
LOG_HINT = "docker exec aiia_nginx tail -n 50 /var/log/letsencrypt/letsencrypt.log"


class CertTaskError(RuntimeError):
    """What failed, and what state the server's certificate was left in."""


@dataclass(frozen=True)
class Status:
    name: str
    file: certs.CertInfo
    served: certs.CertInfo | None  # None: no TLS handshake on 443 for the name
    served_error: str = ""

    @property
    def in_service(self) -> bool:
        return self.served is not None and self.served.serial == self.file.serial


def read_file_cert(r: Runner, name: str) -> certs.CertInfo:
    res = r.run(certs.read_cert(name))
    if not res.ok and "No such file" in res.stderr + res.stdout:
        raise CertTaskError(
            f"no certificate at {certs.cert_path(name)} in aiia_nginx yet: issue one first "
            "(nginx/README.md: certbot certonly --webroot ...)"
        )
    if not res.ok:
        raise CertTaskError(
            f"could not read {certs.cert_path(name)} in aiia_nginx (exit {res.exited}): "
            f"{res.tail(3)}"
        )
    try:
        return certs.parse_cert(res.stdout)
    except certs.CertError as exc:
        raise CertTaskError(f"{certs.cert_path(name)}: {exc}") from None


def read_served_cert(r: Runner, server_name: str) -> tuple[certs.CertInfo | None, str]:
    res = r.run(certs.served_cert(server_name), timeout=30)
    try:
        return certs.parse_cert(res.stdout), ""
    except certs.CertError:
        return None, f"no TLS handshake for {server_name} on 127.0.0.1:443 in aiia_nginx: " + (
            res.tail(3) or f"exit {res.exited}"
        )


def status(r: Runner, name: str = certs.CERT_NAME) -> Status:
    file = read_file_cert(r, name)
    served, error = read_served_cert(r, _sni(file, name))
    return Status(name, file, served, error)


def _sni(info: certs.CertInfo, name: str) -> str:
    """The name to ask nginx for: the lineage's name when the certificate covers it."""
    return name if name in info.names or not info.names else info.names[0]


def status_lines(st: Status, now: dt.datetime) -> tuple[list[str], bool]:
    """What `cert-status` prints, and whether everything is as it should be."""
    f = st.file
    lines = [
        f"{st.name}: {certs.cert_path(st.name)}",
        f"  names:  {' '.join(f.names) or '(none)'}",
        f"  issuer: {f.issuer}",
        f"  {certs.describe(f, now)}",
    ]
    ok = not f.renewal_due(now)
    if st.served is None:
        lines.append(f"  nginx: {st.served_error}")
        ok = False
    elif st.in_service:
        lines.append("  nginx serves this certificate")
    else:
        lines.append(
            f"  nginx serves serial {st.served.serial_hex} (expires "
            f"{st.served.not_after:%Y-%m-%d}), not this one: nginx was not reloaded"
        )
        ok = False
    return lines, ok


def wait_in_service(
    r: Runner,
    file: certs.CertInfo,
    server_name: str,
    *,
    attempts: int | None = None,
    interval_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[certs.CertInfo | None, str]:
    """Poll the served certificate until it is `file`'s (bounded by `attempts`)."""
    attempts = SERVED_ATTEMPTS if attempts is None else attempts
    interval_s = SERVED_INTERVAL_S if interval_s is None else interval_s
    served, error = None, ""
    for attempt in range(attempts):
        served, error = read_served_cert(r, server_name)
        if served is not None and served.serial == file.serial:
            break
        if attempt + 1 < attempts:
            sleep(interval_s)
    return served, error


def reload_nginx(r: Runner) -> None:
    checked = r.run(deploy_cmd.nginx_test())
    if not checked.ok:
        raise CertTaskError(
            f"nginx -t refused the configuration, nginx was not reloaded: {checked.tail(5)}"
        )
    reloaded = r.run(deploy_cmd.nginx_reload())
    if not reloaded.ok:
        raise CertTaskError(f"nginx -s reload failed: {reloaded.tail(5)}")


@dataclass(frozen=True)
class Renewal:
    before: certs.CertInfo
    after: certs.CertInfo
    reloaded: bool
    certbot_output: str

    @property
    def renewed(self) -> bool:
        return self.after.serial != self.before.serial


def renew(
    r: Runner,
    *,
    name: str = certs.CERT_NAME,
    force: bool = False,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> Renewal:
    """certbot renew in aiia_nginx, then nginx reloaded (gracefully) if it serves an old one."""
    argv = certs.in_container(certs.renew(cert_name=name, force=force, dry_run=dry_run))
    before = read_file_cert(r, name)
    say(f"before: {certs.describe(before, now())}")
    res = r.run(argv, timeout=RENEW_TIMEOUT_S)
    summary = _certbot_summary(res.stdout + "\n" + res.stderr)
    for line in summary:
        say(f"  certbot: {line}")
    if not res.ok:
        killed = (
            "certbot was killed (exit 137), most likely by aiia_nginx's memory limit: certbot "
            "needs about 50 MB.\n"
            if res.exited == 137
            else ""
        )
        raise CertTaskError(
            f"certbot renew failed (exit {res.exited}): {res.tail(8)}\n{killed}"
            f"The certificate on the server is unchanged: {certs.describe(before, now())}.\n"
            f"certbot's log: {LOG_HINT}"
        )
    after = before if dry_run else read_file_cert(r, name)
    reloaded = False
    if not dry_run:
        sni = _sni(after, name)
        served, _ = read_served_cert(r, sni)
        if served is None or served.serial != after.serial:
            # certbot's deploy hook (aiia-reload) reloads when it renews and returns once
            # nginx serves the new certificate: a reload here is for an image without the
            # hook, a hook that failed, or a certificate renewed earlier and never reloaded.
            # Not one more after the hook's: each reload ends every HTTP/2 connection with a
            # GOAWAY and holds kept-alive clients to one request per connection for 16 s
            reload_nginx(r)
            reloaded = True
            served, error = wait_in_service(r, after, sni, sleep=sleep)
            if served is None or served.serial != after.serial:
                shown = error or f"nginx still serves serial {served.serial_hex}"
                raise CertTaskError(
                    f"renewed to serial {after.serial_hex}, but after a reload {shown}; "
                    "see docker logs aiia_nginx"
                )
    return Renewal(before, after, reloaded, "\n".join(summary))


def _certbot_summary(output: str) -> list[str]:
    """certbot's report without its frames and the debug-log line."""
    keep = []
    for line in output.splitlines():
        text = line.strip()
        if not text or set(text) <= {"-", " "} or text.startswith("Saving debug log"):
            continue
        keep.append(text)
    return keep


@task(
    auto_shortflags=False,
    help={
        "name": NAME_HELP,
        "force": "renew now even when more than 30 days are left (the guide's full renewal)",
        "dry_run": "ask Let's Encrypt's staging server for a test certificate; keep nothing",
    },
)
def renew_certs(c, name=certs.CERT_NAME, force=False, dry_run=False):
    """Renew the Let's Encrypt certificate if due (or --force), then make nginx serve it."""
    if force and dry_run:
        raise Exit("--force and --dry-run: a dry run always renews, and keeps nothing", 2)
    r = runner(c)
    try:
        done = renew(r, name=name, force=force, dry_run=dry_run)
    except (CertTaskError, certs.CertError) as exc:
        raise Exit(f"renew-certs: {exc}", 1) from None
    now = dt.datetime.now(dt.UTC)
    if dry_run:
        print("dry run: Let's Encrypt's staging server issued a test certificate; none was kept")
    elif done.renewed:
        how = "nginx reloaded" if done.reloaded else "nginx reloaded by certbot's hook"
        print(f"after:  {certs.describe(done.after, now)}; {how}, serving it")
    else:
        served = "nginx reloaded, now serving it" if done.reloaded else "nginx serves it"
        print(f"after:  not renewed (not due); {served}")
        print(f"to renew anyway: fab -H {host_arg(c)} renew-certs --force")


@task(auto_shortflags=False, help={"name": NAME_HELP})
def cert_status(c, name=certs.CERT_NAME):
    """Names, expiry and days left of the certificate, and whether nginx serves it.

    Exits 1 when something needs doing: renewal due or expired, or nginx serving another.
    """
    try:
        st = status(runner(c), name)
    except (CertTaskError, certs.CertError) as exc:
        raise Exit(f"cert-status: {exc}", 1) from None
    lines, ok = status_lines(st, dt.datetime.now(dt.UTC))
    print("\n".join(lines))
    if not ok:
        print(f"next: fab -H {host_arg(c)} renew-certs")
        raise Exit(code=1)


ns = Collection(renew_certs, cert_status)
