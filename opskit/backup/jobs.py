"""Backup and restore from an environment's settings: what `inv`, `fab` and the backup
container share, so each of them stays a thin face over the same steps.

Two transports reach PostgreSQL:

- `docker`: the client tools run inside the aiia_postgresql container (`docker exec`) as
  the superuser over its socket (peer authentication, no password). `inv db-backup` and
  `inv db-restore` on the server use it.
- `tcp`: the tools run where this code runs and connect to HOST:PORT (default
  postgresql:5432 on aiia_network: straight to PostgreSQL, never through PgBouncer,
  whose transaction pooling would break pg_dump's snapshot). Backups connect as the
  application role (POSTGRES_USER / POSTGRES_PASSWORD); restores as the superuser
  (POSTGRES_SUPERUSER_PASSWORD). The backup container started by scripts/backup.sh uses it.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opskit.backup import commands, offsite, pipeline, restore
from opskit.backup.commands import PgConn
from opskit.settings import Settings
from opskit.shell import Secret

TRANSPORTS = ("docker", "tcp")
DEFAULT_HOST = "postgresql"
DEFAULT_PORT = 5432
SUPERUSER = "postgres"

Report = Callable[[str], None]


class JobError(RuntimeError):
    """Settings or options do not allow the job; the message says what to change."""


@dataclass(frozen=True)
class Reach:
    """How to reach PostgreSQL for one job."""

    transport: str = "docker"
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    container: str = commands.POSTGRES_CONTAINER
    bin_dir: str | None = None

    def conn(self, user: str) -> PgConn:
        if self.transport == "docker":
            return commands.docker_conn(SUPERUSER, self.container)
        if self.transport == "tcp":
            return PgConn(user=user, host=self.host, port=self.port, bin_dir=self.bin_dir)
        raise JobError(f"unknown transport {self.transport!r}: use {' or '.join(TRANSPORTS)}")


def _text(settings: Settings, key: str) -> str:
    return str(settings.get(key) or "")


def backup_spec(
    settings: Settings,
    reach: Reach,
    *,
    backup_dir: Path | None = None,
    media_dir: Path | None = None,
    env_file: Path | None = None,
    drill_recipient: str | None = None,
) -> pipeline.BackupSpec:
    recipient = _text(settings, "BACKUP_AGE_RECIPIENT")
    if not recipient:
        raise JobError(
            f"{settings.path}: BACKUP_AGE_RECIPIENT is empty; make a key pair off the server "
            "with `python -m opskit.age keygen -o backup.key` and set the printed age1... key"
        )
    password = settings.get("POSTGRES_PASSWORD") if reach.transport == "tcp" else None
    env_path = env_file if env_file is not None else Path(settings.path)
    return pipeline.BackupSpec(
        environment=settings.environment,
        database=_text(settings, "POSTGRES_DB"),
        owner=_text(settings, "POSTGRES_USER"),
        conn=reach.conn(_text(settings, "POSTGRES_USER")),
        password=password if isinstance(password, Secret) else None,
        recipient=recipient,
        backup_dir=Path(backup_dir or _text(settings, "BACKUP_DIR") or "backups"),
        keep=int(settings.get("BACKUP_KEEP") or 3),
        env_file=env_path if env_path.is_file() else None,
        media_dir=media_dir,
        mark_pending_upload=offsite.S3Target.from_settings(settings) is not None,
        drill_recipient=drill_recipient or None,
    )


@dataclass(frozen=True)
class BackupOutcome:
    result: pipeline.BackupResult
    offsite: offsite.SyncResult | None
    removed_remote: tuple[str, ...] = ()
    offsite_error: str | None = None


def backup(
    settings: Settings,
    reach: Reach,
    *,
    backup_dir: Path | None = None,
    media_dir: Path | None = None,
    env_file: Path | None = None,
    drill_recipient: str | None = None,
    report: Report = print,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> BackupOutcome:
    """Backup, rotation, then the offsite copies (pending ones too) and their retention.

    Offsite trouble never fails the backup: it is reported and retried on the next run.
    """
    spec = backup_spec(settings, reach, backup_dir=backup_dir, media_dir=media_dir,
                       env_file=env_file, drill_recipient=drill_recipient)  # fmt: skip
    result = pipeline.run_backup(spec, report=report, clock=now)
    target = offsite.S3Target.from_settings(settings)
    if target is None:
        return BackupOutcome(result, None)
    synced = offsite.sync(spec.backup_dir, commands.ENV_SHORT[spec.environment], target, report)
    removed: list[str] = []
    error = synced.error
    if synced.error is None:
        try:
            removed = offsite.apply_retention(target, now(), report)
        except offsite.OffsiteError as exc:
            error = str(exc)
            report(f"offsite: {exc}; retried on the next run")
    return BackupOutcome(result, synced, tuple(removed), error)


def read_identity(source: str, stdin=None) -> tuple[list[str], str]:
    """Identities from a file, or from stdin with '-'; (identities, where they came from)."""
    if source == "-":
        stream = stdin if stdin is not None else sys.stdin
        return restore.read_identities(stream.read(), "the identity on stdin"), "stdin"
    path = Path(source)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise JobError(
            f"{path}: no such identity file; give the secret key that matches "
            "BACKUP_AGE_RECIPIENT with --identity FILE (or --identity - on stdin)"
        ) from None
    return restore.read_identities(text, str(path)), path.name


def restore_spec(
    settings: Settings, reach: Reach, identities: list[str], identity_source: str
) -> restore.RestoreSpec:
    password = settings.get("POSTGRES_SUPERUSER_PASSWORD") if reach.transport == "tcp" else None
    if reach.transport == "tcp" and not password:
        raise JobError(
            f"{settings.path}: POSTGRES_SUPERUSER_PASSWORD is empty; a tcp restore connects as "
            "the superuser (use the production env file, or --transport docker on the server)"
        )
    return restore.RestoreSpec(
        environment=settings.environment,
        database=_text(settings, "POSTGRES_DB"),
        owner=_text(settings, "POSTGRES_USER"),
        conn=reach.conn(SUPERUSER),
        password=password if isinstance(password, Secret) and password else None,
        identities=identities,
        identity_source=identity_source,
    )
