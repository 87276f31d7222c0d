"""The guide's performance targets, measured: the tuned stack against stock settings.

Usage (as root, with Debian's postgresql-15, pgbouncer, redis-server, nginx and wrk):
    python bench/load.py [--duration 20] [--connections 100] [--threads 2] [--timeout 10]
                         [--warmup 2] [--think-ms 0] [--configs tuned,tuned-nolimit,stock]
                         [--targets health,notes,admin,login] [--notes 50]
                         [--rounds 1] [--users 25,50,100]
                         [--json-out FILE] [--keep-raw DIR]

Starts every config at once, natively on loopback (bench/_servers.py):

    tuned          the project's configs: nginx (its rate limits on) -> gunicorn gthread
                   with app/gunicorn.conf.py (2 workers x 2 threads) -> PgBouncer
                   (transaction pooling) -> PostgreSQL; Redis cache and cached_db sessions
    tuned-nolimit  the same backend behind a bench-only nginx without limit_req
    stock          gunicorn's defaults (sync, --workers 2), Django's default database
                   options (a connection per request) straight to PostgreSQL with a
                   stock postgresql.conf, Django's default sessions (in the database)
                   and cache (in-process); the same nginx without limit_req

Then, target by target and config by config (so drift hits every config alike), wrk
keeps --connections connections busy for --duration seconds (flat out, or with a mean
pause of --think-ms between a connection's requests, like a user reading a page) against

    health  /health/      the app's probe of PostgreSQL and Redis, as the internet asks it
                          (the tuned nginx keeps that answer for a second; stock's does not)
    notes   /api/notes/   a page of 20 notes from PostgreSQL, anonymous
    admin   /admin/       the admin index as a logged-in superuser (the guide's target)
    login   /admin/login/ the login form, anonymous (not in a plain run)

--rounds N repeats every target and config N times, taking turns, and adds medians with
each config's requests/s and stack CPU per answer beside stock's. --users N,M,... is the
users mode: for each count, that many connections each pausing --think-ms (1000 ms unless
given) between requests, like people reading pages; it adds the knee, the most users at
which a target's p95 stays under 200 ms with no error. Before each run the bench waits
until the servers have finished what the previous run left in flight.

over TLS to 127.0.0.1 with the site's name in SNI and Host, as a browser would reach
eduaiia.com (the certificate is verified against the test CA once before the load; wrk
itself does not verify). The load comes from one address, so for nginx's per-address
rate limits it is 100 users behind one NAT: answers 429 are counted apart from errors.
The bench's nginx counts loopback as the internet (the shipped geo treats 127.0.0.1 as
the server's own probes, which get /health/'s details and skip its cache).

Per target and config: requests/s, p50/p95/p99 latency (wrk, client side), the error
rate (answers other than 2xx/3xx/429, plus socket errors and wrk's timeouts), the 429
share, the server-side p95 of the requests nginx did serve (its access log), the peak sum
of RSS and of PSS over every process of that config's servers (sampled from /proc), and
their CPU (% of all cores) next to the whole machine's. The guide's targets stand next to
the figures: p95 < 200 ms for /admin, errors < 0.1 %, 480 MB, CPU < 80 % peak. Prints a
table, then one JSON document (--json-out writes it to FILE as well). It never fails on
a figure, only when something does not run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SITE = "eduaiia.com"
TARGETS = {
    "health": "/health/",
    "notes": "/api/notes/",
    "admin": "/admin/",
    # the login form, anonymous (a session-less page: the guide's figure during backups)
    "login": "/admin/login/",
}
# what a plain run loads; --targets picks others
DEFAULT_TARGETS = ("health", "notes", "admin")
CONFIGS = ("tuned", "tuned-nolimit", "stock")
GOAL_P95_MS = 200.0
GOAL_ERROR_PCT = 0.1
GOAL_MEMORY_MB = 480.0
GOAL_CPU_PEAK_PCT = 80.0
PERCENTILES = (50, 75, 90, 95, 99, 99.9)
MIB_KB = 1024

# wrk connects to BENCH_CONNECT while the URL's host stays the TLS server name and the
# Host header; answers are counted by status (per thread, merged at the end); the
# figures come out as one JSON line after wrk's own report.
WRK_SCRIPT = r"""
local connect = os.getenv("BENCH_CONNECT") or "127.0.0.1"
local cookie = os.getenv("BENCH_COOKIE")
if cookie and cookie ~= "" then wrk.headers["Cookie"] = cookie end
-- a user's pause between two requests (uniform, mean BENCH_THINK_MS); 0: none
local think = tonumber(os.getenv("BENCH_THINK_MS") or "0")
if think > 0 then
   function delay() return think * (0.5 + math.random()) end
end

function wrk.resolve(host, service)
   wrk.addrs = wrk.lookup(connect, service)
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

statuses = {}
function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         merged[status] = (merged[status] or 0) + n
      end
   end
   local counts = {}
   for status, n in pairs(merged) do
      table.insert(counts, string.format('"%d": %d', status, n))
   end
   local pcts = {}
   for _, p in ipairs({50, 75, 90, 95, 99, 99.9}) do
      table.insert(pcts, string.format('"%s": %.0f', tostring(p), latency:percentile(p)))
   end
   local e = summary.errors
   io.write(string.format(
      'wrk-json: {"duration_us": %.0f, "requests": %.0f, "bytes": %.0f, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %.0f, "max": %.0f, "mean": %.1f, "stdev": %.1f, ' ..
      '"percentiles": {%s}}, "statuses": {%s}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      summary.requests > 0 and latency.min or 0, latency.max, latency.mean, latency.stdev,
      table.concat(pcts, ", "), table.concat(counts, ", ")))
end
"""


# --- pure: figures from wrk's output, nginx's access log and /proc ----------------------

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_time_ms(text: str) -> float:
    """Milliseconds in one of wrk's times: '850.00us', '12.34ms', '1.02s', '1.50m'."""
    match = re.fullmatch(r"\s*([0-9.]+)(us|ms|s|m|h)\s*", text)
    if not match:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(match.group(1)) * _TIME_UNITS_MS[match.group(2)]


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile (as wrk reports them): the smallest value with at
    least p % of all values at or below it. None for no values."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError(f"percentile out of range: {p}")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _pct_key(p: float) -> str:
    return f"p{p:g}"


def parse_wrk_output(text: str) -> dict:
    """wrk's report as data.

    The JSON line of our script (statuses, p95 and exact counts) wins where present;
    without it the text report still gives requests, duration, the latency distribution
    of --latency (p50/p75/p90/p99), socket errors and the non-2xx/3xx count.
    """
    result: dict = {
        "requests": None,
        "duration_s": None,
        "rps": None,
        "latency_ms": {},
        "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
        "non_2xx_3xx": 0,
        "statuses": None,
    }
    if m := re.search(r"^\s*(\d+) requests in ([0-9.]+\w+), ", text, re.MULTILINE):
        result["requests"] = int(m.group(1))
        result["duration_s"] = parse_time_ms(m.group(2)) / 1000
    if m := re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.MULTILINE):
        result["rps"] = float(m.group(1))
    time_ = r"([0-9.]+[a-z]+)"
    if m := re.search(rf"^\s+Latency\s+{time_}\s+{time_}\s+{time_}", text, re.MULTILINE):
        result["latency_ms"].update(
            mean=parse_time_ms(m.group(1)),
            stdev=parse_time_ms(m.group(2)),
            max=parse_time_ms(m.group(3)),
        )
    if "Latency Distribution" in text:
        dist = text.split("Latency Distribution", 1)[1]
        for p, value in re.findall(r"^\s+([0-9.]+)%\s+(\S+)\s*$", dist, re.MULTILINE):
            result["latency_ms"][_pct_key(float(p))] = parse_time_ms(value)
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        result["socket_errors"] = dict(
            zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True)
        )
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result["non_2xx_3xx"] = int(m.group(1))

    line = next((ln for ln in text.splitlines() if ln.startswith("wrk-json: ")), None)
    if line is not None:
        data = json.loads(line.removeprefix("wrk-json: "))
        lat = data["latency_us"]
        result["requests"] = int(data["requests"])
        result["duration_s"] = data["duration_us"] / 1e6
        result["rps"] = result["requests"] / result["duration_s"] if result["duration_s"] else 0
        result["bytes"] = int(data["bytes"])
        result["latency_ms"] = {
            "min": lat["min"] / 1000,
            "max": lat["max"] / 1000,
            "mean": lat["mean"] / 1000,
            "stdev": lat["stdev"] / 1000,
            **{_pct_key(float(p)): v / 1000 for p, v in lat["percentiles"].items()},
        }
        errors = data["errors"]
        result["socket_errors"] = {
            k: int(errors[k]) for k in ("connect", "read", "write", "timeout")
        }
        result["non_2xx_3xx"] = sum(n for s, n in data["statuses"].items() if int(s) >= 400)
        result["statuses"] = {int(s): int(n) for s, n in data["statuses"].items()}
    if result["requests"] is None:
        raise ValueError("no wrk report in the output")
    return result


def classify(
    requests: int,
    statuses: dict[int, int] | None,
    socket_errors: dict[str, int],
    non_2xx_3xx: int = 0,
) -> dict:
    """Answers sorted into served, rate-limited (429) and failed, with the rates in %.

    Failed: any other status outside 2xx/3xx, a socket error, or a wrk timeout (a
    request that waited longer than --timeout: wrk counts it when the late response comes,
    which it still counts among the requests, and for each check that finds a connection
    still waiting). The rates are over the attempts: completed requests plus the ones lost
    to connect, read or write errors. Without per-status counts, every non-2xx/3xx answer
    counts as failed.
    """
    if statuses is None:
        limited, http_failed = 0, non_2xx_3xx
    else:
        limited = statuses.get(429, 0)
        http_failed = sum(n for s, n in statuses.items() if not 200 <= s < 400 and s != 429)
    lost = socket_errors["connect"] + socket_errors["read"] + socket_errors["write"]
    failed = http_failed + lost + socket_errors["timeout"]
    attempts = requests + lost
    served = requests - limited - http_failed
    return {
        "attempts": attempts,
        "served": served,
        "limited_429": limited,
        "http_failed": http_failed,
        "socket_failed": lost + socket_errors["timeout"],
        "failed": failed,
        # wrk's timeouts can outnumber the requests (see above)
        "error_pct": min(100.0, 100 * failed / attempts) if attempts else 0.0,
        "limited_pct": 100 * limited / attempts if attempts else 0.0,
    }


def parse_access_log(lines: list[str]) -> list[tuple[int, float]]:
    """(status, request_time in ms) per JSON line of nginx's aiia_json access log."""
    out = []
    for raw in lines:
        raw = raw.strip()
        if not raw:
            continue
        entry = json.loads(raw)
        out.append((int(entry["status"]), float(entry["request_time"]) * 1000))
    return out


def access_summary(entries: list[tuple[int, float]]) -> dict:
    """What nginx saw: answers by status and the latency of those it served.

    Not served: 429 (its rate limit) and 499 (the client closed first: the requests
    still in flight when wrk stops).
    """
    served = [ms for status, ms in entries if status not in (429, 499)]
    return {
        "requests": len(entries),
        "statuses": {str(s): n for s, n in sorted(Counter(s for s, _ in entries).items())},
        "served_latency_ms": {_pct_key(p): percentile(served, p) for p in (50, 95, 99)},
    }


def parse_proc_stat(text: str) -> tuple[int, int, int]:
    """(parent pid, session id, CPU ticks of the process and its reaped children) from
    /proc/PID/stat."""
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    fields = text.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return int(fields[1]), int(fields[3]), utime + stime + cutime + cstime


def assign_servers(procs: dict[int, tuple[int, int]], leaders: dict[int, str]) -> dict[int, str]:
    """Which server each process belongs to. procs: pid -> (parent pid, session id);
    leaders: session id -> server. A process belongs to a server when it is in the server's
    session or descends from one that is (PostgreSQL's children each call setsid())."""
    owner = {pid: leaders[sid] for pid, (_, sid) in procs.items() if sid in leaders}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in procs.items():
            if pid not in owner and ppid in owner:
                owner[pid] = owner[ppid]
                changed = True
    return owner


def parse_cpu_line(text: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat's first line."""
    fields = [int(f) for f in text.split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already part of user time
    total = sum(fields[:8])
    return total - idle, total


def status_kb(text: str, key: str) -> int:
    """A kB figure ('VmRSS', 'Pss') from /proc/PID/status or smaps_rollup; 0 if absent."""
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


# --- sampling the stack's processes ------------------------------------------------------


class StackSampler:
    """Memory and CPU of every process of the servers, from /proc.

    Each server was started as a session leader: its processes are those in its session
    and their descendants (assign_servers), found afresh at every sample however often
    workers and backends are replaced. CPU counts each process's own time plus that of
    children it has reaped (a PostgreSQL backend per request, a recycled gunicorn worker),
    so none is lost between samples.
    """

    def __init__(self, leaders: dict[str, int], interval: float = 0.5) -> None:
        self.roles = {pid: role for role, pid in leaders.items()}
        self.interval = interval
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict:
        rss: Counter = Counter()
        pss: Counter = Counter()
        ticks_by: Counter = Counter()
        ticks = 0
        processes = 0
        tree: dict[int, tuple[int, int]] = {}
        cpu: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                ppid, session, used = parse_proc_stat(Path(entry.path, "stat").read_text())
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue  # gone while we looked
            tree[int(entry.name)] = (ppid, session)
            cpu[int(entry.name)] = used
        for pid, server in assign_servers(tree, self.roles).items():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            ticks += cpu[pid]
            ticks_by[server] += cpu[pid]
            processes += 1
            rss[server] += status_kb(status, "VmRSS")
            pss[server] += status_kb(rollup, "Pss")
        busy, total = parse_cpu_line(Path("/proc/stat").read_text())
        return {
            "t": time.monotonic(),
            "rss_kb": dict(rss),
            "pss_kb": dict(pss),
            "ticks": ticks,
            "ticks_by_server": dict(ticks_by),
            "processes": processes,
            "machine_busy": busy,
            "machine_total": total,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def start(self) -> StackSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.samples.append(self.sample())
        return summarize_samples(self.samples, os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1)


def summarize_samples(samples: list[dict], clk_tck: int, cpus: int) -> dict:
    """Peak memory sums (with the split by server at the peak) and CPU as % of all cores."""

    def peak(key: str) -> tuple[float, dict]:
        best = max(samples, key=lambda s: sum(s[key].values()))
        return (
            sum(best[key].values()) / MIB_KB,
            {r: round(kb / MIB_KB, 1) for r, kb in sorted(best[key].items())},
        )

    rss, rss_by = peak("rss_kb")
    pss, pss_by = peak("pss_kb")
    cpu = []
    for a, b in zip(samples, samples[1:], strict=False):
        seconds = b["t"] - a["t"]
        if seconds > 0:
            cpu.append(100 * (b["ticks"] - a["ticks"]) / clk_tck / seconds / cpus)
    span = samples[-1]["t"] - samples[0]["t"]
    total = samples[-1]["ticks"] - samples[0]["ticks"]
    first, last = samples[0], samples[-1]
    jiffies = last["machine_total"] - first["machine_total"]
    # per server from the first sample to the last (a server's processes come and go, but
    # each counts the children it reaped, so the difference is its CPU over the run)
    first_by, last_by = first["ticks_by_server"], last["ticks_by_server"]
    return {
        "cpu_s": round(total / clk_tck, 2),
        "cpu_s_by_server": {
            server: round((last_by[server] - first_by.get(server, 0)) / clk_tck, 2)
            for server in sorted(last_by)
        },
        "peak_rss_mb": round(rss, 1),
        "peak_rss_by_server_mb": rss_by,
        "peak_pss_mb": round(pss, 1),
        "peak_pss_by_server_mb": pss_by,
        "processes": max(s["processes"] for s in samples),
        "cpu_peak_pct": round(max(cpu), 1) if cpu else None,
        "cpu_avg_pct": round(100 * total / clk_tck / span / cpus, 1) if span > 0 else None,
        # everything on the machine, wrk included: how much CPU was left for the stack
        "machine_cpu_avg_pct": (
            round(100 * (last["machine_busy"] - first["machine_busy"]) / jiffies, 1)
            if jiffies > 0
            else None
        ),
        "samples": len(samples),
    }


# --- one measured run ------------------------------------------------------------------------


def wrk_argv(
    url: str, *, duration: int, connections: int, threads: int, timeout: int, script: Path | None
) -> list[str]:
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", f"{timeout}s", "--latency", "-H", f"Host: {SITE}"]  # fmt: skip
    if script is not None:
        argv += ["-s", str(script)]
    return [*argv, url]


def run_wrk(argv: list[str], env: dict, limit_s: float) -> tuple[str, float]:
    """wrk's output and the CPU seconds it used (it shares the machine with the stack)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=limit_s)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{proc.stderr}{proc.stdout}")
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc.stdout, used


def settle(services: dict, *, idle_pct: float = 5.0, limit_s: float = 60.0) -> float:
    """Wait until the servers use under `idle_pct` of one CPU over half a second (at most
    `limit_s`); the seconds waited."""
    sampler = StackSampler({role: svc.proc.pid for role, svc in services.items()})
    clk_tck = os.sysconf("SC_CLK_TCK")
    started = time.monotonic()
    before = sampler.sample()
    while time.monotonic() - started < limit_s:
        time.sleep(0.5)
        after = sampler.sample()
        busy = (after["ticks"] - before["ticks"]) / clk_tck / (after["t"] - before["t"])
        if busy * 100 < idle_pct:
            break
        before = after
    return round(time.monotonic() - started, 1)


def measure(config, target: str, args, script: Path, cookie: str, raw_dir: Path | None) -> dict:
    nginx = config.nginx
    url = f"https://{SITE}:{nginx.https_port}{TARGETS[target]}"
    env = {
        **os.environ,
        "BENCH_CONNECT": nginx.host,
        "BENCH_COOKIE": cookie,
        "BENCH_THINK_MS": f"{args.think_ms:g}",
    }
    common = {"connections": args.connections, "threads": args.threads, "timeout": args.timeout}
    if args.warmup > 0:
        run_wrk(
            wrk_argv(url, duration=args.warmup, script=script, **common),
            env,
            args.warmup + args.timeout + 60,
        )
    # requests wrk abandoned when it stopped (this run's warm-up, the run before on a shared
    # backend) are still being served: wait until they are, so no run pays for another
    settled_s = settle(config.services)
    # nginx's limit_req zones forget a client after a second of quiet
    time.sleep(1)
    log_offset = nginx.access_log.stat().st_size if nginx.access_log.exists() else 0
    leaders = {role: svc.proc.pid for role, svc in config.services.items()}
    sampler = StackSampler(leaders).start()
    started = time.monotonic()
    output, wrk_cpu = run_wrk(
        wrk_argv(url, duration=args.duration, script=script, **common),
        env,
        args.duration + args.timeout + 60,
    )
    wall = time.monotonic() - started
    stack = sampler.stop()
    with open(nginx.access_log, "rb") as f:
        f.seek(log_offset)
        access_lines = f.read().decode().splitlines()
    if raw_dir is not None:
        (raw_dir / f"{target}-{config.name}.wrk.txt").write_text(output)
        (raw_dir / f"{target}-{config.name}.access.jsonl").write_text("\n".join(access_lines))
    access = access_summary(parse_access_log(access_lines))
    wrk = parse_wrk_output(output)
    counts = classify(wrk["requests"], wrk["statuses"], wrk["socket_errors"], wrk["non_2xx_3xx"])
    return {
        "target": target,
        "path": TARGETS[target],
        "config": config.name,
        "requests": wrk["requests"],
        "duration_s": round(wrk["duration_s"], 2),
        "rps": round(wrk["rps"], 1),
        "served_rps": round(counts["served"] / wrk["duration_s"], 1),
        "latency_ms": {k: round(v, 2) for k, v in wrk["latency_ms"].items()},
        "statuses": {str(k): v for k, v in sorted((wrk["statuses"] or {}).items())},
        "socket_errors": wrk["socket_errors"],
        **counts,
        "nginx": access,
        "stack": stack,
        # what one answer cost the stack: nginx, gunicorn and the data layer together;
        # it drifts far less than requests/s when other work shares the machine
        "cpu_ms_per_served": (
            round(1000 * stack["cpu_s"] / counts["served"], 3) if counts["served"] else None
        ),
        "cpu_ms_per_served_by_server": (
            {
                server: round(1000 * seconds / counts["served"], 3)
                for server, seconds in stack["cpu_s_by_server"].items()
            }
            if counts["served"]
            else None
        ),
        "loadgen_cpu_pct": round(100 * wrk_cpu / wall / (os.cpu_count() or 1), 1),
        "settled_s": settled_s,
        "goals": goals(target, wrk["latency_ms"].get("p95"), counts["error_pct"], stack),
    }


def goals(target: str, p95: float | None, error_pct: float, stack: dict) -> dict:
    return {
        # the guide sets the latency target for /admin; the others are shown against it
        "p95_applies": target == "admin",
        "p95_met": p95 is not None and p95 < GOAL_P95_MS,
        "errors_met": error_pct < GOAL_ERROR_PCT,
        "memory_met": stack["peak_rss_mb"] <= GOAL_MEMORY_MB,
        "cpu_met": stack["cpu_peak_pct"] is not None and stack["cpu_peak_pct"] < GOAL_CPU_PEAK_PCT,
    }


# --- over rounds and user counts: medians, ratios to stock, the knee ---------------------------


def median(values: list[float]) -> float | None:
    """The middle value (the mean of the two middle ones for an even count); None if empty."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def summarize_runs(results: list[dict], baseline: str = "stock") -> list[dict]:
    """One row per (users, target, config): medians over the rounds, and each median
    beside the baseline config's at the same users and target (x baseline: requests/s
    over its requests/s, its CPU per answer over ours; above 1 is better)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r.get("users"), r["target"], r["config"]), []).append(r)
    rows = []
    for (users, target, config), runs in groups.items():
        rows.append(
            {
                "users": users,
                "target": target,
                "path": runs[0]["path"],
                "config": config,
                "runs": len(runs),
                "rps": median([r["rps"] for r in runs]),
                "served_rps": median([r["served_rps"] for r in runs]),
                "p95_ms": median([r["latency_ms"].get("p95") for r in runs]),
                "error_pct": median([r["error_pct"] for r in runs]),
                "max_error_pct": max(r["error_pct"] for r in runs),
                "cpu_ms_per_served": median([r.get("cpu_ms_per_served") for r in runs]),
            }
        )
    base = {(r["users"], r["target"]): r for r in rows if r["config"] == baseline}
    for row in rows:
        ref = base.get((row["users"], row["target"]))
        row["x_baseline_rps"] = (
            round(row["served_rps"] / ref["served_rps"], 2)
            if ref and ref["served_rps"] and row["served_rps"] is not None
            else None
        )
        row["x_baseline_cpu"] = (
            round(ref["cpu_ms_per_served"] / row["cpu_ms_per_served"], 2)
            if ref and ref["cpu_ms_per_served"] and row["cpu_ms_per_served"]
            else None
        )
    return rows


def knee(rows: list[dict], target: str, goal_p95_ms: float = GOAL_P95_MS) -> dict:
    """Per config: the most users at which `target`'s p95 stayed under the goal with no
    error in any round, counting up from the fewest users tested (None: not even those)."""
    out: dict[str, int | None] = {}
    for config in dict.fromkeys(r["config"] for r in rows if r["target"] == target):
        steps = sorted(
            (r for r in rows if r["target"] == target and r["config"] == config),
            key=lambda r: r["users"],
        )
        best = None
        for r in steps:
            if r["p95_ms"] is None or r["p95_ms"] >= goal_p95_ms or r["max_error_pct"] > 0:
                break
            best = r["users"]
        out[config] = best
    return out


# --- the report -------------------------------------------------------------------------------


def _mark(met: bool) -> str:
    return "ok" if met else "MISS"


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(report: dict) -> str:
    head = (
        "target",
        "config",
        "req/s",
        "served/s",
        "p50 ms",
        "p95 ms <200",
        "p99 ms",
        "nginx p95",
        "errors % <0.1",
        "429 %",
        "RSS MB <480",
        "PSS MB",
        "CPU % <80",
        "wrk CPU %",
        "box CPU %",
    )
    users_mode = any(r.get("users") for r in report["results"])
    if users_mode:
        head = ("users", *head)
    rows = [head]
    for r in report["results"]:
        lat, g, st = r["latency_ms"], r["goals"], r["stack"]
        rows.append(
            (
                *((str(r["users"]),) if users_mode else ()),
                r["path"],
                r["config"],
                _num(r["rps"]),
                _num(r["served_rps"]),
                _num(lat.get("p50")),
                f"{_num(lat.get('p95'))} {_mark(g['p95_met']) if g['p95_applies'] else ''}".strip(),
                _num(lat.get("p99")),
                _num(r["nginx"]["served_latency_ms"]["p95"], 0),
                f"{_num(r['error_pct'], 2)} {_mark(g['errors_met'])}",
                _num(r["limited_pct"]),
                f"{_num(st['peak_rss_mb'], 0)} {_mark(g['memory_met'])}",
                _num(st["peak_pss_mb"], 0),
                f"{_num(st['cpu_peak_pct'], 0)} {_mark(g['cpu_met'])}",
                _num(r["loadgen_cpu_pct"], 0),
                _num(st.get("machine_cpu_avg_pct"), 0),
            )
        )
    lines = _columns(rows, 2 + users_mode)
    run = report["run"]
    lines += [
        "",
        f"{run['connections']} connections, {run['threads']} wrk threads, {run['duration_s']:g} s "
        f"per run after {run['warmup_s']:g} s warm-up, wrk timeout {run['timeout_s']:g} s, "
        + (
            f"{run['think_ms']:g} ms mean pause between requests"
            if run["think_ms"]
            else "no pause between requests (saturation)"
        )
        + f"; {run['cpus']} CPUs shared by the stack and wrk"
        + (f"; {run['rounds']} rounds, configs taking turns." if run.get("rounds", 1) > 1 else "."),
        "p50/p95/p99: wrk, client side, every answer (429s included); nginx p95: its access "
        "log, served answers only (429s left out).",
        "errors: answers other than 2xx/3xx/429, socket errors, wrk timeouts (requests "
        "waiting longer than --timeout).",
        "RSS/PSS: peak sum over the config's server processes; CPU: theirs, % of all CPUs "
        "(peak of 0.5 s samples); wrk CPU: the load generator's; box CPU: the whole machine's, "
        "everything on it (average).",
        "",
    ]
    for name, cfg in report["configs"].items():
        idle = cfg["idle"]
        lines.append(
            f"{name}: {cfg['description']}; idle RSS {idle['peak_rss_mb']:.0f} MB, "
            f"PSS {idle['peak_pss_mb']:.0f} MB ({idle['processes']} processes)"
        )
    lines += ["", *summary_table(report)]
    return "\n".join(lines)


def _columns(rows: list[tuple], left: int) -> list[str]:
    """Rows as aligned text: the first `left` columns to the left, the rest to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i >= left else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def summary_table(report: dict) -> list[str]:
    """Medians over the rounds beside stock's, and in users mode the knee."""
    summary = report.get("summary") or summarize_runs(report["results"])
    users_mode = any(r["users"] for r in summary)
    head = (
        *(("users",) if users_mode else ()),
        "target",
        "config",
        "runs",
        "served/s",
        "p95 ms",
        "errors %",
        "CPU ms/answer",
        "x stock req/s",
        "x stock CPU",
    )
    rows = [head]
    for r in summary:
        rows.append(
            (
                *((str(r["users"]),) if users_mode else ()),
                r["path"],
                r["config"],
                str(r["runs"]),
                _num(r["served_rps"]),
                _num(r["p95_ms"]),
                _num(r["max_error_pct"], 2),
                _num(r["cpu_ms_per_served"], 2),
                _num(r["x_baseline_rps"], 2),
                _num(r["x_baseline_cpu"], 2),
            )
        )
    lines = [
        "Medians over the rounds (x stock: above 1 is better than stock; CPU per answer "
        "is the stack's, nginx to PostgreSQL):",
        *_columns(rows, 2 + users_mode),
    ]
    for target, knees in report.get("knee", {}).items():
        lines += [
            "",
            f"Knee for {TARGETS[target]}: the most users (think time "
            f"{report['run']['think_ms']:g} ms) with p95 < {GOAL_P95_MS:g} ms and no error:",
            *(f"  {config}: {'-' if n is None else n}" for config, n in knees.items()),
        ]
    return lines


# --- running it ----------------------------------------------------------------------------


def https_get(nginx, path: str, cookie: str = "") -> tuple[int, bytes]:
    """One request the way a browser reaches the site: SNI and Host eduaiia.com, the
    certificate verified against the test CA."""
    context = ssl.create_default_context(cafile=str(nginx.ca_cert))
    sock = socket.create_connection((nginx.host, nginx.https_port), timeout=15)
    with context.wrap_socket(sock, server_hostname=SITE) as tls:
        conn = http.client.HTTPConnection(nginx.host, nginx.https_port, timeout=15)
        conn.sock = tls
        headers = {"Host": SITE, **({"Cookie": cookie} if cookie else {})}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()


def preflight(config, cookie: str, targets: list[str]) -> None:
    """Each target answers 200 through this config's nginx before any load is sent."""
    for target in targets:
        # logged in for the admin index only, as the load itself (a session would turn
        # the login form into a redirect)
        status, body = https_get(config.nginx, TARGETS[target], cookie if target == "admin" else "")
        if status != 200 or (target == "admin" and b"Site administration" not in body):
            raise SystemExit(
                f"{config.name}: {TARGETS[target]} answered {status} before the "
                f"load:\n{body[:500].decode(errors='replace')}"
            )


def session_cookie(backend) -> str:
    """Log the superuser in through the admin's form; the Cookie header for its session."""
    from tests.harness.django_app import Browser

    browser = Browser(backend.app, SITE)
    browser.login(*backend.login)
    return f"sessionid={browser.cookies['sessionid']}"


def _counts(value: str) -> list[int]:
    try:
        counts = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("give whole numbers of users, e.g. 25,50,100")
    return counts


def _csv(value: str, allowed) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # wrk takes whole seconds for its duration and timeout
    parser.add_argument("--duration", type=int, default=20, help="seconds per run (20)")
    parser.add_argument("--connections", type=int, default=100, help="concurrent (100)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--timeout", type=int, default=10, help="a slower response counts as an error (10 s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="unmeasured seconds first (2; 0: none)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0,
        help="mean pause per connection between requests (0: flat out)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per target and config, taking turns (1)"
    )
    parser.add_argument(
        "--users",
        type=_counts,
        help="users mode: comma-separated user counts (e.g. 25,50,100), each a connection "
        "pausing --think-ms between requests (1000 unless given); prints the knee",
    )
    parser.add_argument("--configs", type=lambda v: _csv(v, CONFIGS), default=list(CONFIGS))
    parser.add_argument("--targets", type=lambda v: _csv(v, TARGETS), default=list(DEFAULT_TARGETS))
    parser.add_argument("--notes", type=int, default=50, help="notes seeded per database (50)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument("--keep-raw", type=Path, help="keep wrk's raw outputs in this folder")
    args = parser.parse_args(argv)
    if (
        min(args.duration, args.timeout, args.connections, args.threads, args.rounds) < 1
        or args.warmup < 0
    ):
        parser.error(
            "--duration, --timeout, --connections, --threads and --rounds must be at least 1"
        )
    if min(args.users or [args.connections]) < args.threads:
        parser.error("wrk needs at least one connection (user) per thread: lower --threads")
    if args.users and not args.think_ms:
        args.think_ms = 1000.0
    # a stopped run (CI cancelling, timeout(1)) still stops every server it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    sys.path.insert(0, str(ROOT))
    from _servers import running_configs

    from tests.harness.core import require_binary

    require_binary("wrk", "packages")
    if args.keep_raw:
        args.keep_raw.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="aiia-bench-load-"))
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    try:
        with running_configs(args.configs, workdir, notes=args.notes) as configs:
            cookies = {}
            for config in configs.values():
                backend = config.backend
                if backend.name not in cookies:
                    cookies[backend.name] = session_cookie(backend)
                preflight(config, cookies[backend.name], args.targets)
            summary = {}
            for name, config in configs.items():
                leaders = {role: svc.proc.pid for role, svc in config.services.items()}
                sampler = StackSampler(leaders)
                idle = summarize_samples([sampler.sample()], os.sysconf("SC_CLK_TCK"), 1)
                summary[name] = {"description": config.description, "idle": idle}
            results = []
            for users in args.users or [None]:
                step = argparse.Namespace(
                    **{**vars(args), "connections": users or args.connections}
                )
                for round_ in range(1, args.rounds + 1):
                    for target in args.targets:
                        for name, config in configs.items():
                            cookie = cookies[config.backend.name] if target == "admin" else ""
                            print(
                                f"load: {TARGETS[target]} on {name} for {args.duration:g} s"
                                + (f", {users} users" if users else "")
                                + (f", round {round_}" if args.rounds > 1 else ""),
                                file=sys.stderr,
                                flush=True,
                            )
                            raw = (
                                args.keep_raw / f"u{users or step.connections}-r{round_}"
                                if args.keep_raw
                                else None
                            )
                            if raw is not None:
                                raw.mkdir(parents=True, exist_ok=True)
                            result = measure(config, target, step, script, cookie, raw)
                            results.append({"round": round_, "users": users, **result})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "load",
        "run": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "timeout_s": args.timeout,
            "think_ms": args.think_ms,
            "rounds": args.rounds,
            "users": args.users,
            "cpus": os.cpu_count(),
            "site": SITE,
            "notes_seeded": args.notes,
        },
        "goals": {
            "p95_ms": GOAL_P95_MS,
            "p95_target": TARGETS["admin"],
            "error_pct": GOAL_ERROR_PCT,
            "memory_mb": GOAL_MEMORY_MB,
            "cpu_peak_pct": GOAL_CPU_PEAK_PCT,
        },
        "configs": summary,
        "results": results,
        "summary": summarize_runs(results),
    }
    if args.users:
        report["knee"] = {t: knee(report["summary"], t) for t in args.targets}
    document = json.dumps(report, indent=2)
    if args.json_out:
        args.json_out.write_text(document + "\n")
    print(table(report))
    print(document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
