"""History in SQLite: minute samples for 48 h, hourly rollups for 30 days, uptime for 90.

One run writes in one transaction (all or nothing: a run killed mid-way leaves the
previous state). The state between runs (alert states, the access log's position, the
previous CPU counters) is a JSON value per key in the same database, written in the
same transaction. A database that cannot be opened or fails SQLite's quick check is
moved aside (`status.db.corrupt-<time>`) and a fresh one started, with a note for the
page: the job never stops on it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

MINUTES_KEPT_S = 48 * 3600
HOURS_KEPT_S = 30 * 86400
DAYS_KEPT_S = 90 * 86400

SAMPLE_COLUMNS = (
    "cpu", "mem_mb", "swap_mb", "disk_pct", "load1",
    "requests", "s4xx", "s5xx", "s429", "p50_ms", "p95_ms",
)  # fmt: skip

BOX_COLUMNS = SAMPLE_COLUMNS[:5]

_REAL = ", ".join(c + " REAL" for c in SAMPLE_COLUMNS)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (ts INTEGER PRIMARY KEY, {_REAL});
CREATE TABLE IF NOT EXISTS hourly (ts INTEGER PRIMARY KEY, {_REAL}, cpu_max REAL, mem_max REAL);
CREATE TABLE IF NOT EXISTS uptime
    (ts INTEGER, env TEXT, ok INTEGER, ms REAL, PRIMARY KEY (ts, env));
CREATE TABLE IF NOT EXISTS uptime_daily
    (day INTEGER, env TEXT, ok INTEGER, total INTEGER, PRIMARY KEY (day, env));
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT);
"""


def _open(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    # 512 KiB of page cache (SQLite's default is 2 MiB): a run reads a few thousand rows
    conn.execute("PRAGMA cache_size=-512")
    row = conn.execute("PRAGMA quick_check").fetchone()
    if not row or row[0] != "ok":
        conn.close()
        raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
    conn.executescript(SCHEMA)
    return conn


class History:
    def __init__(self, path: Path, now: float | None = None) -> None:
        self.path = Path(path)
        self.note = ""
        try:
            self.conn = _open(self.path)
        except sqlite3.DatabaseError as exc:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time()))
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            self.path.replace(aside)
            for extra in ("-journal", "-wal", "-shm"):
                Path(str(self.path) + extra).unlink(missing_ok=True)
            self.conn = _open(self.path)
            self.note = (
                f"the history database could not be read ({exc}); it was moved to "
                f"{aside.name} and a fresh one started at "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(now or time.time()))}"
            )
            self.set_state({"note": self.note})
        else:
            self.note = self.get("note") or ""

    def close(self) -> None:
        self.conn.close()

    # --- state -------------------------------------------------------------------------

    def get(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_state(self, values: Mapping[str, object]) -> None:
        with self.transaction():
            self._put(values)

    def _put(self, values: Mapping[str, object]) -> None:
        self.conn.executemany(
            "INSERT INTO state (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()],
        )

    def transaction(self):
        return _Transaction(self.conn)

    # --- one run's writes --------------------------------------------------------------

    def record(
        self,
        now: float,
        sample: Mapping[str, float | None],
        uptime: Mapping[str, tuple[bool, float]],
        state: Mapping[str, object],
        request_minutes: Mapping[int, Mapping[str, float | None]] | None = None,
    ) -> None:
        """The sample of this minute, request figures per minute, uptime samples, state."""
        minute = int(now) - int(now) % 60
        with self.transaction():
            box = [c for c in BOX_COLUMNS if c in sample]
            self.conn.execute(
                f"INSERT INTO samples (ts, {', '.join(box)}) VALUES (?{', ?' * len(box)}) "
                f"ON CONFLICT(ts) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in box)}",
                [minute, *(sample[c] for c in box)],
            )
            for ts, figures in (request_minutes or {}).items():
                self.conn.execute("INSERT OR IGNORE INTO samples (ts) VALUES (?)", (ts,))
                self.conn.execute(
                    "UPDATE samples SET requests = coalesce(requests, 0) + ?, "
                    "s4xx = coalesce(s4xx, 0) + ?, s5xx = coalesce(s5xx, 0) + ?, "
                    "s429 = coalesce(s429, 0) + ?, p50_ms = ?, p95_ms = ? WHERE ts = ?",
                    (figures["requests"], figures["s4xx"], figures["s5xx"], figures["s429"],
                     figures["p50_ms"], figures["p95_ms"], ts),
                )  # fmt: skip
            day = minute - minute % 86400
            for env, (ok, ms) in uptime.items():
                self.conn.execute(
                    "INSERT OR REPLACE INTO uptime (ts, env, ok, ms) VALUES (?, ?, ?, ?)",
                    (minute, env, int(ok), ms),
                )
                self.conn.execute(
                    "INSERT INTO uptime_daily (day, env, ok, total) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT(day, env) DO UPDATE SET ok = ok + excluded.ok, total = total + 1",
                    (day, env, int(ok)),
                )
            self._rollup(minute)
            self._put(state)
            self.conn.execute("DELETE FROM samples WHERE ts < ?", (minute - MINUTES_KEPT_S,))
            self.conn.execute("DELETE FROM uptime WHERE ts < ?", (minute - MINUTES_KEPT_S,))
            self.conn.execute("DELETE FROM hourly WHERE ts < ?", (minute - HOURS_KEPT_S,))
            self.conn.execute("DELETE FROM uptime_daily WHERE day < ?", (minute - DAYS_KEPT_S,))

    def _rollup(self, minute: int) -> None:
        """This hour's rollup from its minute samples (rewritten each run of the hour)."""
        hour = minute - minute % 3600
        cols = ", ".join(
            f"avg({c})"
            for c in SAMPLE_COLUMNS
            if c not in ("requests", "s4xx", "s5xx", "s429", "p95_ms")
        )
        self.conn.execute(
            "INSERT OR REPLACE INTO hourly (ts, cpu, mem_mb, swap_mb, disk_pct, load1, p50_ms, "
            "requests, s4xx, s5xx, s429, p95_ms, cpu_max, mem_max) "
            f"SELECT ?, {cols}, sum(requests), sum(s4xx), sum(s5xx), sum(s429), max(p95_ms), "
            "max(cpu), max(mem_mb) FROM samples WHERE ts >= ? AND ts < ?",
            (hour, hour, hour + 3600),
        )

    # --- reads for the page ------------------------------------------------------------

    def series(self, column: str, since: float) -> list[tuple[int, float | None]]:
        if column not in SAMPLE_COLUMNS:
            raise ValueError(column)
        return list(
            self.conn.execute(
                f"SELECT ts, {column} FROM samples WHERE ts >= ? ORDER BY ts", (since,)
            )
        )

    def hourly_series(self, column: str, since: float) -> list[tuple[int, float | None]]:
        if column not in (*SAMPLE_COLUMNS, "cpu_max", "mem_max"):
            raise ValueError(column)
        return list(
            self.conn.execute(
                f"SELECT ts, {column} FROM hourly WHERE ts >= ? ORDER BY ts", (since,)
            )
        )

    def minute(self, ts: int) -> dict[str, float | None] | None:
        row = self.conn.execute(
            f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE ts = ?", (ts,)
        ).fetchone()
        return dict(zip(SAMPLE_COLUMNS, row, strict=True)) if row else None

    def uptime_share(self, env: str, since: float, now: float) -> float | None:
        """Share of good samples since `since`: minute samples for 48 h, days beyond."""
        if now - since <= MINUTES_KEPT_S:
            row = self.conn.execute(
                "SELECT sum(ok), count(*) FROM uptime WHERE env = ? AND ts >= ?", (env, since)
            ).fetchone()
        else:
            row = self.conn.execute(
                "SELECT sum(ok), sum(total) FROM uptime_daily WHERE env = ? AND day >= ?",
                (env, since - since % 86400),
            ).fetchone()
        return row[0] / row[1] if row and row[1] else None

    def uptime_days(self, env: str, since: float) -> dict[int, float]:
        return {
            day: ok / total
            for day, ok, total in self.conn.execute(
                "SELECT day, ok, total FROM uptime_daily WHERE env = ? AND day >= ? ORDER BY day",
                (env, since),
            )
            if total
        }

    def uptime_envs(self) -> list[str]:
        return [
            r[0] for r in self.conn.execute("SELECT DISTINCT env FROM uptime_daily ORDER BY env")
        ]


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if kind else "COMMIT")
