"""`python -m opskit.backup`: the backup as the backup container (scripts/backup.sh) runs it.

    python -m opskit.backup backup --env production --env-file FILE [--backup-dir DIR]
        [--media-dir DIR] [--transport tcp|docker] [--host H] [--port P]
    python -m opskit.backup sync --env production --env-file FILE [--backup-dir DIR]
    python -m opskit.backup drill --env production --env-file FILE --backup-dir DIR
        --identity FILE --relay DIR [--container NAME]

`backup` takes, verifies and rotates a set, then uploads it (and any set still pending)
offsite when S3_BUCKET is set (`--drill-recipient age1...`: the dump is encrypted to the
server's restore-drill key too). `sync` only retries pending uploads and applies retention.
`drill` is the weekly restore drill as scripts/drill.sh runs it (opskit.backup.drill): the
newest set restored into a scratch database through the host's `docker exec` (relayed,
opskit.backup.relay), checked and dropped; it prints logs/drill.json's line on stdout.
Exit status: 0 good (an offsite problem is a WARNING on stderr), 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from opskit import settings as settings_mod
from opskit.backup import commands, drill, jobs, offsite, pipeline, relay


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opskit.backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("backup", "sync"):
        p = sub.add_parser(name)
        p.add_argument("--env", required=True, choices=("production", "staging", "local"))
        p.add_argument("--env-file", required=True, type=Path)
        p.add_argument("--backup-dir", type=Path)
        if name == "backup":
            p.add_argument("--media-dir", type=Path)
            p.add_argument("--transport", default="tcp", choices=jobs.TRANSPORTS)
            p.add_argument("--host", default=jobs.DEFAULT_HOST)
            p.add_argument("--port", default=jobs.DEFAULT_PORT, type=int)
            p.add_argument("--drill-recipient")
    p = sub.add_parser("drill")
    p.add_argument("--env", required=True, choices=("production", "staging"))
    p.add_argument("--env-file", required=True, type=Path)
    p.add_argument("--backup-dir", required=True, type=Path)
    p.add_argument("--identity", required=True, type=Path)
    p.add_argument("--relay", required=True, help="the directory scripts/drill.sh serves")
    p.add_argument("--container", default=commands.POSTGRES_CONTAINER)
    args = parser.parse_args(argv)
    if args.command == "drill":
        return _drill(args)
    try:
        resolved = settings_mod.load(args.env, args.env_file)
    except settings_mod.SettingsError as exc:
        _say(f"backup: {exc}")
        return 2
    backup_dir = args.backup_dir or Path(str(resolved.get("BACKUP_DIR") or "backups"))
    if args.command == "sync":
        target = offsite.S3Target.from_settings(resolved)
        if target is None:
            _say("sync: S3_BUCKET is empty: offsite copies are off")
            return 0
        result = offsite.sync(backup_dir, commands.ENV_SHORT[args.env], target, _say)
        if result.error:
            return 1
        try:
            offsite.apply_retention(target, dt.datetime.now(dt.UTC), _say)
        except offsite.OffsiteError as exc:
            _say(str(exc))
            return 1
        return 0
    reach = jobs.Reach(transport=args.transport, host=args.host, port=args.port)
    try:
        outcome = jobs.backup(resolved, reach, backup_dir=backup_dir, media_dir=args.media_dir,
                              env_file=args.env_file, drill_recipient=args.drill_recipient,
                              report=_say)  # fmt: skip
    except jobs.JobError as exc:
        _say(f"backup: {exc}")
        return 2
    except pipeline.BackupFailed as exc:
        _say(f"backup FAILED: {exc}")
        return 1
    if outcome.offsite_error:
        _say(f"WARNING {outcome.offsite_error}")
    print(outcome.result.path)
    return 0


def _drill(args: argparse.Namespace) -> int:
    when = drill.now_text()
    try:
        resolved = settings_mod.load(args.env, args.env_file)
        database = commands.ident(str(resolved.get("POSTGRES_DB") or ""), "POSTGRES_DB")
        owner = commands.ident(str(resolved.get("POSTGRES_USER") or ""), "POSTGRES_USER")
        identity = args.identity.read_text()
    except (settings_mod.SettingsError, commands.CommandError) as exc:
        outcome = drill.Outcome(False, "", f"the env file: {exc}")
    except OSError as exc:
        outcome = drill.Outcome(False, "", f"the drill's key {args.identity}: {exc.strerror}; "
                                "make it with `fab -H HOST install-cron`")  # fmt: skip
    else:
        conn = relay.relayed(args.relay, commands.docker_conn(jobs.SUPERUSER, args.container))
        outcome = drill.run(
            args.env, args.backup_dir,
            database=database, owner=owner, conn=conn, identity_text=identity,
            identity_source="the drill's key", report=_say,
        )  # fmt: skip
    _say(f"drill {'passed' if outcome.ok else 'FAILED'}: {outcome.detail}")
    print(drill.document(outcome, args.env, when), end="")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
