"""nginx's access log, read incrementally: only the lines written since the last run.

The position is the file's inode and a byte offset, saved by the caller (GoAccess's
way). A rotation (the file renamed to `access.log.1`, a new `access.log` opened) is seen
as a new inode: the rest of the old file is read from `access.log.1` when it is the
saved inode, then the new file from its start. A file shorter than the saved offset was
truncated: read from its start. Only complete lines are consumed.

Lines are nginx's `aiia_json` format (nginx/README.md). The collector's own probes
(user agent `aiia-status/`) are left out of the figures.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

OWN_AGENT = "aiia-status/"
# read at most this much per run (a backlog after a long stop is caught up over runs)
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Position:
    inode: int = 0
    offset: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"inode": self.inode, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: dict | None) -> Position:
        data = data or {}
        return cls(int(data.get("inode", 0)), int(data.get("offset", 0)))


def _read_from(path: Path, offset: int, budget: int) -> tuple[list[bytes], int]:
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(budget)
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], offset
    return chunk[: end + 1].splitlines(), offset + end + 1


def read_new(path: Path, pos: Position, max_bytes: int = MAX_BYTES) -> tuple[list[bytes], Position]:
    """The complete lines written since `pos`, and the position after them."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return [], pos
    lines: list[bytes] = []
    if pos.inode and st.st_ino != pos.inode:
        rotated = path.with_name(path.name + ".1")
        try:
            if rotated.stat().st_ino == pos.inode:
                lines, _ = _read_from(rotated, pos.offset, max_bytes)
        except FileNotFoundError:
            pass
        pos = Position(st.st_ino, 0)
    elif st.st_size < pos.offset:
        pos = Position(st.st_ino, 0)
    new, offset = _read_from(path, pos.offset, max(max_bytes - sum(map(len, lines)), 0))
    return lines + new, Position(st.st_ino, offset)


@dataclass
class Minute:
    """Figures of one minute of requests."""

    requests: int = 0
    s4xx: int = 0
    s5xx: int = 0
    s429: int = 0
    times_ms: list[float] = field(default_factory=list)

    def add(self, status: int, request_time_s: float) -> None:
        self.requests += 1
        if status == 429:
            self.s429 += 1
        if 400 <= status < 500:
            self.s4xx += 1
        elif status >= 500:
            self.s5xx += 1
        self.times_ms.append(request_time_s * 1000.0)

    def percentile(self, p: float) -> float | None:
        if not self.times_ms:
            return None
        ordered = sorted(self.times_ms)
        return ordered[max(0, math.ceil(p / 100.0 * len(ordered)) - 1)]


def minute_of(iso: str) -> int:
    """`2026-01-31T12:00:41+00:00` -> the epoch second its minute starts at."""
    ts = int(datetime.fromisoformat(iso).timestamp())
    return ts - ts % 60


def aggregate(lines: Iterable[bytes]) -> tuple[dict[int, Minute], int]:
    """Figures per minute, and how many lines could not be read."""
    minutes: dict[int, Minute] = {}
    bad = 0
    for raw in lines:
        try:
            row = json.loads(raw)
            if str(row.get("user_agent", "")).startswith(OWN_AGENT):
                continue
            minute = minute_of(row["time"])
            status = int(row["status"])
            took = float(row.get("request_time") or 0.0)
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        minutes.setdefault(minute, Minute()).add(status, took)
    return minutes, bad


def tail(path: Path, n: int = 50, block: int = 8192) -> list[str]:
    """The last `n` lines of a file without reading all of it."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            data = b""
            while end > 0 and data.count(b"\n") <= n:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    return [ln.decode("utf-8", "replace") for ln in data.splitlines()[-n:]]


def iter_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f
