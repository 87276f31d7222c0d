"""The restore drill: the newest backup set restored into a scratch database, checked and
dropped; its result is the one-line JSON of `logs/drill.json`, which the status page shows
and alerts on.

Two ways run it, through the same restore code (opskit.backup.restore, `verify_only`):

- `fab restore SET --verify-only`, from the operator's machine with the operator's key,
  over SSH (opskit.remote.backup);
- weekly from cron on the server, `scripts/drill.sh production`, with the drill's own key
  (`~/.config/aiia/drill.key` of the cron user, made by `fab setup` or `fab install-cron`;
  every database dump is encrypted to it as well as to BACKUP_AGE_RECIPIENT). This module
  is what its container runs: `python3 -m opskit.backup drill ...`.

A failed drill says what failed and the command that fixes it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opskit import age
from opskit.backup import commands, manifest, restore, rotation
from opskit.backup.commands import PgConn

Report = Callable[[str], None]

# where scripts/drill.sh and scripts/backup.sh look for the drill's key pair on the server
# (DRILL_IDENTITY overrides; the public key is the same path with .pub)
IDENTITY_PATH = "~/.config/aiia/drill.key"
SCHEDULE = "30 3 * * 0"  # Sundays 03:30: after the 02:00 and 02:30 backups


# The drill's key pair on the server, made once by `fab install-cron` or `fab setup`: the
# secret key (generated on the operator's machine, in memory, and sent on stdin, never in
# argv) into ~/.config/aiia/drill.key, mode 0600, and its public key beside it (.pub), which
# scripts/backup.sh encrypts each dump to. An existing key is never replaced. Prints
# `present|created|absent RECIPIENT PATH` (absent: --dry-run only).
KEY_SCRIPT = r"""set -eu
key=${DRILL_IDENTITY:-$HOME/.config/aiia/drill.key}
# stdin is read whole first, whatever happens next (the sender never meets a closed channel)
IFS= read -r secret || true
IFS= read -r public || true
if [ -s "$key" ]; then
  if [ ! -s "$key.pub" ]; then
    echo "$key has no $key.pub beside it: move $key away and run fab install-cron" \
      "(or fab setup) again" >&2
    exit 3
  fi
  echo "present $(cat "$key.pub") $key"
  exit 0
fi
[ "${1:-}" = --dry-run ] && { echo "absent - $key"; exit 0; }
umask 077
mkdir -p "$(dirname "$key")"
case "$secret" in AGE-SECRET-KEY-1*) ;; *) echo "no key on stdin" >&2; exit 2 ;; esac
t=$(mktemp "$key.XXXXXX")
p=$(mktemp "$key.pub.XXXXXX")
printf '# the restore drill key of this server (scripts/drill.sh), made by %s\n%s\n' \
  "fab install-cron or fab setup" "$secret" > "$t"
printf '%s\n' "$public" > "$p"
chmod 644 "$p"
mv -f "$p" "$key.pub"
mv -f "$t" "$key"
echo "created $public $key"
"""


def key_argv(*, dry_run: bool = False) -> list[str]:
    return ["sh", "-c", KEY_SCRIPT, "sh", *(["--dry-run"] if dry_run else [])]


def parse_key(stdout: str) -> tuple[str, str, str]:
    """(state, recipient, path) from KEY_SCRIPT's last line."""
    words = (stdout.strip().splitlines() or [""])[-1].split(maxsplit=2)
    if len(words) != 3 or words[0] not in ("present", "created", "absent"):
        raise ValueError(f"unexpected answer: {stdout.strip()!r}")
    return words[0], words[1], words[2]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    set_name: str  # "" when there was no set to drill
    detail: str


def document(outcome: Outcome, env: str, when: str) -> str:
    """`logs/drill.json`: what the collector reads (`when`, `ok`, `detail`; `env`, `set`)."""
    doc = {
        "when": when,
        "env": env,
        "set": outcome.set_name,
        "ok": outcome.ok,
        "detail": outcome.detail,
    }
    return json.dumps(doc, sort_keys=True) + "\n"


def now_text(clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> str:
    return clock().astimezone(dt.UTC).isoformat(timespec="seconds")


def newest_set(backup_dir: Path, env: str) -> rotation.SetState | None:
    """The newest completed set of `env` (a damaged one too: the drill must say so); sets
    still being written (.partial) are left alone."""
    short = commands.ENV_SHORT[env]
    done = [
        s
        for s in rotation.inspect(backup_dir)
        if s.env_short == short and s.state != rotation.PARTIAL
    ]
    return max(done, key=lambda s: s.timestamp, default=None)


def run(
    env: str,
    backup_dir: Path,
    *,
    database: str,
    owner: str,
    conn: PgConn,
    identity_text: str,
    identity_source: str,
    report: Report = print,
) -> Outcome:
    """Drill the newest set of `env` in `backup_dir`; never raises for a failed drill."""
    found = newest_set(backup_dir, env)
    if found is None:
        return Outcome(
            False,
            "",
            f"no {env} backup set in {backup_dir.name}/: take one with "
            f"`fab -H HOST backup --env {env}` (or scripts/backup.sh {env} on the server)",
        )
    set_dir = backup_dir / found.name
    try:
        identities = restore.read_identities(identity_text, identity_source)
        spec = restore.RestoreSpec(
            environment=env,
            database=database,
            owner=owner,
            conn=conn,
            identities=identities,
            identity_source=identity_source,
        )
        if found.state == rotation.GOOD:
            to = manifest.read(set_dir).drill_recipient
            mine = {age.recipient_from_identity(i) for i in identities}
            if to not in mine:
                why = (
                    (
                        "it was taken before `fab install-cron` made the drill's key, or by a "
                        f"backup.sh that did not find {IDENTITY_PATH}.pub"
                    )
                    if to is None
                    else (f"it was encrypted to another drill key, {to}")
                )
                return Outcome(
                    False,
                    found.name,
                    (
                        f"{found.name} cannot be opened with the drill's key ({why}): the next "
                        f"backup will be; take one now with `fab -H HOST backup --env {env}`"
                    ),
                )
        result = restore.run_restore(set_dir, spec, verify_only=True, report=report)
    except (restore.RestoreRefused, restore.RestoreFailed, manifest.ManifestError) as exc:
        word = "FAILED" if isinstance(exc, restore.RestoreFailed) else "REFUSED"
        return Outcome(False, found.name, f"{word}: {exc}")
    migrated = f", {result.migrations} migrations" if result.migrations is not None else ""
    return Outcome(
        True,
        found.name,
        f"{result.tables} tables{migrated} restored, checked and dropped in {result.seconds:.0f}s",
    )
