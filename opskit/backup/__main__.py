"""`python -m opskit.backup`: the backup as the backup container (scripts/backup.sh) runs it.

    python -m opskit.backup backup --env production --env-file FILE [--backup-dir DIR]
        [--media-dir DIR] [--transport tcp|docker] [--host H] [--port P]
    python -m opskit.backup sync --env production --env-file FILE [--backup-dir DIR]

`backup` takes, verifies and rotates a set, then uploads it (and any set still pending)
offsite when S3_BUCKET is set. `sync` only retries pending uploads and applies retention.
Exit status: 0 good (an offsite problem is a WARNING on stderr), 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path

from opskit import settings as settings_mod
from opskit.backup import commands, jobs, offsite, pipeline


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
    args = parser.parse_args(argv)
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
                              env_file=args.env_file, report=_say)  # fmt: skip
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


if __name__ == "__main__":
    sys.exit(main())
