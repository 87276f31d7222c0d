"""Which local backup sets to keep: a pure policy over what a directory listing shows.

A set is *good* when its directory has its final name (it was renamed from `.partial`
only after verification) and its manifest parses with every listed file present at its
listed size. A `.partial` directory is a backup that failed or crashed: removed, never
counted. A directory with a set's name but no readable manifest, or with missing or
resized files, is *damaged*: never counted as good, and never deleted either (it may be
an operator's hand-made copy); rotation reports it.

Rotation keeps the newest `keep` good sets of one environment and deletes older good
ones, and never deletes the last good set, whatever `keep` says.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from opskit.backup import commands, manifest

PARTIAL_SUFFIX = ".partial"
GOOD, PARTIAL, DAMAGED = "good", "partial", "damaged"


@dataclass(frozen=True)
class SetState:
    name: str  # directory name, with .partial when it has it
    env_short: str
    timestamp: dt.datetime
    state: str
    reason: str = ""


@dataclass(frozen=True)
class Plan:
    keep: tuple[SetState, ...]
    delete: tuple[SetState, ...]  # older good sets beyond `keep`
    remove_partial: tuple[SetState, ...]
    damaged: tuple[SetState, ...]

    @property
    def good_after(self) -> int:
        return len(self.keep)


def parse_name(name: str) -> tuple[str, dt.datetime, bool] | None:
    """(env short name, UTC time, is_partial) of a set directory name, or None."""
    partial = name.endswith(PARTIAL_SUFFIX)
    base = name.removesuffix(PARTIAL_SUFFIX)
    match = commands.SET_NAME_RE.match(base)
    if not match:
        return None
    try:
        ts = dt.datetime.strptime(match["ts"], commands.TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return match["env"], ts, partial


def plan(sets: Iterable[SetState], *, env_short: str, keep: int) -> Plan:
    """What to keep and delete among one environment's sets (the others are untouched)."""
    keep = max(1, keep)  # never delete the last good one, even if told to keep none
    mine = [s for s in sets if s.env_short == env_short]
    good = sorted((s for s in mine if s.state == GOOD), key=lambda s: s.timestamp, reverse=True)
    return Plan(
        keep=tuple(good[:keep]),
        delete=tuple(good[keep:]),
        remove_partial=tuple(s for s in mine if s.state == PARTIAL),
        damaged=tuple(s for s in mine if s.state == DAMAGED),
    )


def inspect(backup_dir: Path) -> list[SetState]:
    """The state of every set directory under `backup_dir` (sizes checked, not hashes)."""
    states = []
    if not backup_dir.is_dir():
        return states
    for path in sorted(backup_dir.iterdir()):
        parsed = parse_name(path.name) if path.is_dir() else None
        if parsed is None:
            continue
        env_short, ts, partial = parsed
        if partial:
            states.append(SetState(path.name, env_short, ts, PARTIAL, "never completed"))
            continue
        try:
            found = manifest.read(path)
        except manifest.ManifestError as exc:
            states.append(SetState(path.name, env_short, ts, DAMAGED, str(exc)))
            continue
        problems = manifest.check_files(path, found.files, hashes=False)
        if problems:
            reason = "; ".join(str(p) for p in problems)
            states.append(SetState(path.name, env_short, ts, DAMAGED, reason))
        else:
            states.append(SetState(path.name, env_short, ts, GOOD))
    return states


def good_sets(backup_dir: Path, env_short: str) -> list[str]:
    """Names of the good sets of one environment, newest first."""
    sets = [s for s in inspect(backup_dir) if s.env_short == env_short and s.state == GOOD]
    return [s.name for s in sorted(sets, key=lambda s: s.timestamp, reverse=True)]
