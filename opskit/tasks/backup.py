"""Backups: `inv db-backup`, `inv db-backup-staging`, `inv db-restore PATH`.

The work is in opskit.backup (pipeline, restore, offsite); these tasks read the env file,
pick how PostgreSQL is reached, print one line per step and turn failures into exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, Exit, task

from opskit import settings as settings_mod
from opskit.backup import commands, jobs, manifest, pipeline, process, restore
from opskit.tasks._common import DRY_HELP, interactive, project_root, say

TRANSPORT_HELP = (
    "docker (default: tools inside aiia_postgresql, over its socket) or tcp "
    "(this machine's tools to --host:--port)"
)
ENV_FILE_HELP = "the env file (default: .env; for staging .env.staging when it exists)"


def _env_file(root: Path, env: str, env_file: str | None) -> Path:
    if env_file:
        return Path(env_file)
    if env == "staging" and (root / ".env.staging").is_file():
        return root / ".env.staging"
    return root / ".env"


def _settings(env: str, env_file: Path) -> settings_mod.Settings:
    try:
        return settings_mod.load(env, env_file)
    except settings_mod.SettingsError as exc:
        raise Exit(f"backup: {exc}", code=2) from None
    except ValueError as exc:
        raise Exit(f"backup: {exc}", code=2) from None


def _reach(transport: str, host: str, port: int) -> jobs.Reach:
    if transport not in jobs.TRANSPORTS:
        raise Exit(f"--transport {transport}: use {' or '.join(jobs.TRANSPORTS)}", code=2)
    return jobs.Reach(transport=transport, host=host, port=int(port))


def _backup(c, env, env_file, transport, host, port, media_dir, backup_dir, dry_run):
    root = project_root(outside_is_cwd=True)
    path = _env_file(root, env, env_file)
    resolved = _settings(env, path)
    reach = _reach(transport, host, port)
    # BACKUP_DIR is relative to the checkout, wherever the task is started from
    chosen = Path(backup_dir or str(resolved.get("BACKUP_DIR") or "backups"))
    try:
        spec = jobs.backup_spec(
            resolved, reach, backup_dir=chosen if chosen.is_absolute() else root / chosen,
            media_dir=Path(media_dir) if media_dir else None, env_file=path,
        )  # fmt: skip
    except jobs.JobError as exc:
        raise Exit(f"backup: {exc}", code=2) from None
    if dry_run:
        target = spec.backup_dir / f"db_{commands.ENV_SHORT[env]}_<UTC time>.partial"
        print("\n".join(pipeline.plan(spec, target)))
        return
    try:
        outcome = jobs.backup(
            resolved, reach, backup_dir=spec.backup_dir, media_dir=spec.media_dir,
            env_file=path, report=say,
        )  # fmt: skip
    except (pipeline.BackupFailed, jobs.JobError) as exc:
        raise Exit(f"backup FAILED: {exc}", code=1) from None
    if outcome.offsite_error:
        say(f"WARNING {outcome.offsite_error}")
    print(outcome.result.path)


BACKUP_HELP = {
    "env": "the environment to back up (default: production)",
    "env-file": ENV_FILE_HELP,
    "transport": TRANSPORT_HELP,
    "host": f"with --transport tcp: PostgreSQL's host (default {jobs.DEFAULT_HOST})",
    "port": f"with --transport tcp: its port (default {jobs.DEFAULT_PORT}; not PgBouncer)",
    "media-dir": "also archive this directory (user uploads) as media.tar.gz.age",
    "backup-dir": "where sets go (default: BACKUP_DIR of the env file, backups)",
    "dry-run": DRY_HELP,
}


@task(help=BACKUP_HELP)
def db_backup(
    c, env="production", env_file=None, transport="docker", host=jobs.DEFAULT_HOST,
    port=jobs.DEFAULT_PORT, media_dir=None, backup_dir=None, dry_run=False,
):  # fmt: skip
    """Back up production's database: encrypted, verified, rotated, copied offsite."""
    _backup(c, env, env_file, transport, host, port, media_dir, backup_dir, dry_run)


@task(help={k: v for k, v in BACKUP_HELP.items() if k != "env"})
def db_backup_staging(
    c, env_file=None, transport="docker", host=jobs.DEFAULT_HOST, port=jobs.DEFAULT_PORT,
    media_dir=None, backup_dir=None, dry_run=False,
):  # fmt: skip
    """Back up staging's database (as db-backup --env staging)."""
    _backup(c, "staging", env_file, transport, host, port, media_dir, backup_dir, dry_run)


@task(
    help={
        "path": "the set: backups/db_prod_.../ or any file in it (e.g. .../database.dump)",
        "env": "the environment restored into (default: production)",
        "env-file": ENV_FILE_HELP,
        "identity": "the age secret key file (AGE-SECRET-KEY-1...), or - to read it on stdin",
        "yes": "swap the restored copy into place without asking",
        "verify-only": "the restore drill: restore into a scratch database, check it, drop it",
        "force": "allow a set of another environment (staging into production)",
        "media": "also put the set's uploads (media.tar.gz.age) back into the environment's "
        "media volume (the one its Django container has at /app/media) once the database is "
        "in place; with --verify-only they are decrypted and read through, not extracted",
        "transport": TRANSPORT_HELP,
        "host": "with --transport tcp: PostgreSQL's host",
        "port": "with --transport tcp: its port",
        "dry-run": DRY_HELP,
    },
    positional=["path"],
)
def db_restore(
    c, path, env="production", env_file=None, identity="backup.key", yes=False,
    verify_only=False, force=False, transport="docker", host=jobs.DEFAULT_HOST,
    port=jobs.DEFAULT_PORT, dry_run=False, media=False,
):  # fmt: skip
    """Restore a backup set: check, decrypt, restore into scratch, check, swap with --yes."""
    root = project_root(outside_is_cwd=True)
    resolved = _settings(env, _env_file(root, env, env_file))
    reach = _reach(transport, host, port)
    try:
        set_dir = restore.resolve_set(path)
    except restore.RestoreRefused as exc:
        raise Exit(f"restore: {exc}", code=2) from None
    if dry_run:
        conn = reach.conn(jobs.SUPERUSER)
        print(f"check {set_dir}/MANIFEST.txt: {manifest.CHECK_COMMAND}")
        print(f"CREATE DATABASE {resolved.get('POSTGRES_DB')}_restore_<UTC time> (psql)")
        print(f"(in this process) age -d -i {identity} {set_dir}/{manifest.DUMP_FILE} | "
              f"{commands.display(commands.pg_restore(conn, 'scratch'))}")  # fmt: skip
        print(
            "check tables and django_migrations; then "
            + ("DROP the scratch database" if verify_only else "swap it into place (renames)")
        )
        if media:
            extract = restore.media_extract(restore.MEDIA_VOLUMES[env], restore.media_image(env))
            target = "tar -tz (read only)" if verify_only else commands.display(extract)
            print(f"age -d -i {identity} {set_dir}/{manifest.MEDIA_FILE} | {target}")
        return
    try:
        identities, source = jobs.read_identity(identity)
        spec = jobs.restore_spec(resolved, reach, identities, source)
    except (jobs.JobError, restore.RestoreRefused) as exc:
        raise Exit(f"restore: {exc}", code=2) from None

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not interactive():
            say("restore: no terminal to confirm on; rerun with --yes to swap")
            return False
        return input(f"{question} Type 'yes' to go on: ").strip().lower() == "yes"

    try:
        result = restore.run_restore(
            set_dir, spec, verify_only=verify_only, force=force, confirm=confirm, report=say
        )
    except restore.RestoreRefused as exc:
        raise Exit(f"restore REFUSED: {exc}", code=1) from None
    except (restore.RestoreFailed, jobs.JobError, process.ProcessError) as exc:
        raise Exit(f"restore FAILED: {exc}", code=1) from None
    if not verify_only and not result.swapped:
        raise Exit("restore: not swapped; nothing was changed", code=1)
    if media:
        extract = None
        try:
            if not verify_only:
                volume, image = restore.find_media_volume(env)
                extract = restore.media_extract(volume, image)
            restore.restore_media(
                set_dir, spec.identities, argv=extract, identity_source=source, report=say
            )
        except (restore.RestoreRefused, restore.RestoreFailed) as exc:
            raise Exit(f"restore: the database is restored, the media FAILED: {exc}", 1) from None
    print(f"{result.set_dir.name}: {result.tables} tables restored", file=sys.stdout)


ns = Collection(db_backup, db_backup_staging, db_restore)
