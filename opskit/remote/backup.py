"""`fab backup`, `fab restore`, `fab install-cron`: backups of the server, driven over SSH.

- `backup` runs the server's scripts/backup.sh (the backup container; the server needs only
  Docker) and prints the new set's path, as a deploy's pre-deploy backup does
  (opskit.deploy.predeploy_backup).
- `restore` never puts the secret key on the server: the set is downloaded over SSH and
  checked here, decrypted here with the operator's key, and the plaintext is streamed over
  SSH into `docker exec -i aiia_postgresql pg_restore` on the server (scratch database,
  checks, then the swap only with --yes; --verify-only is the restore drill).
- `install-cron` puts the guide's daily 02:00 entry into the crontab, once; with production
  also the status collector (every minute) and the weekly restore drill (scripts/drill.sh),
  after making the drill's own key on the server once (opskit.backup.drill).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fabric import task
from invoke import Collection, Exit

from opskit import age, environments
from opskit.backup import commands, drill, manifest, restore
from opskit.backup.commands import PgConn
from opskit.provision.cron import STATUS_SCHEDULE

# The operators' guide's checkouts.
GUIDE_PATHS = {name: env.path for name, env in environments.SERVERS.items()}
CRON_SCHEDULE = "0 2 * * *"  # the guide: daily at 02:00
CRON_MARK = "scripts/backup.sh"

ENV_HELP = "production (default) or staging"
PATH_HELP = "the environment's checkout on the server (default: the guide's path)"


class RemoteBackupError(RuntimeError):
    pass


def checkout(env: str, path: str | None) -> str:
    if env not in GUIDE_PATHS:
        raise Exit(f"--env {env}: use production or staging", 2)
    chosen = (path or GUIDE_PATHS[env]).rstrip("/")
    if not chosen.startswith("/") or any(c in chosen for c in "\n'\""):
        raise Exit(f"--path {path!r}: give the checkout's absolute path", 2)
    return chosen


# ----------------------------------------------------------------------------- builders


backup_argv = commands.backup_script


def cron_line(path: str = GUIDE_PATHS["production"], env: str = "production") -> str:
    """`0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production`."""
    return f"{CRON_SCHEDULE} {shlex.quote(f'{path}/{CRON_MARK}')} {env}"


def cron_lines(path: str = GUIDE_PATHS["production"], env: str = "production") -> list[str]:
    """Every entry the server's crontab needs for `env`: its backup; the status collector
    and the weekly restore drill once per box, with production's entries."""
    lines = [cron_line(path, env)]
    if env == "production":
        # the collector runs every minute in its own container; cron's `start` only checks it
        lines.append(f"{STATUS_SCHEDULE} {shlex.quote(f'{path}/scripts/status.sh')} start")
        lines.append(f"{drill.SCHEDULE} {shlex.quote(f'{path}/scripts/drill.sh')} {env}")
    return lines


# The drill's key pair on the server, made once (opskit.backup.drill.KEY_SCRIPT); `fab setup`
# makes it with the same script.
DRILL_KEY_SCRIPT = drill.KEY_SCRIPT
drill_key_argv = drill.key_argv
parse_drill_key = drill.parse_key


SETUP_MARK = re.compile(r"\s+# aiia:[\w.-]+\s*$")  # fab setup's mark of its lines


def merge_crontab(current: str, line: str) -> tuple[str, bool]:
    """The crontab with `line` in it exactly once; (text, changed).

    An older entry for the same script and environment (another schedule, say) is
    replaced, not doubled; `fab setup`'s own line of the entry (the same line with its
    `# aiia:<id>` mark, opskit.provision.cron) is kept as it is; every other line is kept
    as it was.
    """
    target = line.split()[-2:]  # script path and environment
    kept: list[str] = []
    found = False
    for existing in current.splitlines():
        bare = SETUP_MARK.sub("", existing)
        words = bare.split()
        same = words[-2:] == target or (
            # the collector's former per-minute `status.sh run` line is replaced by `start`
            target[0].endswith("/scripts/status.sh") and words[-2:] == [target[0], "run"]
        )
        ours = not existing.lstrip().startswith("#") and len(words) >= 7 and same
        if ours:
            if not found:
                kept.append(existing if bare == line else line)
            found = True
            continue
        kept.append(existing)
    if not found:
        kept.append(line)
    text = "\n".join(kept) + "\n"
    normalized = current if current.endswith("\n") or not current else current + "\n"
    return text, text != normalized


def crontab_argv(user: str | None, *, write: bool) -> list[str]:
    argv = ["crontab"]
    if user:
        argv += ["-u", user]
    return [*argv, "-" if write else "-l"]


def crontab_write(c, user: str | None, text: str) -> None:
    import io

    c.run(shlex.join(crontab_argv(user, write=True)), in_stream=io.StringIO(text), hide=True)


def remote_set_dir(path: str, given: str) -> str:
    """The set directory on the server from a set path or a file in it (relative: checkout)."""
    given = given.rstrip("/")
    name = given.rsplit("/", 1)[-1]
    if (
        name in manifest.PLAIN_NAMES
        or name in manifest.PLAIN_NAMES.values()
        or (name == manifest.MANIFEST_FILE)
    ):
        given = given.rsplit("/", 1)[0] if "/" in given else "."
    full = given if given.startswith("/") else f"{path}/{given}"
    set_name = full.rsplit("/", 1)[-1]
    if not commands.SET_NAME_RE.match(set_name):
        raise Exit(f"{given}: not a backup set (expected backups/db_prod_YYYYmmdd_HHMMSS)", 2)
    return full


def ssh_prefix(
    host: str,
    *,
    port: int = 22,
    user: str | None = None,
    key_files: Sequence[str] = (),
    known_hosts: str | None = None,
) -> list[str]:
    """`ssh ... host --`: what comes after runs on the server, through its shell."""
    argv = ["ssh", "-o", "BatchMode=yes", "-p", str(port)]
    for key in key_files:
        argv += ["-i", key]
    if known_hosts:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if user:
        argv += ["-l", user]
    return [*argv, host, "--"]


def ssh_conn(prefix: Sequence[str], conn: PgConn) -> PgConn:
    """`conn` run on the server through `prefix`.

    ssh joins the words after `--` with spaces for the remote shell: every word our
    builders make is a plain word (names are checked identifiers), which `safe` asserts.
    """
    return PgConn(user=conn.user, host=conn.host, port=conn.port,
                  prefix=(*prefix, *conn.prefix), bin_dir=conn.bin_dir)  # fmt: skip


def safe(argv: Sequence[str]) -> bool:
    return all(shlex.quote(str(word)) == str(word) for word in argv)


# ----------------------------------------------------------------------------- the work


def download_set(prefix: Sequence[str], remote_dir: str, local_parent: Path) -> Path:
    """Copy a set (MANIFEST.txt and its .age files) from the server with `ssh ... cat`."""
    listing = subprocess.run([*prefix, "ls", "-1", shlex.quote(remote_dir)],
                             capture_output=True, text=True)  # fmt: skip
    if listing.returncode != 0:
        raise Exit(f"{remote_dir}: no such backup set on the server ({listing.stderr.strip()})",
                   2)  # fmt: skip
    local = local_parent / remote_dir.rsplit("/", 1)[-1]
    local.mkdir(mode=0o700)
    names = [n for n in listing.stdout.split() if n == manifest.MANIFEST_FILE or n.endswith(".age")]
    for name in names:
        fd = os.open(local / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as out:
            got = subprocess.run([*prefix, "cat", shlex.quote(f"{remote_dir}/{name}")],
                                 stdout=out, stderr=subprocess.PIPE)  # fmt: skip
        if got.returncode != 0:
            raise Exit(f"{remote_dir}/{name}: download failed: {got.stderr.decode().strip()}", 1)
    return local


def restore_over_ssh(
    prefix: Sequence[str],
    remote_dir: str,
    spec: restore.RestoreSpec,
    *,
    verify_only: bool,
    force: bool,
    yes: bool,
    report=print,
) -> restore.RestoreResult:
    """Download the set, check and decrypt it here, restore it on the server through `prefix`."""
    with tempfile.TemporaryDirectory(prefix="aiia-restore-") as tmp:
        local = download_set(prefix, remote_dir, Path(tmp))
        report(f"restore: downloaded {remote_dir}")
        return restore.run_restore(
            local, spec, verify_only=verify_only, force=force, confirm=lambda _q: yes,
            report=report,
        )  # fmt: skip


# ----------------------------------------------------------------------------- tasks


@task(help={"env": ENV_HELP, "path": PATH_HELP})
def backup(c, env="production", path=None):
    """Back up an environment's database on the server (scripts/backup.sh)."""
    root = checkout(env, path)
    result = c.run(shlex.join(backup_argv(root, env)), warn=True, in_stream=False)
    if not result.ok:
        raise Exit(f"backup on {c.host} failed (exit {result.exited}); see its output above "
                   f"and {root}/logs/backup_{env}_*.log", 1)  # fmt: skip


@task(
    help={
        "set": "the set on the server: backups/db_prod_... or a file in it",
        "env": "the environment restored into: " + ENV_HELP,
        "path": PATH_HELP,
        "identity": "the age secret key file on this machine (never copied to the server)",
        "yes": "swap the restored copy into place",
        "verify-only": "the restore drill: scratch database, checks, dropped",
        "force": "allow a set of another environment",
        "container": "the PostgreSQL container (default aiia_postgresql)",
    },
    positional=["set"],
)
def restore_(c, set, env="production", path=None, identity="backup.key", yes=False,
             verify_only=False, force=False, container=commands.POSTGRES_CONTAINER):  # fmt: skip
    """Restore a set from the server: decrypted here, restored there; --yes swaps."""
    root = checkout(env, path)
    remote_dir = remote_set_dir(root, set)
    try:
        text = Path(identity).read_text()
    except FileNotFoundError:
        raise Exit(f"{identity}: no such identity file (the secret key, kept off the server)",
                   2) from None  # fmt: skip
    settings = _remote_settings(c, root, env)
    key_files = c.connect_kwargs.get("key_filename") or []
    prefix = ssh_prefix(
        c.host,
        port=c.port,
        user=c.user,
        key_files=[key_files] if isinstance(key_files, str) else key_files,
    )
    spec = restore.RestoreSpec(
        environment=env,
        database=settings["POSTGRES_DB"],
        owner=settings["POSTGRES_USER"],
        conn=ssh_conn(prefix, commands.docker_conn("postgres", container)),
        identities=restore.read_identities(text, identity),
        identity_source=Path(identity).name,
    )
    set_name = remote_dir.rstrip("/").rsplit("/", 1)[-1]
    try:
        result = restore_over_ssh(prefix, remote_dir, spec, verify_only=verify_only,
                                  force=force, yes=yes)  # fmt: skip
    except (restore.RestoreRefused, restore.RestoreFailed) as exc:
        word = "REFUSED" if isinstance(exc, restore.RestoreRefused) else "FAILED"
        if verify_only:
            _record_drill(c, root, env, set_name, False, f"{word}: {exc}")
        raise Exit(f"restore {word}: {exc}", 1) from None
    if verify_only:
        _record_drill(c, root, env, set_name, True,
                      f"{result.tables} tables restored, checked and dropped in "
                      f"{result.seconds:.0f}s")  # fmt: skip
    if not verify_only and not result.swapped:
        raise Exit("restore: checked but not swapped (rerun with --yes to swap)", 1)


DRILL_WRITE = (
    'set -eu; mkdir -p -- "$1"; t=$(mktemp "$1/.drill.XXXXXX"); cat > "$t"; '
    'chmod 644 "$t"; mv -f -- "$t" "$1/drill.json"'
)


def drill_record(root: str, env: str, set_name: str, ok: bool, detail: str,
                 when: str) -> tuple[list[str], str]:  # fmt: skip
    """The command that writes logs/drill.json on the server, and what it reads on stdin:
    the result the status page shows and alerts on."""
    doc = drill.document(drill.Outcome(ok, set_name, detail), env, when)
    return ["sh", "-c", DRILL_WRITE, "sh", f"{root}/logs"], doc


def _record_drill(c, root: str, env: str, set_name: str, ok: bool, detail: str) -> None:
    import datetime as dt
    import io

    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    argv, doc = drill_record(root, env, set_name, ok, detail, when)
    done = c.run(shlex.join(argv), in_stream=io.StringIO(doc), hide=True, warn=True)
    if not done.ok:
        print(f"restore: the drill's result could not be written to {root}/logs/drill.json")


def _remote_settings(c, root: str, env: str) -> dict[str, str]:
    """POSTGRES_DB and POSTGRES_USER from the server's env file (names only, no secrets)."""
    argv = ["sed", "-n", "s/^\\(POSTGRES_DB\\|POSTGRES_USER\\)=//p", f"{root}/.env"]
    found = c.run(shlex.join(argv), hide=True, warn=True, in_stream=False)
    values = found.stdout.split() if found.ok else []
    if len(values) != 2:
        raise Exit(f"{root}/.env on {c.host}: cannot read POSTGRES_DB and POSTGRES_USER", 2)
    return {"POSTGRES_DB": commands.ident(values[0]), "POSTGRES_USER": commands.ident(values[1])}


@task(
    help={
        "env": ENV_HELP,
        "path": PATH_HELP,
        "user": "whose crontab and drill key (default: the SSH user's own; another user "
        "needs root over SSH: its key is made as that user, in its ~/.config/aiia)",
        "dry-run": "print the crontab it would install; change nothing",
    }
)
def install_cron(c, env="production", path=None, user=None, dry_run=False):
    """Install cron entries once: backups, the status collector, the weekly restore drill.

    The guide's 02:00 backup and, with production, the status collector (started now,
    every minute in its own container, looked at hourly: scripts/status.sh start) and the
    restore drill on Sundays at 03:30 (scripts/drill.sh), whose key pair it makes on the
    server the first time (~/.config/aiia/drill.key, 0600, of the crontab's user; the
    backups are encrypted to its public key too). Running it again changes nothing."""
    root = checkout(env, path)
    lines = cron_lines(root, env)
    current = c.run(shlex.join(crontab_argv(user, write=False)), hide=True, warn=True,
                    in_stream=False)  # fmt: skip
    if not current.ok and "no crontab" not in current.stderr:
        raise Exit(f"crontab -l failed on {c.host}: {current.stderr.strip()} (is cron "
                   "installed? apt-get install cron)", 1)  # fmt: skip
    # the user cron runs the drill, the backups and the collector as, when not the SSH user
    other = user if user and user != getattr(c, "user", None) else None
    if env == "production":
        # the drill's key is theirs, in their home
        _drill_key(c, as_user=other, dry_run=dry_run)
    text = current.stdout if current.ok else ""
    changed = []
    for line in lines:
        text, one = merge_crontab(text, line)
        if one:
            changed.append(line)
    if dry_run or not changed:
        print(text, end="")
        for line in lines:
            state = "would install" if line in changed else "already installed"
            print(f"install-cron: {state}: {line}")
        if not dry_run and env == "production":
            _start_status(c, root, other)
        return
    crontab_write(c, user, text)
    for line in lines:
        print(f"install-cron: {'installed' if line in changed else 'already installed'}: {line}")
    if env == "production":
        _start_status(c, root, other)


def _start_status(c, root: str, as_user: str | None) -> None:
    """The collector's container, started now rather than at cron's next hourly look; a
    server without the backup image yet is told how to start it later."""
    argv = ["bash", f"{root}/scripts/status.sh", "start"]
    res = c.run(shlex.join(["runuser", "-u", as_user, "--", *argv] if as_user else argv),
                hide=True, warn=True, in_stream=False)  # fmt: skip
    if res.ok:
        print("install-cron: the status collector runs every minute (scripts/status.sh start)")
    else:
        print(
            f"install-cron: the status collector did not start: {res.stderr.strip()} "
            f"(then: {shlex.join(argv)})"
        )


def drill_key_command(as_user: str | None, *, dry_run: bool = False) -> str:
    """DRILL_KEY_SCRIPT as the SSH user, or as `as_user` (runuser: root only; it sets HOME,
    so the key goes into that user's ~/.config/aiia, owned by them)."""
    argv = drill_key_argv(dry_run=dry_run)
    return shlex.join(["runuser", "-u", as_user, "--", *argv] if as_user else argv)


def _drill_key(c, *, as_user: str | None = None, dry_run: bool) -> None:
    """The drill's key pair on the server, made once (DRILL_KEY_SCRIPT)."""
    import io

    secret, public = age.generate_identity()
    done = c.run(drill_key_command(as_user, dry_run=dry_run), hide=True, warn=True,
                 in_stream=io.StringIO(f"{secret}\n{public}\n"))  # fmt: skip
    try:
        state, recipient, where = parse_drill_key(done.stdout) if done.ok else ("", "", "")
    except ValueError:
        state = recipient = where = ""
    if not state:
        raise Exit(f"install-cron: the drill's key could not be made on {c.host}: "
                   f"{(done.stderr or done.stdout).strip()}; nothing was changed", 1)  # fmt: skip
    if state == "absent":
        print(f"install-cron: would make the drill's key {where} (0600) on {c.host}")
    elif state == "present":
        print(f"install-cron: the drill's key is already there: {where} ({recipient})")
    else:
        print(f"install-cron: made the drill's key {where} (0600), public key {recipient}: "
              "backups from now on are encrypted to it as well; the drill needs one, take "
              f"it now with: fab -H {c.host} backup")  # fmt: skip


ns = Collection(backup, install_cron)
ns.add_task(restore_, name="restore")
