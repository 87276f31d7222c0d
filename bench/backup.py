"""The backup pipeline against the plain tools, side by side in one run.

Usage (as root, with Debian's postgresql-15 and age installed):
    python bench/backup.py [--size-mb 1024] [--repeat 1] [--json FILE] [--no-restore]
                           [--users 50 [--users-path /admin/login/] [--quiet-s 20]]

Starts a throwaway PostgreSQL 15 (initdb as OS user postgres; socket only, trust), fills a
database to --size-mb (pg_database_size), then times, for each of --repeat rounds:

    floor   pg_dump -Fc > /dev/null
    age     pg_dump -Fc | age -r KEY > file            (Debian's age; pg_dump at the
            pipeline's compression level, so both hold the same dump)
    opskit  the backup pipeline: pg_dump -Fc -> age encryption + SHA-256 -> file, tee'd
            into pg_restore --list, manifest, read-back checks, rotation

and reports wall time (best of the rounds) and peak RSS per process (VmHWM): the
pipeline's own Python process, Debian's age, pg_dump. Goals: the pipeline within 1.1x of
the floor's time and under 64 MB peak RSS whatever the size. Prints a table, then one JSON
document; it never fails on a figure, only when something does not run.

--users N also starts the tuned stack of bench/load.py (nginx with its rate limits,
gunicorn, PgBouncer, PostgreSQL, Redis; natively, on the same CPUs) and keeps N users on
--users-path through its 443 while everything above runs: each user one keep-alive TLS
connection, a request, then 0.5-1.5 s of think time. Their latency (p50/p95) and errors
are reported per phase: quiet (--quiet-s seconds with no backup running, the baseline),
then each variant and the restore, beside the guide's p95 < 200 ms. The stack's
PostgreSQL is not the one being dumped (on a server it is one and the same).
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
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import SITE, percentile  # noqa: E402

from opskit.backup.commands import DUMP_COMPRESSION  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DB = "bench"
MiB = 1 << 20
GOAL_RATIO = 1.1
GOAL_RESTORE_S = 300
GOAL_RSS_MB = 64
GOAL_USERS_P95_MS = 200.0

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


def pg_dump_argv(pg: Postgres, compress: int | None = None) -> list[str]:
    """pg_dump -Fc at its default compression (the floor) or at `compress`."""
    level = [] if compress is None else [f"--compress={compress}"]
    return [str(PG_BIN / "pg_dump"), "-Fc", *level, "-h", pg.sock, "-p", str(pg.port),
            "-U", "postgres", "-d", DB]  # fmt: skip


def run_floor(pg: Postgres) -> dict:
    t0 = time.monotonic()
    dump = subprocess.Popen(pg_dump_argv(pg), stdout=subprocess.DEVNULL)
    rss = PeakRss(dump.pid)
    code = dump.wait()
    return {"seconds": time.monotonic() - t0, "ok": code == 0, "pg_dump_rss_mb": rss.stop()}


def run_age(pg: Postgres, recipient: str, out: Path) -> dict:
    t0 = time.monotonic()
    with open(out, "wb") as f:
        dump = subprocess.Popen(pg_dump_argv(pg, DUMP_COMPRESSION), stdout=subprocess.PIPE)
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


# --- users of the site while the backup runs (--users) ---------------------------------


def window(answers: list[tuple[float, float, int | str]], start: float, end: float) -> dict:
    """The answers that started in [start, end): how many, p50/p95 latency in ms, errors
    (a status outside 2xx/3xx, or an exception's name) and their share in %.
    answers: (monotonic start, latency ms, status or exception name)."""
    inside = [(ms, status) for t, ms, status in answers if start <= t < end]
    latencies = [ms for ms, _ in inside]
    errors = sum(1 for _, status in inside if not (isinstance(status, int) and 200 <= status < 400))
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    return {
        "requests": len(inside),
        "seconds": round(end - start, 1),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p95_ms": None if p95 is None else round(p95, 1),
        "errors": errors,
        "error_pct": round(100 * errors / len(inside), 3) if inside else 0.0,
    }


class Users:
    """n users of one path through nginx, as browsers reach the site: TLS verified against
    the test CA with the site's name in SNI and Host, a keep-alive connection each (a new
    one after an error), a pause of 0.5-1.5 s between requests. Every answer is timed."""

    def __init__(self, nginx, path: str, n: int) -> None:
        self.nginx, self.path, self.n = nginx, path, n
        self.answers: list[tuple[float, float, int | str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, args=(i,), daemon=True)
                         for i in range(n)]  # fmt: skip

    def _connect(self):
        import http.client
        import socket
        import ssl

        context = ssl.create_default_context(cafile=str(self.nginx.ca_cert))
        sock = socket.create_connection((self.nginx.host, self.nginx.https_port), timeout=15)
        conn = http.client.HTTPConnection(self.nginx.host, self.nginx.https_port, timeout=15)
        conn.sock = context.wrap_socket(sock, server_hostname=SITE)
        return conn

    def _user(self, i: int) -> None:
        import random

        rnd = random.Random(i)
        self._stop.wait(rnd.uniform(0, 1.5))  # users arrive spread out
        conn = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = self._connect()
                conn.request("GET", self.path, headers={"Host": SITE})
                resp = conn.getresponse()
                resp.read()
                status: int | str = resp.status
            except OSError as exc:  # http.client's errors and timeouts are OSErrors too
                status = type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            except Exception as exc:  # noqa: BLE001 - a broken answer is an error, counted
                status = type(exc).__name__
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.answers.append((t0, 1000 * (time.monotonic() - t0), status))
            self._stop.wait(rnd.uniform(0.5, 1.5))
        if conn is not None:
            conn.close()

    def start(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def during(self, start: float, end: float) -> dict:
        with self._lock:
            answers = list(self.answers)
        return window(answers, start, end)


def timed(users: Users | None, run, *args) -> dict:
    """run(*args), with the users' figures over its span added when they are on."""
    start = time.monotonic()
    result = run(*args)
    if users is not None:
        result["users"] = users.during(start, time.monotonic())
    return result


def age_keypair(directory: Path) -> str:
    key = directory / "bench.key"
    proc = subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return proc.stderr.strip().rsplit(" ", 1)[-1]


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def _users_cells(r: dict) -> tuple[str, ...]:
    u = r.get("users")
    if u is None:
        return ()
    p95 = "-" if u["p95_ms"] is None else f"{u['p95_ms']:.0f}"
    return (str(u["requests"]), p95, f"{u['error_pct']:.2f}")


def table(report: dict) -> str:
    floor = report["results"]["floor"]["seconds"]
    with_users = report.get("users") is not None
    users_head = ("users' req", "users' p95 ms", "errors %") if with_users else ()
    rows = [("variant", "wall s", "x floor", "peak RSS (MiB)", "pg_dump RSS", "output MiB",
             *users_head)]  # fmt: skip
    if with_users:
        quiet = report["users"]["quiet"]
        rows.append(("no backup running (quiet)", f"{quiet['seconds']:.1f}", "-", "-", "-", "-",
                     *_users_cells({"users": quiet})))  # fmt: skip
    names = {"floor": "pg_dump -Fc > /dev/null", "age": "pg_dump -Fc | age -r KEY > file",
             "opskit": "opskit backup pipeline"}  # fmt: skip
    for key, label in names.items():
        r = report["results"][key]
        rss = {"floor": "-", "age": f"age {r.get('age_rss_mb', 0):.1f}",
               "opskit": f"python {r.get('python_rss_mb', 0):.1f}"}[key]  # fmt: skip
        out = f"{r['bytes'] / MiB:.1f}" if "bytes" in r else "-"
        dump_rss = f"{r['pg_dump_rss_mb']:.1f}" if "pg_dump_rss_mb" in r else "(same)"
        rows.append((label, f"{r['seconds']:.2f}", f"{r['seconds'] / floor:.2f}", rss,
                     dump_rss, out, *_users_cells(r)))  # fmt: skip
    restored = report.get("restore")
    if restored and with_users:
        rows.append(("restore (RTO)", f"{restored['seconds']:.2f}", "-",
                     f"python {restored['python_rss_mb']:.1f}", "-", "-",
                     *_users_cells(restored)))  # fmt: skip
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
    if restored:
        lines.append(
            f"restore of the first set (RTO: decrypt, pg_restore, checks): "
            f"{restored['seconds']:.1f} s against {GOAL_RESTORE_S} s, {restored['tables']} "
            f"table(s), python {restored['python_rss_mb']:.1f} MiB RSS"
        )
    if with_users:
        u = report["users"]
        lines.append(
            f"users: {u['count']} on {u['path']} through the tuned stack's nginx (TLS, "
            f"keep-alive, 0.5-1.5 s think time) on the same CPUs; their p95 per phase beside "
            f"the guide's < {GOAL_USERS_P95_MS:g} ms (each row one run, the fastest of the rounds; "
            f"every run's in the JSON)"
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
    parser.add_argument(
        "--users", type=int, default=0,
        help="users on the tuned stack meanwhile (0: none; the guide's figure is 50)",
    )  # fmt: skip
    parser.add_argument("--users-path", default="/admin/login/", help="what they load")
    parser.add_argument(
        "--quiet-s", type=float, default=20, help="the users' baseline with no backup running"
    )
    args = parser.parse_args(argv)
    for tool in ("age", "age-keygen", str(PG_BIN / "pg_dump")):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: run scripts/ensure.sh packages")
    work = Path(tempfile.mkdtemp(prefix="aiia-bench-backup-"))
    pg = Postgres().start()
    stack = ExitStack()
    users: Users | None = None
    try:
        t0 = time.monotonic()
        size = fill(pg, args.size_mb)
        fill_s = time.monotonic() - t0
        recipient = age_keypair(work)
        quiet = None
        if args.users > 0:
            from _servers import running_configs

            (work / "stack").mkdir()
            config = stack.enter_context(running_configs(["tuned"], work / "stack"))["tuned"]
            users = Users(config.nginx, args.users_path, args.users).start()
            stack.callback(users.stop)
            time.sleep(3)  # every user has arrived
            start = time.monotonic()
            time.sleep(args.quiet_s)
            quiet = users.during(start, time.monotonic())
        runs: dict[str, list[dict]] = {"floor": [], "age": [], "opskit": []}
        restored = None
        for n in range(args.repeat):
            runs["floor"].append(timed(users, run_floor, pg))
            runs["age"].append(timed(users, run_age, pg, recipient, work / f"age-{n}.age"))
            (work / f"age-{n}.age").unlink()
            runs["opskit"].append(timed(users, run_ours, pg, recipient, work / f"sets-{n}"))
            if n == 0 and not args.no_restore:
                (set_dir,) = (work / f"sets-{n}").glob("db_*")
                restored = timed(users, run_restore, pg, set_dir, work / "bench.key")
            shutil.rmtree(work / f"sets-{n}")
        # with --users, each run carries its users' figures: a row is one run, all of it
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
            "users": (
                {
                    "count": args.users,
                    "path": args.users_path,
                    "quiet": quiet,
                    "goal_p95_ms": GOAL_USERS_P95_MS,
                }
                if users is not None
                else None
            ),
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
        stack.close()
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
