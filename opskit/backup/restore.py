"""Restore a backup set: check it, decrypt it, restore into a scratch database, check that,
and only then (when asked) swap it into place.

    checksums -> age header and key -> CREATE DATABASE <db>_restore_<time> -> decrypt |
    pg_restore --single-transaction -> tables and migrations checked -> drill: drop it |
    swap: close <db>, rename <db> -> <db>_before_<time>, scratch -> <db> (one transaction)

The database being replaced is never dropped: it stays as `<db>_before_<time>` until the
operator drops it. Nothing touches it before the scratch copy restored and passed its
checks, and the swap is a single transaction: it happens entirely or not at all.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opskit import age
from opskit.backup import commands, manifest, process
from opskit.backup.commands import PgConn
from opskit.shell import Secret

Report = Callable[[str], None]

# Database names are at most 63 bytes; the suffixes below are 23 and 22 characters.
MAX_IDENT = 63

CREATE_SCRATCH_SQL = r"""
SELECT format('CREATE DATABASE %I OWNER %I TEMPLATE template0', :'scratch', :'owner') \gexec
-- the same database-level grants as the database it will replace (pg_dump leaves them out)
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'scratch')
  FROM pg_database WHERE datname = :'target' AND datacl IS NOT NULL \gexec
SELECT format('GRANT %s ON DATABASE %I TO %s', a.privilege_type, :'scratch',
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee))
              END)
  FROM pg_database AS d, aclexplode(d.datacl) AS a
 WHERE d.datname = :'target' AND a.grantee <> d.datdba \gexec
"""

CHECK_SQL = r"""
SELECT count(*) FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast';
SELECT coalesce((SELECT count(*) FROM pg_class AS c JOIN pg_namespace AS n
                  ON n.oid = c.relnamespace
                 WHERE c.relname = 'django_migrations' AND c.relkind = 'r'), 0);
"""

MIGRATIONS_SQL = "SELECT count(*) FROM django_migrations;\n"

DROP_SQL = r"""SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'scratch') \gexec
"""

# Close the database, end its sessions, and swap the names in one transaction.
SWAP_SQL = r"""
SELECT EXISTS (SELECT FROM pg_database WHERE datname = :'target') AS has_target \gset
\if :has_target
SELECT format('ALTER DATABASE %I WITH ALLOW_CONNECTIONS false', :'target') \gexec
SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
 WHERE datname IN (:'target', :'scratch') AND pid <> pg_backend_pid();
BEGIN;
SELECT format('ALTER DATABASE %I RENAME TO %I', :'target', :'old') \gexec
SELECT format('ALTER DATABASE %I RENAME TO %I', :'scratch', :'target') \gexec
-- the replaced database stays reachable (superuser only: pg_hba's samerole) for inspection
SELECT format('ALTER DATABASE %I WITH ALLOW_CONNECTIONS true', :'old') \gexec
COMMIT;
\else
SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
 WHERE datname = :'scratch' AND pid <> pg_backend_pid();
SELECT format('ALTER DATABASE %I RENAME TO %I', :'scratch', :'target') \gexec
\endif
"""

# After a failed swap: the target open again (the renames rolled back with their transaction).
REOPEN_SQL = r"""SELECT format('ALTER DATABASE %I WITH ALLOW_CONNECTIONS true', :'target')
  FROM pg_database WHERE datname = :'target' \gexec
"""


class RestoreRefused(RuntimeError):
    """The set, the key or the target is not fit for a restore; nothing was changed."""


class RestoreFailed(RuntimeError):
    """The restore started and failed; the message says what state things are in."""


@dataclass(frozen=True)
class RestoreSpec:
    environment: str  # the environment restored into
    database: str  # its database (POSTGRES_DB)
    owner: str  # the role owning it (POSTGRES_USER)
    conn: PgConn  # a superuser connection: creates, renames and drops databases
    identities: Sequence[str] = field(repr=False)  # AGE-SECRET-KEY-1... strings
    password: Secret | None = field(default=None, repr=False)
    admin_db: str = "postgres"
    identity_source: str = "the identity file"


@dataclass(frozen=True)
class RestoreResult:
    set_dir: Path
    manifest: manifest.Manifest
    scratch: str
    tables: int
    migrations: int | None
    swapped: bool
    old_database: str | None  # the replaced database, kept
    seconds: float


def resolve_set(path: str | Path) -> Path:
    """The set directory from the directory itself or any file in it.

    Accepts the guide's `backups/db_prod_.../database.dump` (the file is now
    database.dump.age) and MANIFEST.txt.
    """
    path = Path(path)
    if path.name in manifest.PLAIN_NAMES or path.name in manifest.PLAIN_NAMES.values():
        path = path.parent
    elif path.name == manifest.MANIFEST_FILE:
        path = path.parent
    if not path.is_dir():
        raise RestoreRefused(f"{path}: no such backup set; list them with: ls -d backups/db_*_*/")
    return path


def read_identities(text: str, source: str) -> list[str]:
    try:
        return age.parse_identity_file(text)
    except age.KeyFormatError as exc:
        raise RestoreRefused(f"{source}: {exc}") from None


def _name(base: str, suffix: str) -> str:
    return f"{base[: MAX_IDENT - len(suffix)]}{suffix}"


def check_set(set_dir: Path, spec: RestoreSpec, *, force: bool) -> manifest.Manifest:
    """Manifest, environment and checksums; RestoreRefused names what is wrong."""
    try:
        found = manifest.read(set_dir)
    except manifest.ManifestError as exc:
        raise RestoreRefused(f"{exc}; choose another set") from None
    if found.environment != spec.environment and not force:
        raise RestoreRefused(
            f"{set_dir.name} is a {found.environment} backup ({found.database}); restoring it "
            f"into {spec.environment} ({spec.database}) needs --force"
        )
    problems = manifest.check_files(set_dir, found.files)
    if problems:
        detail = "; ".join(str(p) for p in problems)
        raise RestoreRefused(
            f"{set_dir.name} is damaged, nothing was restored: {detail}; restore another set "
            f"or its offsite copy"
        )
    return found


class _Psql:
    def __init__(self, spec: RestoreSpec) -> None:
        self.spec = spec
        self.env = process.child_env(spec.password)

    def __call__(self, sql: str, variables: dict[str, str], db: str | None = None) -> str:
        argv = commands.psql(self.spec.conn, db or self.spec.admin_db, variables)
        return process.run("psql", argv, env=self.env, input_text=sql).stdout.strip()


def _stream_restore(
    decryptor: age.Decryptor, spec: RestoreSpec, scratch: str
) -> tuple[int, process.Child]:
    env = process.child_env(spec.password)
    out = tempfile.TemporaryFile()
    child = process.Child(
        "pg_restore",
        commands.pg_restore(spec.conn, scratch),
        env=env,
        stdin=subprocess.PIPE,
        stdout=out,
    )
    total = 0
    try:
        assert child.proc.stdin is not None
        process.widen_pipe(child.proc.stdin.fileno())
        try:
            for chunk in decryptor.chunks():
                child.proc.stdin.write(chunk)
                total += len(chunk)
        except BrokenPipeError:
            child.wait()
            raise RestoreFailed(child.failure(f" after reading {total} bytes")) from None
        except age.AgeError:
            child.stop()  # --single-transaction: nothing of it stays
            raise
        child.proc.stdin.close()
        if child.wait() != 0:
            raise RestoreFailed(child.failure())
        return total, child
    finally:
        child.stop()
        child.close()
        out.close()


def run_restore(
    path: str | Path,
    spec: RestoreSpec,
    *,
    verify_only: bool = False,
    force: bool = False,
    confirm: Callable[[str], bool] = lambda _question: False,
    report: Report = print,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> RestoreResult:
    """Restore `path` (a set, or a file in it) as `spec` says; see the module docstring.

    Without `verify_only` the scratch database is swapped into place only when
    `confirm(question)` says yes; otherwise it is dropped and nothing changes.
    """
    started = time.monotonic()
    set_dir = resolve_set(path)
    found = check_set(set_dir, spec, force=force)
    report(f"restore: {set_dir.name}: manifest and SHA-256 of {len(found.files)} file(s) ok")
    stamp = clock().astimezone(dt.UTC).strftime(commands.TIMESTAMP_FORMAT)
    scratch = _name(spec.database, f"_restore_{stamp}")
    old = _name(spec.database, f"_before_{stamp}")
    dump_path = set_dir / manifest.DUMP_FILE
    psql = _Psql(spec)
    names = {"scratch": scratch, "target": spec.database, "owner": spec.owner, "old": old}

    with open(dump_path, "rb") as src:
        try:
            decryptor = age.Decryptor(src, spec.identities)
        except age.NoMatchError as exc:
            raise RestoreRefused(
                f"{manifest.DUMP_FILE}: {exc.with_source(spec.identity_source)} (the set was "
                f"encrypted to {found.recipient}); nothing was restored"
            ) from None
        except age.AgeError as exc:
            raise RestoreRefused(f"{manifest.DUMP_FILE}: {exc}; nothing was restored") from None
        t0 = time.monotonic()
        try:
            psql(CREATE_SCRATCH_SQL, names)
        except process.ProcessError as exc:
            raise RestoreFailed(
                f"cannot create the scratch database {scratch}: {exc}; {spec.database} is untouched"
            ) from None
        try:
            size, _ = _stream_restore(decryptor, spec, scratch)
            report(
                f"restore: decrypted and restored {size} bytes into scratch database {scratch} "
                f"in {time.monotonic() - t0:.1f}s"
            )
            tables, migrations = _check_scratch(psql, scratch, found)
        except BaseException as exc:
            _drop(psql, names)
            if isinstance(exc, age.AgeError):
                raise RestoreFailed(
                    f"{manifest.DUMP_FILE}: {exc}; the scratch database {scratch} was dropped, "
                    f"{spec.database} is untouched"
                ) from None
            if isinstance(exc, RestoreFailed | process.ProcessError):
                raise RestoreFailed(
                    f"{exc}; the scratch database {scratch} was dropped, {spec.database} is "
                    "untouched"
                ) from None
            raise
    migrated = f", {migrations} migrations applied" if migrations is not None else ""
    report(f"restore: {scratch} checked: {tables} tables{migrated}")

    swapped = False
    if verify_only:
        _drop(psql, names)
        report(f"restore: drill passed; scratch database {scratch} dropped")
    elif confirm(
        f"Replace {spec.database} ({spec.environment}) with {set_dir.name}? The current "
        f"database is kept as {old}."
    ):
        try:
            psql(SWAP_SQL, names)
        except process.ProcessError as exc:
            psql(REOPEN_SQL, names)
            raise RestoreFailed(
                f"the swap failed and was rolled back: {exc}; {spec.database} is unchanged and "
                f"open again; the restored copy is kept as {scratch}"
            ) from None
        swapped = True
        report(
            f"restore: {spec.database} is now {set_dir.name}; the previous database is kept as "
            f"{old} (drop it when satisfied: DROP DATABASE {old};)"
        )
    else:
        _drop(psql, names)
        report(f"restore: not confirmed; {scratch} dropped, {spec.database} unchanged")
    exists = (
        swapped and psql("SELECT count(*) FROM pg_database WHERE datname = :'old';\n", names) == "1"
    )
    return RestoreResult(
        set_dir=set_dir,
        manifest=found,
        scratch=scratch,
        tables=tables,
        migrations=migrations,
        swapped=swapped,
        old_database=old if exists else None,
        seconds=time.monotonic() - started,
    )


def _drop(psql: _Psql, names: dict[str, str]) -> None:
    psql(DROP_SQL, names)


def _check_scratch(psql: _Psql, scratch: str, found: manifest.Manifest) -> tuple[int, int | None]:
    tables_text, has_migrations = psql(CHECK_SQL, {}, db=scratch).splitlines()
    tables = int(tables_text)
    if tables != found.tables:
        raise RestoreFailed(
            f"the restored database has {tables} tables, the backup listed {found.tables}"
        )
    if found.tables and not tables:
        raise RestoreFailed("the restored database has no tables")
    migrations = None
    if found.migrations_table:
        if has_migrations != "1":
            raise RestoreFailed("the restored database has no django_migrations table")
        migrations = int(psql(MIGRATIONS_SQL, {}, db=scratch))
        if migrations == 0:
            raise RestoreFailed("django_migrations is empty in the restored database")
    return tables, migrations


# --- media: the set's uploads back into the environment's volume ------------------------

# the server stack's app containers, whose volume at /app/media holds the uploads
# (aiia_media_prod / aiia_media_staging), and the app's user, who owns them
APP_CONTAINERS = {"production": "aiia_django_prod", "staging": "aiia_django_staging"}
MEDIA_TARGET = "/app/media"
APP_USER = "10001:10001"


def media_volume_query(environment: str) -> list[str]:
    return [
        "docker", "inspect", "--type", "container", "--format",
        "{{.Image}} "
        '{{range .Mounts}}{{if eq .Destination "' + MEDIA_TARGET + '"}}{{.Name}}{{end}}{{end}}',
        APP_CONTAINERS[environment],
    ]  # fmt: skip


def find_media_volume(environment: str) -> tuple[str, str]:
    """(volume, image) of the environment's app container: the volume it has at
    /app/media (never a new one), and its image, which has tar and the app's user."""
    found = subprocess.run(media_volume_query(environment), capture_output=True, text=True)
    image, _, name = found.stdout.strip().partition(" ")
    if found.returncode != 0 or not name:
        raise RestoreRefused(
            f"{APP_CONTAINERS[environment]} is not running or has no volume at {MEDIA_TARGET}: "
            "start the stack (docker compose up -d) and run again; no media restored"
        )
    return name, image


def media_image(environment: str) -> str:
    """An image with tar that the server has: the environment's application image."""
    return f"aiia/app:{environment}"


def media_extract(volume: str, image: str) -> list[str]:
    """`tar -xz` from stdin into `volume`, in a throwaway container with no network.

    The archive's entries are media/...; the volume is mounted at /restore/media, so each
    file lands where it was. Files of the same name are replaced, others are left alone.
    """
    return [
        "docker", "run", "--rm", "-i", "--network", "none", "--user", APP_USER,
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
        "--mount", f"type=volume,source={volume},target=/restore/media,volume-nocopy",
        "--entrypoint", "tar", image, "-xzf", "-", "-C", "/restore", "--no-same-owner",
    ]  # fmt: skip


def restore_media(
    path: str | Path,
    identities: Sequence[str],
    *,
    argv: Sequence[str] | None,
    identity_source: str = "the identity file",
    report: Report = print,
) -> int:
    """Decrypt the set's media.tar.gz.age and stream it into `argv` (media_extract);
    with `argv` None only read it through (the drill). Returns the entries read."""
    import tarfile

    set_dir = resolve_set(path)
    media = set_dir / manifest.MEDIA_FILE
    if not media.is_file():
        raise RestoreRefused(f"{set_dir.name} holds no {manifest.MEDIA_FILE}; no media restored")
    t0 = time.monotonic()
    with open(media, "rb") as src:
        try:
            decryptor = age.Decryptor(src, identities)
        except age.NoMatchError as exc:
            raise RestoreRefused(
                f"{manifest.MEDIA_FILE}: {exc.with_source(identity_source)}; no media restored"
            ) from None
        except age.AgeError as exc:
            raise RestoreRefused(f"{manifest.MEDIA_FILE}: {exc}; no media restored") from None

        if argv is None:
            try:
                with tarfile.open(fileobj=decryptor, mode="r|gz") as tar:
                    entries = sum(1 for _ in tar)
            except (tarfile.TarError, age.AgeError, OSError) as exc:
                raise RestoreFailed(f"{manifest.MEDIA_FILE} does not read back: {exc}") from None
            report(f"restore: {manifest.MEDIA_FILE} read back, {entries} entries (not extracted)")
            return entries
        child = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        total = 0
        try:
            assert child.stdin is not None and child.stderr is not None
            try:
                for chunk in decryptor.chunks():
                    child.stdin.write(chunk)
                    total += len(chunk)
                child.stdin.close()
            except BrokenPipeError:
                pass
            except age.AgeError as exc:
                child.kill()
                raise RestoreFailed(
                    f"{manifest.MEDIA_FILE}: {exc}; the files extracted before it stay"
                ) from None
            err = child.stderr.read().decode(errors="replace").strip()
            if child.wait() != 0:
                raise RestoreFailed(f"extracting the media failed: {err or 'no message'}")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    report(
        f"restore: media put back from {set_dir.name} ({total} bytes of archive) in "
        f"{time.monotonic() - t0:.1f}s"
    )
    return total
