"""Take a backup set: pg_dump streamed through age encryption to disk, verified, rotated.

    pg_dump -Fc --> this process --> age (X25519) --> database.dump.age  (SHA-256 on the way)
                         |
                         +--> pg_restore --list  (the dump's table of contents is readable)

The dump is never held in memory: it moves through in pipe-sized blocks, so peak memory
does not grow with the database. The set is written to `db_<env>_<UTC time>.partial/`
and renamed to its final name only after every check passed:

- pg_dump and pg_restore --list exited 0 (pipefail, checked here), the dump is not empty;
- the encrypted file was fsynced and its SHA-256, read back from disk, matches the one
  computed while writing; the manifest read back lists every file at its size and hash.

Only then does rotation run. Any failure removes the `.partial` directory and raises
`BackupFailed`, whose message says what failed and which good sets remain. The server
never needs the secret key: verification reads the plaintext while it is encrypted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import io
import os
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cryptography

from opskit import age
from opskit.backup import commands, manifest, process, rotation
from opskit.backup.commands import PgConn
from opskit.backup.offsite import PENDING_MARKER  # (boto3 is imported only when uploading)
from opskit.shell import Secret

READ_BLOCK = 1 << 20
WRITE_BUFFER = 1 << 20
LOCK_FILE = ".backup.lock"

Report = Callable[[str], None]

_TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ ")
_TOC_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (?!DATA )(?P<schema>\S+) (?P<name>\S+) ")


class BackupFailed(RuntimeError):
    """The backup did not produce a good set; the message says what happened."""


class BackupLocked(BackupFailed):
    """Another backup holds the lock of this backup directory."""


@dataclass(frozen=True)
class BackupSpec:
    environment: str
    database: str
    owner: str  # the role that owns the database (POSTGRES_USER)
    conn: PgConn
    recipient: str
    backup_dir: Path
    password: Secret | None = field(default=None, repr=False)
    keep: int = 3
    env_file: Path | None = None  # archived, encrypted, as config.tar.gz.age
    media_dir: Path | None = None  # archived, encrypted, as media.tar.gz.age
    verify_conn: PgConn | None = None  # where pg_restore --list runs (default: conn's tools)
    mark_pending_upload: bool = False  # offsite copies on: the set starts marked for upload
    # the server's restore-drill key (scripts/drill.sh): the dump alone is encrypted to it too
    drill_recipient: str | None = None


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: manifest.Manifest
    seconds: float
    removed: tuple[str, ...]  # set directories rotation removed
    damaged: tuple[str, ...]  # set directories that look like sets but are not good


@dataclass(frozen=True)
class TocSummary:
    entries: int
    tables: int
    migrations_table: bool


def parse_toc(text: str) -> TocSummary:
    """Summarise `pg_restore --list` output: entries, tables, django_migrations present."""
    entries = tables = 0
    migrations = False
    for line in text.splitlines():
        if not _TOC_ENTRY.match(line):
            continue
        entries += 1
        match = _TOC_TABLE.match(line)
        if match:
            tables += 1
            migrations = migrations or match["name"] == "django_migrations"
    return TocSummary(entries, tables, migrations)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, raw: io.BufferedWriter) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.raw.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


def _create_private(path: Path) -> io.BufferedWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return open(fd, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 - the caller closes it


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@contextlib.contextmanager
def backup_lock(backup_dir: Path) -> Iterator[None]:
    """One backup at a time per backup directory (rotation must not race a backup)."""
    backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = backup_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise BackupLocked(
                f"another backup is running in {backup_dir} (pid {holder}); wait for it to "
                "finish, or check that no backup is stuck (ps -ef | grep pg_dump)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _good_summary(backup_dir: Path, env_short: str) -> str:
    good = rotation.good_sets(backup_dir, env_short)
    if not good:
        return "there is no good backup of this environment yet"
    return f"earlier backups untouched: {len(good)} good set(s), newest {good[0]}"


def tool_versions(spec: BackupSpec, env: dict[str, str]) -> dict[str, str]:
    out = {}
    for tool in ("pg_dump",):
        result = process.run(tool, commands.version(spec.conn, tool), env=env, check=False)
        out[tool] = result.stdout.strip() or f"unknown ({result.stderr.strip()[:80]})"
    out["encryption"] = "opskit.age (age v1); opens with age 1.0 or newer"
    out["cryptography"] = cryptography.__version__
    out["python"] = platform.python_version()
    return out


def dump_commands(spec: BackupSpec) -> tuple[list[str], list[str]]:
    """The two programs of a backup: pg_dump, and pg_restore --list reading the same stream."""
    return (
        commands.pg_dump(spec.conn, spec.database),
        commands.pg_restore_list(spec.verify_conn or spec.conn),
    )


def plan(spec: BackupSpec, set_dir: Path) -> list[str]:
    """What run_backup does, in order: the programs it starts (from the same builders) and
    the stages this process runs itself (age encryption, checksums, archives)."""
    dump, verify = dump_commands(spec)
    also = f" -r {spec.drill_recipient}" if spec.drill_recipient else ""
    encrypt = f"(in this process) age -r {spec.recipient}{also}, sha256"
    lines = [
        f"{commands.display(dump)} | {encrypt} > {set_dir}/{manifest.DUMP_FILE}",
        f"  the same stream | {commands.display(verify)}",
    ]
    if spec.env_file:
        lines.append(
            f"(in this process) tar -czf - {spec.env_file.name} | age -r ..., sha256 "
            f"> {set_dir}/{manifest.CONFIG_FILE}"
        )
    if spec.media_dir:
        lines.append(
            f"(in this process) tar -czf - media | age -r ..., sha256 "
            f"> {set_dir}/{manifest.MEDIA_FILE}"
        )
    lines += [
        f"(in this process) write {set_dir}/{manifest.MANIFEST_FILE}, read every file back",
        f"mv {set_dir} {str(set_dir).removesuffix(rotation.PARTIAL_SUFFIX)}",
        f"rotate {spec.backup_dir}: keep the newest {spec.keep} good sets",
    ]
    return lines


def _stream_dump(
    spec: BackupSpec,
    target: Path,
    env: dict[str, str],
    on_block: Callable[[int, subprocess.Popen], None] | None,
) -> tuple[int, str, int, TocSummary]:
    """pg_dump -> encrypt -> target, tee'd into pg_restore --list.

    Returns (plaintext bytes, sha256 of the file, file size, TOC summary).
    """
    dump_argv, verify_argv = dump_commands(spec)
    listing = tempfile.TemporaryFile()
    dump = process.Child("pg_dump", dump_argv, env=env, stdout=subprocess.PIPE)
    verifier = None
    try:
        verifier = process.Child(
            "pg_restore --list",
            verify_argv,
            env=env,
            stdin=subprocess.PIPE,
            stdout=listing,
        )
        assert dump.proc.stdout is not None and verifier.proc.stdin is not None
        process.widen_pipe(dump.proc.stdout.fileno())
        process.widen_pipe(verifier.proc.stdin.fileno())
        plaintext = 0
        feeding = True
        buf = bytearray(READ_BLOCK)
        view = memoryview(buf)
        source = dump.proc.stdout
        with _create_private(target) as raw:
            out = _HashingWriter(raw)
            encryptor = age.Encryptor(out, _dump_recipients(spec))
            try:
                while n := source.readinto(buf):
                    block = view[:n]
                    if feeding:
                        try:
                            verifier.proc.stdin.write(block)
                        except BrokenPipeError:
                            # pg_restore --list stops reading once it has the table of
                            # contents; its exit status says whether that went well
                            feeding = False
                    encryptor.write(block)
                    plaintext += n
                    if on_block is not None:
                        on_block(plaintext, dump.proc)
            except BaseException:
                encryptor.abort()
                raise
            dump_code = dump.wait()
            if dump_code != 0:
                encryptor.abort()
                raise BackupFailed(dump.failure(f" after {_human(plaintext)} of dump"))
            if plaintext == 0:
                encryptor.abort()
                raise BackupFailed("pg_dump exited 0 but wrote nothing: an empty dump is no backup")
            encryptor.close()
            out.flush()
            os.fsync(raw.fileno())
        with contextlib.suppress(BrokenPipeError):
            verifier.proc.stdin.close()
        if verifier.wait() != 0:
            raise BackupFailed(verifier.failure(" on the dump: the archive is unreadable"))
        listing.seek(0)
        toc = parse_toc(listing.read().decode("utf-8", "replace"))
        if toc.entries == 0:
            raise BackupFailed("pg_restore --list found no entries in the dump")
        return plaintext, out.digest.hexdigest(), out.size, toc
    finally:
        dump.stop()
        dump.close()
        if verifier is not None:
            verifier.stop()
            verifier.close()
        listing.close()


class _Tee:
    """Writes to the encryption and to a checker's stdin (the plaintext, as it goes)."""

    def __init__(self, first, second) -> None:
        self.first, self.second = first, second

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.first.write(data)
        self.second.write(data)
        return len(data)

    def flush(self) -> None:
        self.first.flush()


def _dump_recipients(spec: BackupSpec) -> list[str]:
    """The operator's key, and the drill's: it restores the database, never reads the
    configuration or the uploads."""
    return [spec.recipient, *([spec.drill_recipient] if spec.drill_recipient else [])]


def _archive(sources: list[tuple[Path, str]], target: Path, recipient: str) -> tuple[str, int]:
    """tar.gz of `sources` (path, name in archive), encrypted, streamed; (sha256, size)."""
    sha, size, _members = _archive_checked(sources, target, recipient, check=False)
    return sha, size


def _archive_checked(
    sources: list[tuple[Path, str]], target: Path, recipient: str, *, check: bool = True
) -> tuple[str, int, int]:
    """`_archive`, verified like the dump: the plaintext tar.gz, while it is encrypted, is
    read back by `tar -tz` (another program), which must list every member written;
    (sha256, size, members)."""
    added: list[str] = []

    def count(info: tarfile.TarInfo) -> tarfile.TarInfo:
        added.append(info.name)
        return info

    listing = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    lister = (
        subprocess.Popen(
            ["tar", "-tzf", "-"], stdin=subprocess.PIPE, stdout=listing, stderr=subprocess.PIPE
        )  # fmt: skip
        if check
        else None
    )
    try:
        with _create_private(target) as raw:
            out = _HashingWriter(raw)
            with age.Encryptor(out, [recipient]) as encryptor:
                sink = _Tee(encryptor, lister.stdin) if lister else encryptor
                with tarfile.open(fileobj=sink, mode="w|gz") as tar:  # type: ignore[arg-type]
                    for path, name in sources:
                        tar.add(path, arcname=name, filter=count)
            out.flush()
            os.fsync(raw.fileno())
        if lister:
            lister.stdin.close()
            err = lister.stderr.read().decode(errors="replace").strip()
            if lister.wait(timeout=600) != 0:
                raise BackupFailed(f"tar -tz could not read the archive back: {err}")
            listing.seek(0)
            listed = [line for line in listing.read().decode(errors="replace").splitlines()]
            if len(listed) != len(added):
                raise BackupFailed(
                    f"tar -tz read {len(listed)} members back, {len(added)} were written"
                )
    except BrokenPipeError:
        raise BackupFailed("tar -tz stopped reading the archive") from None
    finally:
        if lister and lister.poll() is None:
            lister.kill()
            lister.wait()
        listing.close()
    return out.digest.hexdigest(), out.size, len(added)


def _unique_name(backup_dir: Path, environment: str, now: dt.datetime) -> str:
    """The set name for `now`; a second later when a set of that second exists."""
    for offset in range(3600):
        stamp = (now + dt.timedelta(seconds=offset)).strftime(commands.TIMESTAMP_FORMAT)
        name = commands.set_name(environment, stamp)
        if (
            not (backup_dir / name).exists()
            and not (backup_dir / (name + rotation.PARTIAL_SUFFIX)).exists()
        ):
            return name
    raise BackupFailed(f"no free set name near {now:%Y-%m-%d %H:%M:%S} in {backup_dir}")


def rotate(backup_dir: Path, env_short: str, keep: int, report: Report) -> rotation.Plan:
    """Apply the rotation policy: remove partial sets and good sets beyond `keep`."""
    plan = rotation.plan(rotation.inspect(backup_dir), env_short=env_short, keep=keep)
    for state in (*plan.remove_partial, *plan.delete):
        shutil.rmtree(backup_dir / state.name)
        why = "unfinished" if state.state == rotation.PARTIAL else f"beyond the newest {keep}"
        report(f"rotation: removed {state.name} ({why})")
    for state in plan.damaged:
        report(f"rotation: WARNING {state.name} is not a good set and is kept: {state.reason}")
    return plan


def run_backup(
    spec: BackupSpec,
    *,
    report: Report = print,
    clock: Callable[[], dt.datetime] = _utc_now,
    on_block: Callable[[int, subprocess.Popen], None] | None = None,
) -> BackupResult:
    """Take, verify and rotate one backup set; raise BackupFailed saying what happened.

    `on_block(bytes_so_far, pg_dump_process)` is called after each block of the dump.
    """
    for key in _dump_recipients(spec):
        age.parse_recipient(key)  # a bad key fails before anything runs
    env_short = commands.ENV_SHORT[spec.environment]
    backup_dir = Path(spec.backup_dir)
    started = time.monotonic()
    with backup_lock(backup_dir):
        now = clock().astimezone(dt.UTC).replace(microsecond=0)
        name = _unique_name(backup_dir, spec.environment, now)
        partial = backup_dir / (name + rotation.PARTIAL_SUFFIX)
        final = backup_dir / name
        partial.mkdir(mode=0o700)
        env = process.child_env(spec.password)
        try:
            files = []
            t0 = time.monotonic()
            plain, sha, size, toc = _stream_dump(spec, partial / manifest.DUMP_FILE, env, on_block)
            report(
                f"backup: dumped and encrypted {spec.database}: {_human(plain)} -> "
                f"{manifest.DUMP_FILE} {_human(size)}, {toc.tables} tables, "
                f"pg_restore --list ok ({toc.entries} entries) in {time.monotonic() - t0:.1f}s"
            )
            files.append(manifest.FileEntry(manifest.DUMP_FILE, size, sha))
            if spec.env_file is not None:
                sha, size = _archive(
                    [(Path(spec.env_file), Path(spec.env_file).name)],
                    partial / manifest.CONFIG_FILE,
                    spec.recipient,
                )
                files.append(manifest.FileEntry(manifest.CONFIG_FILE, size, sha))
            if spec.media_dir is not None:
                if not Path(spec.media_dir).is_dir():
                    raise BackupFailed(f"media directory {spec.media_dir} is not a directory")
                t0 = time.monotonic()
                sha, size, members = _archive_checked(
                    [(Path(spec.media_dir), "media")], partial / manifest.MEDIA_FILE,
                    spec.recipient,
                )  # fmt: skip
                files.append(manifest.FileEntry(manifest.MEDIA_FILE, size, sha))
                report(
                    f"backup: media archived and read back, {members} entries, "
                    f"{_human(size)} in {time.monotonic() - t0:.1f}s"
                )
            found = manifest.Manifest(
                name=name,
                environment=spec.environment,
                database=spec.database,
                owner=spec.owner,
                created=now,
                recipient=spec.recipient,
                drill_recipient=spec.drill_recipient,
                dump_bytes=plain,
                toc_entries=toc.entries,
                tables=toc.tables,
                migrations_table=toc.migrations_table,
                files=tuple(files),
                tools=tool_versions(spec, env),
            )
            with _create_private(partial / manifest.MANIFEST_FILE) as f:
                f.write(found.render().encode())
                f.flush()
                os.fsync(f.fileno())
            # read everything back from disk: what the manifest says is what is there
            reread = manifest.read(partial)
            problems = manifest.check_files(partial, reread.files)
            if problems or reread.files != found.files:
                raise BackupFailed("read-back check failed: " + "; ".join(str(p) for p in problems))
            if spec.mark_pending_upload:
                (partial / PENDING_MARKER).touch(mode=0o600)
            os.chmod(partial, 0o700)
            partial.rename(final)
            _fsync_dir(backup_dir)
        except BaseException as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackupFailed(
                    f"the disk holding {backup_dir} is full: the write failed "
                    f"({exc.strerror}); the partial set {partial.name} was removed; "
                    f"{_good_summary(backup_dir, env_short)}; free space (df -h "
                    f"{backup_dir}) and run the backup again"
                ) from None
            if isinstance(exc, OSError):
                raise BackupFailed(
                    f"writing the set failed: {exc}; the partial set {partial.name} was "
                    f"removed; {_good_summary(backup_dir, env_short)}"
                ) from None
            if isinstance(exc, BackupFailed | process.ProcessError | age.AgeError):
                raise BackupFailed(
                    f"{exc}; the partial set {partial.name} was removed; "
                    f"{_good_summary(backup_dir, env_short)}"
                ) from None
            raise
        report(
            f"backup: {final.name} verified, {_human(found.total_bytes)} in "
            f"{time.monotonic() - started:.1f}s"
        )
        plan = rotate(backup_dir, env_short, spec.keep, report)
    return BackupResult(
        path=final,
        manifest=found,
        seconds=time.monotonic() - started,
        removed=tuple(s.name for s in (*plan.remove_partial, *plan.delete)),
        damaged=tuple(s.name for s in plan.damaged),
    )
