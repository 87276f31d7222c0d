"""The first deploy after a fresh `docker compose up`, N times, under new connections.

Usage:
    python bench/first_deploy.py [--runs N] [--get-loops 4] [--post-loops 1] [--rate 5]
                                 [--skip-backup] [--json FILE]

The first deploy differs from every later one: nginx was just started, its upstream file
names the compose service (`django_prod:8000`, resolved when nginx started), the serving
container is compose's own (kept as the release `<created>-initial`), and the remote
tier's first deploy also takes the pre-deploy backup. This brings up what the remote tier
uses (tests/remote/deploy_support.py: an sshd on loopback, the production and staging
checkouts, a registry holding v2 of the app), then in each run:

1. the server stack from nothing, as the remote tier does (`compose build`, `up -d
   --wait`, migrations in one-off containers);
2. one-request-per-connection clients through nginx to production, GET and POST
   (tests/remote/clients.py's PerConnection: a TLS connection per request, `Connection:
   close`), started before and stopped 2 s after
3. `fab deploy --image v2`, the first deploy of that stack;
4. the stack torn down (`down -v`, the release containers and tags).

It prints, for each run, the requests and the errors by kind (status, connect, read,
write, timeout), each error with its time from the deploy's start, the step under way and
the exception, and what nginx's container shows (error-log lines of level alert or worse,
its memory cgroup's peak and OOM kills). Figures only: it never passes or fails.

The server stack uses the guide's fixed container names, so each run holds the engine's
stack lock (/tmp/aiia-stack.lock, as the remote tier takes it) from `up` to `down`, and
lets it go between runs so that a test tier waiting for it can take its turn.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.core import free_port  # noqa: E402
from tests.remote import deploy_support as ds  # noqa: E402
from tests.remote.clients import KINDS, PerConnection, Tally  # noqa: E402
from tests.stack.stackkit import (  # noqa: E402
    TEST_PROJECT_PREFIX,
    env_from_example,
    remove_leftover_test_stacks,
    stack_lock,
    write_private,
)

STEP = re.compile(r"^\[(\d)/8\] (\w+)\s+(ok|FAILED|skipped)\s+(\d+\.\d)s")
ALERT = re.compile(r"\[(alert|crit|emerg)\]|exited on signal")


def prepare(base: Path, ssh) -> ds.DeployServer:
    """Origin, checkouts, env files and the registry, as ds.deploy_server makes them; the
    stack itself is brought up by each run."""
    origin = ds.seed_origin(base)
    srv = base / "home" / "ubuntu"
    prod = srv / "main" / "ai-ia-backend"
    staging = srv / "staging" / "ai-ia-backend"
    ds.run(["git", "clone", "-q", "-b", "main", origin, prod])
    ds.run(["git", "clone", "-q", "-b", "staging", origin, staging])
    for checkout, example in ((prod, "prod.env.example"), (staging, "staging.env.example")):
        write_private(
            checkout / ".env",
            env_from_example(ROOT / "config" / example, BACKUP_AGE_RECIPIENT=ds.age_recipient()),
        )
    (prod / ".env.staging").symlink_to(staging / ".env")
    project = f"{TEST_PROJECT_PREFIX}firstdeploy_{uuid.uuid4().hex[:8]}"
    registry = ds.start_registry(base)
    return ds.DeployServer(base, origin, prod, staging, project, free_port(), free_port(), ssh,
                           registry)  # fmt: skip


def deploy_with_output(server: ds.DeployServer, args: list[str]) -> tuple[int, list]:
    """fab's output lines, each with the monotonic time it arrived."""
    proc = server.fab_popen(*args)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.monotonic(), line.rstrip("\n")))
    return proc.wait(timeout=1800), lines


def nginx_cgroup() -> dict:
    cid = ds.run(["docker", "inspect", "--format", "{{.Id}}", "aiia_nginx"]).stdout.strip()
    d = Path(f"/sys/fs/cgroup/memory/docker/{cid}")
    out: dict = {}
    try:
        out["peak_mb"] = round(int((d / "memory.max_usage_in_bytes").read_text()) / 2**20, 1)
        out["limit_mb"] = round(int((d / "memory.limit_in_bytes").read_text()) / 2**20, 1)
        out["failcnt"] = int((d / "memory.failcnt").read_text())
        oom = dict(line.split() for line in (d / "memory.oom_control").read_text().splitlines())
        out["oom_kill"] = int(oom.get("oom_kill", 0))
    except (OSError, ValueError):
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope")
        try:
            events = dict(line.split() for line in (v2 / "memory.events").read_text().splitlines())
            out["oom_kill"] = int(events.get("oom_kill", 0))
            out["peak_mb"] = round(int((v2 / "memory.peak").read_text()) / 2**20, 1)
        except (OSError, ValueError):
            pass
    return out


def one_run(server: ds.DeployServer, image: str, args) -> dict:
    ds.run(["git", "-C", server.prod, "checkout", "-q", "--detach", "v1"])
    t_up = time.monotonic()
    ds.start_stack(server.base, server.project, server.prod, server.http_port, server.https_port)
    up_s = time.monotonic() - t_up
    seen: list = []
    tallies, loops = [], []
    for method, n, expect in (("GET", args.get_loops, 200), ("POST", args.post_loops, 403)):
        for _ in range(n):
            tally = Tally(f"per connection {method}")
            tallies.append(tally)
            loops.append(PerConnection(tally, 900, server=server, host=ds.PROD_HOST,
                                       path="/api/notes/", method=method, expect=expect,
                                       rate=args.rate, seen=seen))  # fmt: skip
    since = ds.run(["date", "-u", "+%Y-%m-%dT%H:%M:%S"]).stdout.strip()
    for loop in loops:
        loop.start()
    time.sleep(1.0)
    started = time.monotonic()
    deploy_args = server.deploy_args("production", "--image", image, backup=not args.skip_backup)
    code, lines = deploy_with_output(server, deploy_args)
    time.sleep(2)
    for loop in loops:
        loop._stop.set()
    for loop in loops:
        loop.stop()
    logs = ds.run(["docker", "logs", "--since", since, "aiia_nginx"], check=False)
    alerts = [ln for ln in (logs.stdout + logs.stderr).splitlines() if ALERT.search(ln)]
    steps = [(t - started, m.group(2), m.group(3)) for t, ln in lines
             if (m := STEP.match(ln))]  # fmt: skip

    def step_at(t: float) -> str:
        rel = t - started
        if rel < 0:
            return "before the deploy"
        for end, name, _ in steps:
            if rel <= end:
                return name
        return "after the deploy"

    errors = dict.fromkeys(KINDS, 0)
    for tally in tallies:
        for k, v in tally.errors.items():
            errors[k] += v
    return {
        "deploy_exit": code,
        "up_s": round(up_s, 1),
        "deploy_s": round(lines[-1][0] - started, 1) if lines else None,
        "steps": [(round(end, 1), name, result) for end, name, result in steps],
        "requests": {
            m: sum(t.requests for t in tallies if t.name.endswith(m)) for m in ("GET", "POST")
        },  # fmt: skip
        "errors": errors,
        "error_list": [
            (round(t - started, 2), kind, step_at(t), text) for t, kind, text in sorted(seen)
        ],  # fmt: skip
        "problems": [p for t in tallies for p in t.problems],
        "nginx_alerts": alerts[:20],
        "nginx_cgroup": nginx_cgroup(),
        "output_tail": [ln for _, ln in lines[-12:]] if code != 0 else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="fresh ups, each with one deploy")
    parser.add_argument("--get-loops", type=int, default=4, help="GET loops (default 4)")
    parser.add_argument("--post-loops", type=int, default=1, help="POST loops (default 1)")
    parser.add_argument("--rate", type=float, default=5.0,
                        help="requests per second of each loop (default 5)")  # fmt: skip
    parser.add_argument(
        "--skip-backup",
        action="store_true",
        help="no pre-deploy backup (the remote tier's first deploy takes one)",
    )
    parser.add_argument("--json", help="also write the figures to this file (after each run)")
    parser.add_argument("--max-minutes", type=float, default=0,
                        help="start no run that the last one's duration says would end "
                        "after this many minutes (default: no bound)")  # fmt: skip
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="bench-first-deploy-"))
    runs: list[dict] = []
    with ds.ssh_server(base) as ssh:
        server = prepare(base, ssh)
        try:
            ds.publish(server.origin, server.work, "v2", {})
            image = server.registry.publish(server.origin, server.work, "v2")
            began = time.monotonic()
            for n in range(args.runs):
                t = time.monotonic()
                last = runs[-1]["run_s"] + 5 if runs else 0.0
                if args.max_minutes and t - began + last > args.max_minutes * 60:
                    print(f"stopping after {n} runs: another would pass {args.max_minutes:g} "
                          "minutes", flush=True)  # fmt: skip
                    break
                with stack_lock():
                    locked = time.monotonic()
                    remove_leftover_test_stacks()
                    try:
                        run = one_run(server, image, args)
                    finally:
                        ds.stop_stack(server.project, server.prod)
                run["lock_wait_s"] = round(locked - t, 1)
                run["run_s"] = round(time.monotonic() - locked, 1)
                runs.append(run)
                e = run["errors"]
                print(f"run {n + 1}: deploy exit {run['deploy_exit']}, "
                      f"{sum(run['requests'].values())} requests (GET {run['requests']['GET']}, "
                      f"POST {run['requests']['POST']}), errors "
                      + ", ".join(f"{k} {v}" for k, v in e.items())
                      + f"; up {run['up_s']}s, deploy {run['deploy_s']}s, run {run['run_s']}s "
                      f"(after {run['lock_wait_s']}s waiting for the stack lock); "
                      f"nginx {run['nginx_cgroup']}", flush=True)  # fmt: skip
                for err in run["error_list"]:
                    print(
                        f"    {err[0]:+8.2f}s {err[1]:<8} during {err[2]:<10} {err[3]}", flush=True
                    )
                for line in run["nginx_alerts"] + run["problems"] + run["output_tail"]:
                    print(f"    | {line}", flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(runs, indent=2) + "\n")
                # a tier waiting for the stack lock (it polls every 2 s) takes its turn here
                time.sleep(5)
        finally:
            ds.run(["docker", "image", "rm", image], check=False)
            server.registry.service.stop()

    total = {k: sum(r["errors"][k] for r in runs) for k in KINDS}
    requests = sum(sum(r["requests"].values()) for r in runs)
    print(f"\n{len(runs)} first deploys after a fresh up: {requests} requests one per "
          f"connection, errors " + ", ".join(f"{k} {v}" for k, v in total.items())
          + f"; deploys failed: {sum(r['deploy_exit'] != 0 for r in runs)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
