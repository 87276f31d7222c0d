"""Memory levers of a whole server, each measured beside its own baseline in one run.

Usage:
    python bench/vps_levers.py -H root@HOST[:PORT] [-i KEY] [--levers NAME,NAME]
        [--rounds 2] [--settle-s 30] [--samples 10] [--load-seconds 0 --https HOST:PORT]
        [--json FILE]

For each lever, its two states take turns (off, on, off, on, ... `--rounds` times each):
the state's script runs over SSH as root, `--load-seconds` of bench/vps_memory.py's 100
users run through `--https` when asked (what a worker grows to shows only once it has
served), the server settles for `--settle-s`, then
`--samples` readings 1 s apart with bench/vps_memory.py's probe give the machine's figure
(its memory cgroup, usage minus inactive page cache: median and highest) and its parts
(dockerd, containerd, the shims, the containers, the cgroups below the machine's). The
table shows each lever's medians off and on and what moved. The server is left in the
state each lever found it in. It never fails on a figure: it reports. `--help` lists
the levers; a lever that pays belongs in `fab setup` or the compose files, with its figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.vps_memory import LOAD_PATHS, Server, users  # noqa: E402

# what every engine restart waits for: the daemon answers and the stack is healthy again
WAIT_ENGINE = r"""
for i in $(seq 90); do docker info >/dev/null 2>&1 && break; sleep 1; done
for i in $(seq 120); do
  n=$(docker ps --format '{{.Status}}' | grep -c -e 'health: starting' -e unhealthy)
  [ "$n" = 0 ] && break; sleep 1
done
"""
RESTART_ENGINE = "systemctl daemon-reload; systemctl restart containerd; systemctl restart docker;"


def _dropins(body: str) -> tuple[str, str, str]:
    """(check, on, off) for a systemd drop-in on docker.service and containerd.service."""
    files = [
        f"/etc/systemd/system/{u}.service.d/60-aiia-bench.conf" for u in ("docker", "containerd")
    ]
    on = "".join(f"mkdir -p {f.rsplit('/', 1)[0]}; printf '{body}' > {f}; " for f in files)
    return (
        f"[ -e {files[0]} ] && echo on || echo off",
        on + RESTART_ENGINE + WAIT_ENGINE,
        f"rm -f {' '.join(files)}; " + RESTART_ENGINE + WAIT_ENGINE,
    )


CRI = 'disabled_plugins = ["io.containerd.grpc.v1.cri"]'
CONTAINERD_TOML = "/etc/containerd/config.toml"


@dataclass(frozen=True)
class Lever:
    name: str
    what: str
    check: str  # prints "on" or "off"
    on: str
    off: str


LEVERS = {
    lever.name: lever
    for lever in (
        Lever(
            "engine-gogc50",
            "GOGC=50 for dockerd and containerd (and the shims and runc they start)",
            *_dropins("[Service]\\nEnvironment=GOGC=50\\n"),
        ),
        Lever(
            "containerd-no-cri",
            "containerd without its Kubernetes CRI plugin, which Docker never uses",
            f"grep -qxF '{CRI}' {CONTAINERD_TOML} && echo on || echo off",
            f"grep -qxF '{CRI}' {CONTAINERD_TOML} || sed -i '1a {CRI}' {CONTAINERD_TOML}; "
            + RESTART_ENGINE
            + WAIT_ENGINE,
            f"sed -i '/^disabled_plugins = \\[\"io.containerd.grpc.v1.cri\"\\]$/d' "
            f"{CONTAINERD_TOML}; " + RESTART_ENGINE + WAIT_ENGINE,
        ),
        Lever(
            "no-uu-shutdown-helper",
            "unattended-upgrades.service (a resident python3 that only waits for shutdown) "
            "disabled; the upgrades still run from apt-daily-upgrade.timer",
            "systemctl is-active -q unattended-upgrades.service && echo off || echo on",
            "systemctl disable --now -q unattended-upgrades.service",
            "systemctl enable --now -q unattended-upgrades.service",
        ),
    )
}


@dataclass
class Reading:
    state: str
    round: int
    machine: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.parts.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        values = self.parts.get(name) or [0.0]
        return statistics.median(values)


def measure(server: Server, state: str, rnd: int, samples: int) -> Reading:
    r = Reading(state, rnd)
    for _ in range(samples):
        s = server.sample()
        r.machine.append(s.machine_mb)
        for name, (_, mb) in s.daemons.items():
            r.add(name, mb)
        r.add("containers", sum(s.containers.values()))
        for name, mb in s.containers.items():
            r.add(name, mb)
        time.sleep(1)
    b = server.breakdown()
    for name, mb in b.groups.items():
        r.add(f"cgroup {name}", mb)
    return r


def together(levers: list[Lever]) -> Lever:
    """The levers as one: all off against all on."""
    return Lever(
        "+".join(lv.name for lv in levers),
        "; ".join(lv.what for lv in levers),
        "echo mixed",
        "\n".join(lv.on for lv in levers),
        "\n".join(lv.off for lv in levers),
    )


def found_states(server: Server, levers: list[Lever]) -> str:
    """A script that puts each lever back in the state it is in now."""
    states = [server.c.run(lv.check, hide=True, warn=True).stdout.strip() or "off" for lv in levers]
    return "\n".join(getattr(lv, st) for lv, st in zip(levers, states, strict=True))


def run_lever(server: Server, lever: Lever, rounds: int, settle_s: float, samples: int,
              restore: str, load: Callable[[], object] | None = None):  # fmt: skip
    readings: list[Reading] = []
    try:
        for rnd in range(1, rounds + 1):
            for state in ("off", "on"):
                res = server.c.run(getattr(lever, state), hide=True, warn=True, timeout=600)
                if not res.ok:
                    print(f"{lever.name} {state}: exit {res.exited}: {res.stderr[-500:]}")
                if load is not None:
                    print(f"  {lever.name} round {rnd} {state}: load {load()}")
                time.sleep(settle_s)
                readings.append(measure(server, state, rnd, samples))
                med = statistics.median(readings[-1].machine)
                print(f"  {lever.name} round {rnd} {state}: machine median {med:.1f} MiB")
    finally:
        server.c.run(restore, hide=True, warn=True, timeout=900)
    return readings


def summary(lever: Lever, readings: list[Reading]) -> dict:
    by = {s: [r for r in readings if r.state == s] for s in ("off", "on")}

    def med(state: str, name: str | None = None) -> float:
        if name is None:
            return statistics.median([statistics.median(r.machine) for r in by[state]])
        return statistics.median([r.median(name) for r in by[state]])

    names = sorted({n for r in readings for n in r.parts})
    moved = {}
    for n in names:
        off, on = med("off", n), med("on", n)
        if abs(on - off) >= 1.0:
            moved[n] = (round(off, 1), round(on, 1))
    return {
        "lever": lever.name,
        "what": lever.what,
        "machine_off_mib": round(med("off"), 1),
        "machine_on_mib": round(med("on"), 1),
        "delta_mib": round(med("on") - med("off"), 1),
        "machine_max_off_mib": round(max(max(r.machine) for r in by["off"]), 1),
        "machine_max_on_mib": round(max(max(r.machine) for r in by["on"]), 1),
        "per_round": [
            {
                "state": r.state,
                "round": r.round,
                "median": round(statistics.median(r.machine), 1),
                "max": round(max(r.machine), 1),
            }
            for r in readings
        ],  # fmt: skip
        "moved_mib": moved,
    }


def table(results: list[dict]) -> str:
    rows = [
        "| lever | off (median) | on (median) | on - off | off max | on max |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r['lever']} | {r['machine_off_mib']:.1f} | {r['machine_on_mib']:.1f} | "
            f"{r['delta_mib']:+.1f} | {r['machine_max_off_mib']:.1f} | "
            f"{r['machine_max_on_mib']:.1f} |"
        )
    for r in results:
        rows.append(f"{r['lever']}: {r['what']}")
        for name, (off, on) in sorted(r["moved_mib"].items(), key=lambda kv: kv[1][1] - kv[1][0]):
            rows.append(f"    {name}: {off:.1f} -> {on:.1f} ({on - off:+.1f})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="levers:\n" + "".join(f"  {n}: {lv.what}\n" for n, lv in LEVERS.items()),
    )  # fmt: skip
    ap.add_argument("-H", dest="host", required=True, help="user@host[:port] of the server")
    ap.add_argument("-i", dest="key", help="SSH private key")
    ap.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settle-s", type=float, default=30)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument(
        "--load-seconds",
        type=float,
        default=0,
        help="100 users for this long after each switch, before the settle",
    )
    ap.add_argument("--https", help="HOST:PORT that reaches the server's 443 (default: HOST:443)")
    ap.add_argument("--together", action="store_true",
                    help="the chosen levers as one: all off against all on")  # fmt: skip
    ap.add_argument("--json", dest="json_file")
    args = ap.parse_args(argv)
    unknown = [n for n in args.levers.split(",") if n not in LEVERS]
    if unknown:
        ap.error(f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    server = Server(args.host, args.key)
    chosen = [LEVERS[n] for n in args.levers.split(",")]
    groups = [chosen] if args.together else [[lv] for lv in chosen]
    https = args.https or f"{args.host.rpartition('@')[2].partition(':')[0]}:443"
    load = None
    if args.load_seconds > 0:

        def load() -> dict:
            counts = users(https, 100, args.load_seconds, LOAD_PATHS)
            return {str(k): v for k, v in counts.items()}

    results = []
    for group in groups:
        lever = together(group) if len(group) > 1 else group[0]
        print(f"{lever.name}: {lever.what}")
        restore = found_states(server, group)
        readings = run_lever(server, lever, args.rounds, args.settle_s, args.samples, restore, load)
        results.append(summary(lever, readings))
    print(table(results))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_file:
        Path(args.json_file).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
