"""The backup pipeline against the plain tools, side by side in one run.

Usage (as root, with Debian's postgresql-15 and age installed):
    python bench/backup.py [--size-mb 1024] [--repeat 1] [--json FILE] [--keep-data DIR]

Starts a throwaway PostgreSQL 15 (initdb as OS user postgres; socket only, trust), fills a
database to --size-mb (pg_database_size), then times, for each of --repeat rounds:

    floor   pg_dump -Fc > /dev/null
    age     pg_dump -Fc | age -r KEY > file            (Debian's age)
    opskit  the backup pipeline: pg_dump -Fc -> age encryption + SHA-256 -> file, tee'd
            into pg_restore --list, manifest, read-back checks, rotation

and reports wall time (best of the rounds) and peak RSS per process (VmHWM): the
pipeline's own Python process, Debian's age, pg_dump. Goals: the pipeline within 1.1x of
the floor's time and under 64 MB peak RSS whatever the size. Prints a table, then one JSON
document; it never fails on a figure, only when something does not run.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB = "bench"
MiB = 1 << 20
GOAL_RATIO = 1.1
GOAL_RESTORE_S = 300
GOAL_RSS_MB = 64

# Run in a child process so its peak RSS is the pipeline's alone.
OURS = r"""
import json, resource, sys, time
from pathlib import Path
from opskit.backup import pipeline
from opskit.backup.commands import PgConn
sock, port, out, recipient, bin_dir = sys.argv[1:6]
spec = pipeline.BackupSpec(environment="production", database="bench", owner="postgres",
    conn=PgConn(user="postgres", host=sock, port=int(port), bin_dir=bin_dir),
    recipient=recipient, backup_dir=Path(out), keep=1)
t0 = time.monotonic()
result = pipeline.run_backup(spec, report=lambda _line: None)
print(json.dumps({"seconds": time.monotonic() - t0,
                  "bytes": (result.path / "database.dump.age").stat().st_size,
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


class PeakRss:
    """The peak RSS of one process (VmHWM), sampled from /proc while it runs.

    wait4's ru_maxrss would count the forking parent's memory (this Python) for children
    started from here; VmHWM belongs to the program's own address space after exec.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(interval)

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


class Postgres:
    """A throwaway PostgreSQL 15 on a socket in a fresh directory, run as OS user postgres."""

    def __init__(self) -> None:
        self.user = pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="aiia-bench-pg-"))
        os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data = self.root / "data"
        self.sock = str(self.root)
        self.port = 5432

    def _as_pg(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, user="postgres", cwd=self.root, check=True,
                              capture_output=True, text=True, **kwargs)  # fmt: skip

    def start(self) -> Postgres:
        self._as_pg([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                     "postgres", "--no-sync"])  # fmt: skip
        self._as_pg([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l",
                     str(self.root / "log"), "-o",
                     f"-c listen_addresses='' -c unix_socket_directories={self.sock} "
                     f"-c port={self.port} -c fsync=off -c max_wal_size=4GB",
                     "start"])  # fmt: skip
        return self

    def psql(self, sql: str, db: str = "postgres") -> str:
        return self._as_pg([str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                            "-h", self.sock, "-p", str(self.port), "-d", db],
                           input=sql).stdout.strip()  # fmt: skip

    def stop(self) -> None:
        subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
                       user="postgres", capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def fill(pg: Postgres, size_mb: int) -> int:
    """A database like an application's: text, numbers, timestamps, json, some random bytes."""
    pg.psql(f"CREATE DATABASE {DB}")
    pg.psql(
        "CREATE TABLE events (id bigserial PRIMARY KEY, account int, kind text, note text, "
        "payload bytea, data jsonb, at timestamptz)",
        DB,
    )
    batch = 200_000
    while int(pg.psql(f"SELECT pg_database_size('{DB}')")) < size_mb * MiB:
        pg.psql(
            f"INSERT INTO events (account, kind, note, payload, data, at) "  # noqa: S608
            f"SELECT (random() * 10000)::int, 'kind' || (i % 17), "
            f"'note ' || md5(i::text) || ' ' || repeat('lorem ipsum ', (i % 5)), "
            f"decode(md5(random()::text), 'hex'), "
            f"jsonb_build_object('i', i, 'ok', i % 2 = 0), now() - i * interval '1 s' "
            f"FROM generate_series(1, {batch}) AS i",
            DB,
        )
    pg.psql("VACUUM ANALYZE events", DB)
    return int(pg.psql(f"SELECT pg_database_size('{DB}')"))


def pg_dump_argv(pg: Postgres) -> list[str]:
    return [str(PG_BIN / "pg_dump"), "-Fc", "-h", pg.sock, "-p", str(pg.port), "-U", "postgres",
            "-d", DB]  # fmt: skip


def run_floor(pg: Postgres) -> dict:
    t0 = time.monotonic()
    dump = subprocess.Popen(pg_dump_argv(pg), stdout=subprocess.DEVNULL)
    rss = PeakRss(dump.pid)
    code = dump.wait()
    return {"seconds": time.monotonic() - t0, "ok": code == 0, "pg_dump_rss_mb": rss.stop()}


def run_age(pg: Postgres, recipient: str, out: Path) -> dict:
    t0 = time.monotonic()
    with open(out, "wb") as f:
        dump = subprocess.Popen(pg_dump_argv(pg), stdout=subprocess.PIPE)
        enc = subprocess.Popen(["age", "-r", recipient], stdin=dump.stdout, stdout=f)
        dump_rss, age_rss = PeakRss(dump.pid), PeakRss(enc.pid)
        assert dump.stdout is not None
        dump.stdout.close()
        age_code, dump_code = enc.wait(), dump.wait()
    return {"seconds": time.monotonic() - t0, "ok": age_code == 0 and dump_code == 0,
            "age_rss_mb": age_rss.stop(), "pg_dump_rss_mb": dump_rss.stop(),
            "bytes": out.stat().st_size}  # fmt: skip


def run_script(script: str, args: list[str], what: str) -> tuple[float, float, dict]:
    """`script` in a child Python that imports the toolkit and prints JSON: its wall time,
    its peak RSS in MiB sampled from here, and what it printed."""
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    rss = PeakRss(proc.pid)
    stdout, stderr = proc.communicate()
    seconds = time.monotonic() - t0
    sampled = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{stderr.decode()[-3000:]}")
    return seconds, sampled, json.loads(stdout)


def run_ours(pg: Postgres, recipient: str, out: Path) -> dict:
    seconds, sampled, inner = run_script(
        OURS, [pg.sock, str(pg.port), str(out), recipient, str(PG_BIN)], "the pipeline"
    )
    # the larger of the two readings: getrusage inside (exact) and VmHWM sampled from here
    peak = max(inner["self_maxrss_kb"] / 1024, sampled)
    return {"seconds": seconds, "ok": True, "python_rss_mb": peak,
            "bytes": inner["bytes"],
            "pipeline_seconds": inner["seconds"]}  # fmt: skip


# The restore of one set (the RTO): decryption, pg_restore into a scratch database and its
# checks, as `inv db-restore --verify-only` runs it; the swap that follows is two renames.
RESTORE = r"""
import json, resource, sys, time
from pathlib import Path
from opskit.backup import restore
from opskit.backup.commands import PgConn
sock, port, set_dir, key_file, bin_dir = sys.argv[1:6]
spec = restore.RestoreSpec(environment="production", database="bench", owner="postgres",
    conn=PgConn(user="postgres", host=sock, port=int(port), bin_dir=bin_dir),
    identities=restore.read_identities(Path(key_file).read_text(), key_file))
t0 = time.monotonic()
result = restore.run_restore(set_dir, spec, verify_only=True, report=lambda _line: None)
print(json.dumps({"seconds": time.monotonic() - t0, "tables": result.tables,
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run_restore(pg: Postgres, set_dir: Path, key: Path) -> dict:
    seconds, sampled, inner = run_script(
        RESTORE, [pg.sock, str(pg.port), str(set_dir), str(key), str(PG_BIN)], "the restore"
    )
    return {"seconds": seconds, "ok": True, "tables": inner["tables"],
            "python_rss_mb": max(inner["self_maxrss_kb"] / 1024, sampled)}  # fmt: skip


def age_keypair(directory: Path) -> str:
    key = directory / "bench.key"
    proc = subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return proc.stderr.strip().rsplit(" ", 1)[-1]


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def table(report: dict) -> str:
    floor = report["results"]["floor"]["seconds"]
    rows = [("variant", "wall s", "x floor", "peak RSS (MiB)", "pg_dump RSS", "output MiB")]
    names = {"floor": "pg_dump -Fc > /dev/null", "age": "pg_dump -Fc | age -r KEY > file",
             "opskit": "opskit backup pipeline"}  # fmt: skip
    for key, label in names.items():
        r = report["results"][key]
        rss = {"floor": "-", "age": f"age {r.get('age_rss_mb', 0):.1f}",
               "opskit": f"python {r.get('python_rss_mb', 0):.1f}"}[key]  # fmt: skip
        out = f"{r['bytes'] / MiB:.1f}" if "bytes" in r else "-"
        dump_rss = f"{r['pg_dump_rss_mb']:.1f}" if "pg_dump_rss_mb" in r else "(same)"
        rows.append((label, f"{r['seconds']:.2f}", f"{r['seconds'] / floor:.2f}", rss,
                     dump_rss, out))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]  # fmt: skip
    goals = report["goals"]
    lines.append(
        f"database {report['database_mb']:.0f} MiB, best of {report['repeat']}; goals: "
        f"within {GOAL_RATIO}x of the floor: {goals['ratio']:.2f}x "
        f"({'met' if goals['ratio_met'] else 'NOT met'}), under {GOAL_RSS_MB} MiB RSS: "
        f"{goals['rss_mb']:.1f} MiB ({'met' if goals['rss_met'] else 'NOT met'})"
    )
    restored = report.get("restore")
    if restored:
        lines.append(
            f"restore of the first set (RTO: decrypt, pg_restore, checks): "
            f"{restored['seconds']:.1f} s against {GOAL_RESTORE_S} s, {restored['tables']} "
            f"table(s), python {restored['python_rss_mb']:.1f} MiB RSS"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="database size (default 1024)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the best counts")
    parser.add_argument("--json", type=Path, help="also write the JSON document here")
    parser.add_argument(
        "--no-restore", action="store_true", help="skip timing the restore of the first set"
    )
    args = parser.parse_args(argv)
    for tool in ("age", "age-keygen", str(PG_BIN / "pg_dump")):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: run scripts/ensure.sh packages")
    work = Path(tempfile.mkdtemp(prefix="aiia-bench-backup-"))
    pg = Postgres().start()
    try:
        t0 = time.monotonic()
        size = fill(pg, args.size_mb)
        fill_s = time.monotonic() - t0
        recipient = age_keypair(work)
        runs: dict[str, list[dict]] = {"floor": [], "age": [], "opskit": []}
        restored = None
        for n in range(args.repeat):
            runs["floor"].append(run_floor(pg))
            runs["age"].append(run_age(pg, recipient, work / f"age-{n}.age"))
            (work / f"age-{n}.age").unlink()
            runs["opskit"].append(run_ours(pg, recipient, work / f"sets-{n}"))
            if n == 0 and not args.no_restore:
                (set_dir,) = (work / f"sets-{n}").glob("db_*")
                restored = run_restore(pg, set_dir, work / "bench.key")
            shutil.rmtree(work / f"sets-{n}")
        results = {k: best(v) for k, v in runs.items()}
        ratio = results["opskit"]["seconds"] / results["floor"]["seconds"]
        rss = max(r["python_rss_mb"] for r in runs["opskit"])
        report = {
            "benchmark": "backup",
            "database_mb": size / MiB,
            "fill_seconds": fill_s,
            "repeat": args.repeat,
            "results": results,
            "runs": runs,
            # the RTO: decrypt + pg_restore + checks of the first set (None: --no-restore)
            "restore": restored,
            "goals": {
                "ratio": ratio,
                "ratio_goal": GOAL_RATIO,
                "ratio_met": ratio <= GOAL_RATIO,
                "rss_mb": rss,
                "rss_goal_mb": GOAL_RSS_MB,
                "rss_met": rss <= GOAL_RSS_MB,
            },  # fmt: skip
        }
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(table(report))
    document = json.dumps(report, indent=2)
    print(document)
    if args.json:
        args.json.write_text(document + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
