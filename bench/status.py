"""One run of the status collector with 30 days of history and a 300,000-line access log,
beside a bare `python3 -c pass` in the same container, in one run.

Usage (a Docker engine with the backup image, `docker compose build backup`; the server
stack up for real readings of containers, services and /health/):
    python bench/status.py [--lines 300000] [--days 30] [--image aiia/backup:latest]
                           [--nginx 127.0.0.1:443] [--json FILE]

Seeds a history database (minute samples for 48 h, hourly rollups for --days, daily
uptime for 90 days) and an nginx access log of --lines lines in the aiia_json format
spread over the last 50 minutes, then runs, each in a fresh container of the image with
the limits scripts/status.sh gives the job (48 MB, read-only root):

    baseline   python3 -c pass
    collector  python3 -m opskit.status run (reads the whole log: the worst case, a
               backlog; a minute's share of a busy day's log is a few thousand lines)

and reports each container's own cgroup peak (memory.max_usage_in_bytes, cgroup v1, or
memory.peak, v2: what the job costs the box at its peak, page cache it charged included)
and its CPU seconds (cpuacct.usage / cpu.stat), read inside the container as its last
step. Goal: the collector's peak under 20 MB. Prints a table, then one JSON document;
it never fails on a figure, only when something does not run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opskit.status.history import History  # noqa: E402

MiB = 1 << 20
GOAL_MB = 20.0
# read the container's own cgroup as its last step: its peak and CPU time so far
MEASURE = (
    "rc=$?; "
    "{ cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null "
    "|| cat /sys/fs/cgroup/memory.peak; } "
    '| sed "s/^/peak_bytes=/"; '
    "{ cat /sys/fs/cgroup/cpuacct/cpuacct.usage 2>/dev/null "
    "|| awk '$1 == \"usage_usec\" {print $2 * 1000}' /sys/fs/cgroup/cpu.stat; } "
    '| sed "s/^/cpu_ns=/"; exit $rc'
)


def seed_history(db: Path, days: int, now: float) -> None:
    hist = History(db, now)
    minute = int(now) - int(now) % 60
    rnd = random.Random(1)
    with hist.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO samples (ts, cpu, mem_mb, swap_mb, disk_pct, load1, requests,"
            " s4xx, s5xx, s429, p50_ms, p95_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(minute - i * 60, rnd.uniform(5, 60), rnd.uniform(300, 420), 10.0, 40.0, 0.4,
              rnd.randint(50, 500), 3, rnd.randint(0, 2), 0, 12.0, 80.0)
             for i in range(1, 48 * 60)],
        )  # fmt: skip
        hour = minute - minute % 3600
        conn.executemany(
            "INSERT OR REPLACE INTO hourly (ts, cpu, mem_mb, requests, s5xx, p95_ms, cpu_max,"
            " mem_max) VALUES (?,?,?,?,?,?,?,?)",
            [(hour - i * 3600, 20.0, 360.0, 12000, 30, 90.0, 70.0, 410.0)
             for i in range(1, days * 24)],
        )  # fmt: skip
        for env in ("production", "staging"):
            conn.executemany(
                "INSERT OR REPLACE INTO uptime (ts, env, ok, ms) VALUES (?,?,?,?)",
                [(minute - i * 60, env, 1, 5.0) for i in range(1, 48 * 60)],
            )
            day = minute - minute % 86400
            conn.executemany(
                "INSERT OR REPLACE INTO uptime_daily (day, env, ok, total) VALUES (?,?,?,?)",
                [(day - i * 86400, env, 1438, 1440) for i in range(1, 90)],
            )
    hist.close()


def write_log(path: Path, lines: int, now: float) -> None:
    rnd = random.Random(2)
    start = now - 50 * 60
    statuses = [200] * 90 + [404] * 4 + [302] * 3 + [500, 502, 429]
    with open(path, "w") as f:
        for i in range(lines):
            t = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start + i * 3000 / lines))
            row = {
                "time": t, "remote_addr": f"203.0.113.{i % 250}", "host": "eduaiia.com",
                "method": "GET", "uri": f"/api/notes/?page={i % 40}", "protocol": "HTTP/2.0",
                "status": rnd.choice(statuses), "bytes_sent": 1843,
                "request_time": round(rnd.expovariate(1 / 0.03), 3),
                "upstream_addr": "172.20.0.5:8000", "upstream_status": "200",
                "upstream_connect_time": "0.000", "upstream_response_time": "0.021",
                "referer": "", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
                "request_id": f"{i:032x}",
            }  # fmt: skip
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def run(image: str, work: Path, command: str, network: str, name: str) -> dict:
    argv = [
        "docker", "run", "--rm", "--name", name, "--network", network,
        "--memory", "48m", "--read-only", "--tmpfs", "/tmp:size=4m",
        "--security-opt", "no-new-privileges:true", "--cap-drop", "ALL",
        "--user", f"{os.getuid()}:10002",
        "--group-add", str(os.stat("/var/run/docker.sock").st_gid),
        "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", "/sys/fs/cgroup:/host/cgroup:ro",
        "-v", f"{ROOT}:/opt/aiia:ro", "-w", "/opt/aiia", "-e", "PYTHONPATH=/opt/aiia",
        "-e", "HOME=/tmp", "-v", f"{work}:/bench", image, "sh", "-c", f"{command}; {MEASURE}",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    values = dict(
        line.split("=", 1)
        for line in proc.stdout.splitlines()
        if line.startswith(("peak_", "cpu_"))
    )
    if proc.returncode != 0 or "peak_bytes" not in values:
        raise SystemExit(f"{command!r} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {
        "peak_mb": round(int(values["peak_bytes"]) / MiB, 1),
        "cpu_s": round(int(float(values["cpu_ns"])) / 1e9, 2),
        "wall_s": round(wall, 2),
        "log": proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else [],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--image", default="aiia/backup:latest")
    parser.add_argument("--network", default="host")
    parser.add_argument("--nginx", default="127.0.0.1:443", help="nginx's TLS port, HOST:PORT")
    parser.add_argument("--prefix", default="aiia_", help="the containers the collector reads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aiia-bench-status-") as tmp:
        work = Path(tmp)
        work.chmod(0o777)
        now = time.time()
        seed_history(work / "status.db", args.days, now)
        write_log(work / "access.log", args.lines, now)
        (work / "page").mkdir()
        for p in work.iterdir():
            p.chmod(0o777 if p.is_dir() else 0o666)
        log_mb = (work / "access.log").stat().st_size / MiB
        suffix = os.urandom(3).hex()
        baseline = run(
            args.image, work, "python3 -c pass", args.network, f"aiia_bench_base_{suffix}"
        )
        collector = run(
            args.image, work,
            "python3 -m opskit.status run --db /bench/status.db --page-dir /bench/page"
            f" --access-log /bench/access.log --nginx {args.nginx} --cgroup-root /host/cgroup"
            f" --prefix {args.prefix}",
            args.network, f"aiia_bench_status_{suffix}",
        )  # fmt: skip
        page_kb = (work / "page" / "index.html").stat().st_size / 1024
    doc = {
        "lines": args.lines, "days": args.days, "log_mb": round(log_mb, 1),
        "page_kb": round(page_kb, 1), "goal_peak_mb": GOAL_MB,
        "baseline": baseline, "collector": collector,
        "collector_over_baseline_mb": round(collector["peak_mb"] - baseline["peak_mb"], 1),
    }  # fmt: skip
    print(f"status collector, one run: {args.lines} access log lines ({log_mb:.0f} MB), "
          f"{args.days} days of history; 48 MB limit, read-only root")  # fmt: skip
    print(f"{'run':<34} {'peak MB':>8} {'CPU s':>7} {'wall s':>7}")
    for label, r in (
        ("python3 -c pass (baseline)", baseline),
        ("python3 -m opskit.status run", collector),
    ):
        print(f"{label:<34} {r['peak_mb']:>8.1f} {r['cpu_s']:>7.2f} {r['wall_s']:>7.2f}")
    print(f"goal: the collector's peak under {GOAL_MB:g} MB: "
          f"{'met' if collector['peak_mb'] < GOAL_MB else 'NOT met'}")  # fmt: skip
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
