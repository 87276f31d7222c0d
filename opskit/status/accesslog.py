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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

OWN_AGENT = "aiia-status/"
# read at most this much per run (a backlog after a long stop is caught up over runs)
MAX_BYTES = 256 * 1024 * 1024


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


BLOCK = 64 * 1024


def _feed(path: Path, offset: int, sink: Callable[[bytes], None], budget: int) -> int:
    """Hand every complete line from `offset` to `sink`, a block at a time; the new offset.

    Memory stays at one block whatever the backlog, and the pages read are dropped from
    the page cache afterwards (they are charged to this short job's memory otherwise).
    """
    start = offset
    with open(path, "rb") as f:
        f.seek(offset)
        rest = b""
        while budget > 0:
            chunk = f.read(min(BLOCK, budget))
            if not chunk:
                break
            budget -= len(chunk)
            data = rest + chunk
            end = data.rfind(b"\n")
            if end < 0:
                rest = data
                continue
            for line in data[:end].split(b"\n"):
                sink(line)
            offset += end + 1  # the file position of `rest`
            rest = data[end + 1 :]
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), start, offset - start, os.POSIX_FADV_DONTNEED)
    return offset


def follow(
    path: Path, pos: Position, sink: Callable[[bytes], None], max_bytes: int = MAX_BYTES
) -> Position:
    """Hand the complete lines written since `pos` to `sink`; the position after them."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return pos
    if pos.inode and st.st_ino != pos.inode:
        rotated = path.with_name(path.name + ".1")
        try:
            if rotated.stat().st_ino == pos.inode:
                done = _feed(rotated, pos.offset, sink, max_bytes)
                max_bytes -= done - pos.offset
        except FileNotFoundError:
            pass
        pos = Position(st.st_ino, 0)
    elif st.st_size < pos.offset:
        pos = Position(st.st_ino, 0)
    return Position(st.st_ino, _feed(path, pos.offset, sink, max(max_bytes, 0)))


def read_new(path: Path, pos: Position, max_bytes: int = MAX_BYTES) -> tuple[list[bytes], Position]:
    """The complete lines written since `pos`, as a list (small logs, tests)."""
    lines: list[bytes] = []
    return lines, follow(path, pos, lines.append, max_bytes)


@dataclass
class Minute:
    """Figures of one minute of requests; latencies as a count per whole millisecond
    (nginx logs them with millisecond resolution: the percentiles are exact)."""

    requests: int = 0
    s4xx: int = 0
    s5xx: int = 0
    s429: int = 0
    times_ms: Counter = field(default_factory=Counter)

    def add(self, status: int, request_time_s: float) -> None:
        self.requests += 1
        if status == 429:
            self.s429 += 1
        if 400 <= status < 500:
            self.s4xx += 1
        elif status >= 500:
            self.s5xx += 1
        self.times_ms[round(request_time_s * 1000.0)] += 1

    def percentile(self, p: float) -> float | None:
        total = sum(self.times_ms.values())
        if not total:
            return None
        rank = max(1, math.ceil(p / 100.0 * total))
        seen = 0
        for ms in sorted(self.times_ms):
            seen += self.times_ms[ms]
            if seen >= rank:
                return float(ms)
        return None


def minute_of(iso: str) -> int:
    """`2026-01-31T12:00:41+00:00` -> the epoch second its minute starts at."""
    ts = int(datetime.fromisoformat(iso).timestamp())
    return ts - ts % 60


class Aggregate:
    """Figures per minute, fed one line at a time."""

    def __init__(self) -> None:
        self.minutes: dict[int, Minute] = {}
        self.bad = 0
        self._minute_of: dict[str, int] = {}

    def add(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            row = json.loads(raw)
            if str(row.get("user_agent", "")).startswith(OWN_AGENT):
                return
            stamp = row["time"][:16]  # the minute: cached, thousands of lines share it
            minute = self._minute_of.get(stamp)
            if minute is None:
                minute = self._minute_of[stamp] = minute_of(row["time"])
            status = int(row["status"])
            took = float(row.get("request_time") or 0.0)
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        found = self.minutes.get(minute)
        if found is None:
            found = self.minutes[minute] = Minute()
        found.add(status, took)


def aggregate(lines: Iterable[bytes]) -> tuple[dict[int, Minute], int]:
    """Figures per minute, and how many lines could not be read."""
    agg = Aggregate()
    for raw in lines:
        agg.add(raw)
    return agg.minutes, agg.bad


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
