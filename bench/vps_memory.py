"""Memory of a whole server, read inside it over SSH: its containers, its Docker daemons,
its own memory cgroup and its OOM kills, at idle, under 100 users and at a deploy's peak.

Usage:
    python bench/vps_memory.py -H root@HOST[:PORT] [-i KEY] [--https HOST:PORT]
        [--users 100] [--load-seconds 60] [--deploy-image REF] [--deploy-user ubuntu]
        [--breakdown] [--json FILE]

What it reads, every sample (one shell script over one SSH connection; the server needs
no Python):
- each container: its memory cgroup's usage minus inactive file pages (what `docker
  stats` shows and the OOM killer goes by), read from the files (`docker stats` costs
  the small box a CPU-second per sample);
- dockerd, containerd, the containerd shims and docker-proxy: PSS from
  /proc/PID/smaps_rollup (shared pages divided among those sharing them);
- the machine: the memory cgroup that limits PID 1 (a VPS container's, or the root on a
  real VM: then /proc/meminfo's MemTotal - MemAvailable), usage minus inactive file
  pages, and its limit;
- OOM kills: kernel `oom-kill:` lines whose victim was in that cgroup (dmesg).

Phases: idle (the highest of 10 samples, 1 s apart); load: `--users` simulated users
against https://eduaiia.com and https://staging.eduaiia.com through `--https` (each
user: a page, then 0.5-1.5 s of think time, repeated for `--load-seconds`); deploy:
`fab deploy --env production --image REF` with staging up, sampled every 0.5 s, its
peak. Prints a table, then the figures as JSON. Each phase is set against its goal two
ways: the machine's cgroup, and what the goals name (the containers plus the engine's
daemons, summed in one sample, its highest). It never fails on a figure: it reports.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shlex
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import GUIDE_CONTAINERS  # noqa: E402

MIB = 2**20
DAEMONS = ("dockerd", "containerd", "containerd-shim", "docker-proxy")
# The running containers, "PID NAME" a line, read from the engine's own state files rather
# than with the docker CLI: a 45 MB binary run every second keeps its pages in the active
# page cache, which the machine's figure counts (measured: ssh.service's cgroup, where
# commands over SSH run, held 37 MiB of active page cache; docs/server.md). The CLI only
# where those files are not readable (another data root, or not root).
CONTAINERS = r"""
found=
for f in /var/lib/docker/containers/*/config.v2.json; do
  [ -r "$f" ] || continue
  found=1
  pid=$(grep -o '"Pid":[0-9]*' "$f" | head -n 1 | cut -d: -f2)
  { [ -n "$pid" ] && [ "$pid" != 0 ]; } || continue
  name=$(grep -o '"Name":"/[^"]*"' "$f" | head -n 1 | cut -d'"' -f4)
  id=${f%/config.v2.json}
  echo "$pid $name ${id##*/}"
done
if [ -z "$found" ]; then
  ids=$(docker ps -q --no-trunc)
  [ -z "$ids" ] || docker inspect --format '{{.State.Pid}} {{.Name}} {{.Id}}' $ids
fi
"""
PROBE = (
    r"""
echo '## containers'
{ """
    + CONTAINERS
    + r"""} | while read pid name id; do
  p=$(awk -F: '$2=="memory"||$1=="0"{print $3; exit}' /proc/$pid/cgroup 2>/dev/null)
  # a container that exited between docker inspect and here has no cgroup left to read
  # (an empty path would read the host's root cgroup)
  { [ "$pid" != 0 ] && [ -n "$p" ] && [ "$p" != / ]; } || continue
  d=/sys/fs/cgroup/memory$p; [ -r $d/memory.usage_in_bytes ] || d=/sys/fs/cgroup$p
  u=$(cat $d/memory.usage_in_bytes 2>/dev/null || cat $d/memory.current 2>/dev/null)
  i=$(awk '$1=="total_inactive_file"||$1=="inactive_file"{print $2; exit}' $d/memory.stat)
  echo "${name#/} $(( ${u:-0} - ${i:-0} ))"
done
echo '## daemons'
for p in $(ls /proc | grep -E '^[0-9]+$'); do
  c=$(cat /proc/$p/comm 2>/dev/null) || continue
  case "$c" in dockerd|containerd|containerd-shim*|docker-proxy)
    k=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null)
    echo "$c ${k:-0}";;
  esac
done
echo '## cgroup'
p=$(awk -F: '$2=="memory"||$1=="0"{print $3; exit}' /proc/1/cgroup)
big=4611686018427387904
while :; do
  d=/sys/fs/cgroup/memory$p
  if [ -r $d/memory.limit_in_bytes ] && [ "$(cat $d/memory.limit_in_bytes)" -lt $big ]; then
    echo "path $p"; echo "limit $(cat $d/memory.limit_in_bytes)"
    echo "usage $(cat $d/memory.usage_in_bytes)"
    echo "inactive_file $(awk '$1=="total_inactive_file"{print $2}' $d/memory.stat)"
    echo "pinned $(( $(awk '$1=="total_rss"||$1=="total_shmem"{s+=$2} END{printf "%.0f", s}' \
      $d/memory.stat) + $(cat $d/memory.kmem.usage_in_bytes 2>/dev/null || echo 0) ))"; break
  fi
  d=/sys/fs/cgroup$p
  if [ -r $d/memory.max ] && [ "$(cat $d/memory.max)" != max ]; then
    echo "path $p"; echo "limit $(cat $d/memory.max)"; echo "usage $(cat $d/memory.current)"
    echo "inactive_file $(awk '$1=="inactive_file"{print $2}' $d/memory.stat)"
    echo "pinned $(awk '$1=="anon"||$1=="shmem"||$1=="kernel"{s+=$2} END{printf "%.0f", s}' \
      $d/memory.stat)"; break
  fi
  if [ -z "$p" ] || [ "$p" = / ]; then
    echo "path /"
    awk '/MemTotal/{t=$2} /MemAvailable/{a=$2}
         END{printf "limit %.0f\nusage %.0f\ninactive_file 0\n", t*1024, (t-a)*1024}' \
      /proc/meminfo
    break
  fi
  p=$(dirname "$p")
done
echo '## oom'; dmesg 2>/dev/null | grep 'oom-kill:' || true
"""
)
# Where the machine's memory goes, once per phase with --breakdown: the machine cgroup's
# own composition (anonymous, shared memory, active and inactive page cache, kernel), the
# figure of every cgroup below it two levels deep (systemd's units, each container) and
# every process's PSS split into anonymous, file and shared memory.
BREAKDOWN = (
    r"""
p=$(awk -F: '$2=="memory"||$1=="0"{print $3; exit}' /proc/1/cgroup)
big=4611686018427387904
while :; do
  d=/sys/fs/cgroup/memory$p
  [ -r $d/memory.limit_in_bytes ] && [ "$(cat $d/memory.limit_in_bytes)" -lt $big ] && break
  d=/sys/fs/cgroup$p
  [ -r $d/memory.max ] && [ "$(cat $d/memory.max)" != max ] && break
  if [ -z "$p" ] || [ "$p" = / ]; then
    d=/sys/fs/cgroup/memory; [ -d $d ] || d=/sys/fs/cgroup; break
  fi
  p=$(dirname "$p")
done
echo '## base'; echo "${p:-/}"
echo '## machine'
if [ -r $d/memory.usage_in_bytes ]; then
  echo "usage $(cat $d/memory.usage_in_bytes)"
  echo "kernel $(cat $d/memory.kmem.usage_in_bytes 2>/dev/null || echo 0)"
  awk '$1=="total_rss"{print "anon", $2} $1=="total_shmem"{print "shmem", $2}
       $1=="total_active_file"{print "active_file", $2}
       $1=="total_inactive_file"{print "inactive_file", $2}' $d/memory.stat
else
  echo "usage $(cat $d/memory.current)"
  awk '$1=="anon"||$1=="shmem"||$1=="active_file"||$1=="inactive_file"||$1=="kernel"{print}' \
    $d/memory.stat
fi
echo '## groups'
find $d -mindepth 1 -maxdepth 2 -type d | while read g; do
  if [ -r $g/memory.usage_in_bytes ]; then
    u=$(cat $g/memory.usage_in_bytes)
    i=$(awk '$1=="total_inactive_file"{print $2}' $g/memory.stat)
  else
    u=$(cat $g/memory.current 2>/dev/null || echo 0)
    i=$(awk '$1=="inactive_file"{print $2}' $g/memory.stat 2>/dev/null)
  fi
  echo "${g#$d/} $(( ${u:-0} - ${i:-0} ))"
done
echo '## names'
{ """
    + CONTAINERS
    + r"""} | while read pid name id; do echo "$id ${name#/}"; done
echo '## procs'
for p in $(ls /proc | grep -E '^[0-9]+$'); do
  [ -r /proc/$p/smaps_rollup ] || continue
  c=$(cat /proc/$p/comm 2>/dev/null) || continue
  g=$(awk -F: '$2=="memory"||$1=="0"{print $3; exit}' /proc/$p/cgroup 2>/dev/null)
  awk -v p=$p -v c="$c" -v g="$g" '/^Rss:/{r=$2} /^Pss:/{s=$2} /^Pss_Anon:/{a=$2}
    /^Pss_File:/{f=$2} /^Pss_Shmem:/{h=$2}
    END{if (r>0) printf "%s %s %d %d %d %d %d %s\n", p, g, r, s, a, f, h, c}' \
    /proc/$p/smaps_rollup 2>/dev/null
done
"""
)


def sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    cur = None
    for line in text.splitlines():
        if line.startswith("## "):
            cur = line[3:].strip()
            out[cur] = []
        elif cur is not None and line.strip():
            out[cur].append(line)
    return out


@dataclass
class Sample:
    containers: dict[str, float]  # MiB
    daemons: dict[str, tuple[int, float]]  # name -> (processes, PSS MiB)
    machine_mb: float
    limit_mb: float
    oom_kills: int
    # anonymous + shared memory + kernel: what the kernel cannot give back (no swap)
    pinned_mb: float = 0.0


def parse_sample(text: str) -> Sample:
    s = sections(text)
    containers = {}
    for line in s.get("containers", []):
        name, used = line.split()
        containers[name] = int(used) / MIB
    daemons: dict[str, tuple[int, float]] = {}
    for line in s.get("daemons", []):
        comm, kb = line.split()
        name = "containerd-shim" if comm.startswith("containerd-shim") else comm
        n, mb = daemons.get(name, (0, 0.0))
        daemons[name] = (n + 1, mb + int(kb) / 1024)
    cg = dict(line.split(" ", 1) for line in s.get("cgroup", []))
    usage = int(cg.get("usage", "0")) - int(cg.get("inactive_file", "0") or 0)
    path = cg.get("path", "/").strip()
    marks = (f"task_memcg={path},", f"task_memcg={path}/") if path != "/" else ("oom-kill:",)
    ooms = sum(1 for line in s.get("oom", []) if any(m in line for m in marks))
    pinned = int(cg.get("pinned", "0") or 0) / MIB
    return Sample(containers, daemons, usage / MIB, int(cg.get("limit", "0")) / MIB, ooms, pinned)


@dataclass
class Peak:
    containers: dict[str, float] = field(default_factory=dict)
    daemons: dict[str, tuple[int, float]] = field(default_factory=dict)
    machine_mb: float = 0.0
    pinned_mb: float = 0.0
    limit_mb: float = 0.0
    oom_kills: int = 0
    samples: int = 0
    # the sample in which the machine's figure was highest: what held it at that moment
    # (the rows above are each part's own highest, taken at different moments)
    at_peak: Sample | None = None
    # and when, in seconds from the phase's start (to set beside a deploy's step timings)
    peak_at_s: float = 0.0
    # what the goals name, summed in one sample: the containers plus dockerd, containerd
    # and the shims (docker-proxy if any); the highest sample's total and how many
    # containers it held
    counted_mb: float = 0.0
    counted_n: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, s: Sample) -> None:
        self.samples += 1
        if self.at_peak is None or s.machine_mb > self.at_peak.machine_mb:
            self.at_peak = s
            self.peak_at_s = time.monotonic() - self.started
        counted = sum(s.containers.values()) + sum(mb for _, mb in s.daemons.values())
        if counted > self.counted_mb:
            self.counted_mb, self.counted_n = counted, len(s.containers)
        for k, v in s.containers.items():
            self.containers[k] = max(self.containers.get(k, 0.0), v)
        for k, (n, mb) in s.daemons.items():
            old = self.daemons.get(k, (0, 0.0))
            self.daemons[k] = (max(old[0], n), max(old[1], mb))
        self.machine_mb = max(self.machine_mb, s.machine_mb)
        self.pinned_mb = max(self.pinned_mb, s.pinned_mb)
        self.limit_mb = s.limit_mb
        self.oom_kills = max(self.oom_kills, s.oom_kills)


@dataclass
class Breakdown:
    machine: dict[str, float]  # MiB: usage, anon, shmem, active_file, inactive_file, kernel
    groups: dict[str, float]  # cgroup below the machine's (containers by name) -> MiB
    procs: list[dict]  # pid, group, comm, rss/pss/pss_anon/pss_file/pss_shmem MiB


def _short_group(path: str, names: dict[str, str]) -> str:
    """A cgroup path relative to the machine's, containers by name: `system.slice/ssh.service`."""
    parts = [names.get(part, part) for part in path.strip("/").split("/") if part]
    return "/".join(parts) or "(machine)"


def parse_breakdown(text: str) -> Breakdown:
    s = sections(text)
    machine = {}
    for line in s.get("machine", []):
        key, _, value = line.partition(" ")
        machine[key] = int(value or 0) / MIB
    base = (s.get("base") or [""])[0].strip().rstrip("/")
    names = {}
    for line in s.get("names", []):
        cid, _, name = line.partition(" ")
        names[cid] = name.strip()
    groups = {}
    for line in s.get("groups", []):
        path, _, used = line.rpartition(" ")
        groups[_short_group(path, names)] = int(used) / MIB
    procs = []
    for line in s.get("procs", []):
        pid, group, rss, pss, anon, file, shmem, comm = line.split(" ", 7)
        if base and group.startswith(base):
            group = group[len(base) :]
        kb = [int(x) / 1024 for x in (rss, pss, anon, file, shmem)]
        procs.append({
            "pid": int(pid), "group": _short_group(group, names), "comm": comm,
            "rss": kb[0], "pss": kb[1], "pss_anon": kb[2], "pss_file": kb[3], "pss_shmem": kb[4],
        })  # fmt: skip
    return Breakdown(machine, groups, procs)


def breakdown_table(b: Breakdown, top: int = 25) -> str:
    m = b.machine
    lines = ["where the machine's memory goes (MiB):"]
    counted = m.get("usage", 0) - m.get("inactive_file", 0)
    lines.append(
        f"  counted {counted:.1f} = usage {m.get('usage', 0):.1f} - inactive page cache "
        f"{m.get('inactive_file', 0):.1f}; of usage: anonymous {m.get('anon', 0):.1f}, "
        f"shared memory {m.get('shmem', 0):.1f}, active page cache "
        f"{m.get('active_file', 0):.1f}, kernel {m.get('kernel', 0):.1f}"
    )
    lines.append("  cgroups below the machine's (usage - inactive page cache):")
    for name, mb in sorted(b.groups.items(), key=lambda kv: -kv[1]):
        if mb >= 0.5:
            lines.append(f"    {mb:7.1f}  {name}")
    lines.append(f"  processes by PSS (top {top}): PSS = anonymous + file + shared memory, RSS")
    for p in sorted(b.procs, key=lambda p: -p["pss"])[:top]:
        lines.append(
            f"    {p['pss']:6.1f} = {p['pss_anon']:5.1f} + {p['pss_file']:5.1f} + "
            f"{p['pss_shmem']:5.1f}  rss {p['rss']:6.1f}  {p['comm']:<16} {p['group']}"
        )
    total = sum(p["pss"] for p in b.procs)
    lines.append(f"  all {len(b.procs)} processes: PSS {total:.1f} "
                 f"(anonymous {sum(p['pss_anon'] for p in b.procs):.1f})")  # fmt: skip
    return "\n".join(lines)


# --squeeze: how much of the idle figure is page cache the kernel gives back on demand.
# A python3 on the server (Debian's unattended-upgrades brings one) volunteers as the OOM
# killer's first victim and holds anonymous memory, 8 MiB at a time, until the machine's
# page cache is under 24 MiB or what cannot be reclaimed is within 64 MiB of the limit;
# then it lets go, and the idle phase is measured again.
SQUEEZE = r"""
import os, time
open("/proc/self/oom_score_adj", "w").write("1000")
M, big = 1 << 20, 1 << 62
p = open("/proc/1/cgroup").read().split("memory:")[1].split("\n")[0]
while True:
    d = "/sys/fs/cgroup/memory" + p
    if int(open(d + "/memory.limit_in_bytes").read()) < big:
        break
    if p in ("", "/"):
        raise SystemExit("no memory limit on the way to PID 1's cgroup: nothing to squeeze")
    p = os.path.dirname(p)
limit = int(open(d + "/memory.limit_in_bytes").read())
def files():
    s = dict(line.split() for line in open(d + "/memory.stat"))
    usage = int(open(d + "/memory.usage_in_bytes").read())
    cache = int(s["total_active_file"]) + int(s["total_inactive_file"])
    return usage, cache
held = []
while True:
    usage, cache = files()
    if cache < 24 * M or usage - cache + 8 * M > limit - 64 * M:
        break
    held.append(b"\1" * (8 * M))
    time.sleep(0.05)
print(f"held {len(held) * 8} MiB; page cache {cache / M:.0f} MiB left")
"""


class Server:
    def __init__(self, host: str, key: str | None) -> None:
        from fabric import Config, Connection

        user, _, rest = host.rpartition("@")
        name, _, port = rest.partition(":")
        kwargs = (
            {"key_filename": [key], "look_for_keys": False, "allow_agent": False} if key else {}
        )
        self.c = Connection(
            name,
            user=user or None,
            port=int(port or 22),
            connect_kwargs=kwargs,
            config=Config(overrides={"run": {"in_stream": False}}),
        )

    def sample(self) -> Sample:
        return parse_sample(self.c.run(PROBE, hide=True, warn=True).stdout)

    def squeeze(self) -> str:
        res = self.c.run(f"python3 -c {shlex.quote(SQUEEZE)}", hide=True, warn=True, timeout=300)
        return (res.stdout + res.stderr).strip()

    def breakdown(self) -> Breakdown:
        return parse_breakdown(self.c.run(BREAKDOWN, hide=True, warn=True).stdout)


def sample_until(server: Server, stop: threading.Event, peak: Peak, interval: float) -> None:
    while not stop.is_set():
        try:
            peak.add(server.sample())
        except Exception as exc:  # noqa: BLE001 - a lost sample is reported, not fatal
            print(f"sample failed: {exc}", file=sys.stderr)
        stop.wait(interval)


class _SNI(http.client.HTTPSConnection):
    def connect(self) -> None:
        sock = socket.create_connection((self._addr, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def users(address: str, n: int, seconds: float, paths: list[tuple[str, str]]) -> Counter:
    """n users, each: one request on its own connection, then 0.5-1.5 s of think time."""
    host, _, port = address.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the figures are about memory; the test checks the chain
    counts: Counter = Counter()
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def user(i: int) -> None:
        rnd = random.Random(i)
        time.sleep(rnd.uniform(0, 1.5))  # users arrive spread out, as they do
        while time.monotonic() < end:
            name, path = paths[rnd.randrange(len(paths))]
            conn = _SNI(name, int(port), context=ctx, timeout=15)
            conn._addr = host
            try:
                conn.request("GET", path, headers={"Host": name, "Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                key = resp.status
            except OSError as exc:
                key = type(exc).__name__
            finally:
                conn.close()
            with lock:
                counts[key] += 1
            time.sleep(rnd.uniform(0.5, 1.5))

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return counts


# what the simulated users ask for: production's notes API, admin login and health,
# staging's notes API
LOAD_PATHS = [
    ("eduaiia.com", "/api/notes/"),
    ("eduaiia.com", "/admin/login/"),
    ("staging.eduaiia.com", "/api/notes/"),
    ("eduaiia.com", "/health/"),
]


def table(phases: dict[str, Peak], goal_idle: float, goal_peak: float) -> str:
    names = [c for c in GUIDE_CONTAINERS]
    for p in phases.values():
        names += sorted(k for k in p.containers if k not in names)
    cols = list(phases)
    head = f"| {'MiB':<32} | " + " | ".join(f"{c:>12}" for c in cols) + " |"
    rows = [head, "| " + "-" * 32 + " | " + " | ".join("-" * 11 + ":" for _ in cols) + " |"]

    def row(label: str, values: list[str]) -> None:
        rows.append(f"| {label:<32} | " + " | ".join(f"{v:>12}" for v in values) + " |")

    for name in names:
        if any(name in p.containers for p in phases.values()):
            row(
                name,
                [
                    f"{p.containers[name]:.1f}" if name in p.containers else "-"
                    for p in phases.values()
                ],
            )
    row("containers", [f"{sum(p.containers.values()):.1f}" for p in phases.values()])
    for d in DAEMONS:
        if any(d in p.daemons for p in phases.values()):
            row(
                f"{d} (processes)",
                [
                    f"{p.daemons[d][1]:.1f} ({p.daemons[d][0]})" if d in p.daemons else "-"
                    for p in phases.values()
                ],
            )
    row(
        "daemons (PSS)", [f"{sum(mb for _, mb in p.daemons.values()):.1f}" for p in phases.values()]
    )
    row("**machine cgroup, all of it**", [f"**{p.machine_mb:.1f}**" for p in phases.values()])
    row("of it not page cache", [f"{p.pinned_mb:.1f}" for p in phases.values()])

    def at_peak(p: Peak, what: str) -> str:
        s = p.at_peak
        if s is None:
            return "-"
        if what == "containers":
            return f"{sum(s.containers.values()):.1f} ({len(s.containers)})"
        if what == "daemons":
            return f"{sum(mb for _, mb in s.daemons.values()):.1f}"
        return f"{s.pinned_mb:.1f}"

    row("at its peak: seconds in", [f"{p.peak_at_s:.0f}" for p in phases.values()])
    row("at its peak: containers (n)", [at_peak(p, "containers") for p in phases.values()])
    row("at its peak: daemons (PSS)", [at_peak(p, "daemons") for p in phases.values()])
    row("at its peak: not page cache", [at_peak(p, "pinned") for p in phases.values()])
    row("containers + daemons, one sample (n)",
        [f"{p.counted_mb:.1f} ({p.counted_n})" for p in phases.values()])  # fmt: skip
    row("limit", [f"{p.limit_mb:.0f}" for p in phases.values()])
    row("OOM kills", [str(p.oom_kills) for p in phases.values()])
    row("samples", [str(p.samples) for p in phases.values()])
    lines = rows

    def against(label: str, mb: float, goal: float) -> str:
        verdict = "met" if mb <= goal else f"not met, {mb - goal:.0f} over"
        return f"{label} {mb:.0f} MiB against the goal of {goal:.0f}: {verdict}"

    # the machine's cgroup, then the goals' own count: what they name (containers and the
    # engine's daemons), not the machine's systemd, sshd, kernel and active page cache
    counts = (("", lambda p: p.machine_mb), ("containers + daemons ", lambda p: p.counted_mb))
    for prefix, figure in counts:
        if "idle" in phases:
            lines.append(against(f"{prefix}idle", figure(phases["idle"]), goal_idle))
        top = max(figure(p) for p in phases.values())
        lines.append(against(f"{prefix}highest", top, goal_peak))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-H", dest="host", required=True, help="user@host[:port] of the server")
    ap.add_argument("-i", dest="key", help="SSH private key")
    ap.add_argument("--https", help="HOST:PORT that reaches the server's 443 (default: HOST:443)")
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--load-seconds", type=float, default=60)
    ap.add_argument("--idle-samples", type=int, default=10)
    ap.add_argument("--deploy-image", help="image for the deploy phase (skipped without it)")
    ap.add_argument("--deploy-user", default="ubuntu")
    ap.add_argument("--goal-idle-mb", type=float, default=350)
    ap.add_argument("--goal-peak-mb", type=float, default=480)
    ap.add_argument("--json", dest="json_file")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="print where the idle machine's memory goes: cgroups and processes",
    )
    ap.add_argument(
        "--squeeze",
        action="store_true",
        help="after idle, make the kernel reclaim the page cache it can, then idle again",
    )
    ap.add_argument("--settle-s", type=float, default=20, help="after the squeeze")
    args = ap.parse_args(argv)
    server = Server(args.host, args.key)
    https = args.https or f"{args.host.rpartition('@')[2].partition(':')[0]}:443"
    phases: dict[str, Peak] = {}
    extra: dict[str, object] = {}

    idle = Peak()
    for _ in range(args.idle_samples):
        idle.add(server.sample())
        time.sleep(1)
    phases["idle"] = idle
    if args.breakdown:
        found = server.breakdown()
        print(breakdown_table(found))
        extra["idle_breakdown"] = {"machine_mib": found.machine, "cgroups_mib": found.groups,
                                   "processes": found.procs}  # fmt: skip

    if args.squeeze:
        extra["squeeze"] = server.squeeze()
        print(f"squeeze: {extra['squeeze']}")
        time.sleep(args.settle_s)
        after = Peak()
        for _ in range(args.idle_samples):
            after.add(server.sample())
            time.sleep(1)
        phases["idle after reclaim"] = after
        if args.breakdown:
            print(breakdown_table(server.breakdown()))

    if args.users > 0 and args.load_seconds > 0:
        load, stop = Peak(), threading.Event()
        t = threading.Thread(target=sample_until, args=(server, stop, load, 1.0), daemon=True)
        t.start()
        counts = users(https, args.users, args.load_seconds, LOAD_PATHS)
        stop.set()
        t.join(30)
        phases[f"{args.users} users"] = load
        extra["load_responses"] = {str(k): v for k, v in counts.items()}

    if args.deploy_image:
        user_host = f"{args.deploy_user}@{args.host.rpartition('@')[2]}"
        fab = [str(ROOT / ".venv" / "bin" / "fab"), "-H", user_host]
        if args.key:
            fab += ["-i", args.key]
        dep, stop = Peak(), threading.Event()
        t = threading.Thread(target=sample_until, args=(server, stop, dep, 0.5), daemon=True)
        t.start()
        proc = subprocess.run(
            [*fab, "deploy", "--env", "production", "--image", args.deploy_image],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=1800,
        )
        stop.set()
        t.join(30)
        phases["deploy peak"] = dep
        extra["deploy_exit"] = proc.returncode
        extra["deploy_tail"] = proc.stdout.strip().splitlines()[-1:] or proc.stderr[-300:]
        # the step lines with their durations, to place the peak ("seconds in") in a step
        extra["deploy_steps"] = [
            line.strip() for line in proc.stdout.splitlines() if line.lstrip().startswith("[")
        ]

    print(table(phases, args.goal_idle_mb, args.goal_peak_mb))
    for k, v in extra.items():
        if k != "idle_breakdown":
            print(f"{k}: {v}")
    doc = {
        "phases": {
            name: {
                "containers_mib": p.containers,
                "daemons": {k: {"processes": n, "pss_mib": mb} for k, (n, mb) in p.daemons.items()},
                "machine_mib": p.machine_mb,
                "not_page_cache_mib": p.pinned_mb,
                "limit_mib": p.limit_mb,
                "oom_kills": p.oom_kills,
                "samples": p.samples,
                "machine_peak_at_s": round(p.peak_at_s, 1),
                "containers_and_daemons_mib": p.counted_mb,
                "containers_and_daemons_n": p.counted_n,
                "at_machine_peak": None
                if p.at_peak is None
                else {
                    "containers_mib": p.at_peak.containers,
                    "daemons_pss_mib": {k: mb for k, (_, mb) in p.at_peak.daemons.items()},
                    "not_page_cache_mib": p.at_peak.pinned_mb,
                },
            }
            for name, p in phases.items()
        },
        **extra,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json_file:
        Path(args.json_file).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
