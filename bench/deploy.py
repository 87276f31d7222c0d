"""How long a deploy takes, and what the guide's way costs in comparison.

Usage:
    python bench/deploy.py [--runs N] [--rate R] [--json FILE]

Brings up what the remote tier's deploy tests use (tests/remote/deploy_support.py): an
sshd on loopback, the server stack in this machine's engine, a registry holding a new
build of the app. Then, in one run, side by side, with a loop of requests through nginx
(R per second) going on throughout:

- `fab deploy --image` of the new version: wall time, and the seconds from "deploy
  started" to "new version serving" (the first /health/ answer through nginx naming it);
- `fab deploy` of the image already serving (a no-op redeploy): wall time;
- the guide's way for comparison: `docker compose up -d --force-recreate django_prod`
  with the new image, then `nginx -s reload` (the guide's "restart nginx"): the old
  container stops before the new one is started and healthy; seconds to the new version
  and the requests that failed meanwhile.

Prints a table, then the figures as JSON. Never fails on a time: it reports. It needs
the engine to itself (it holds the stack lock) and takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.remote import deploy_support as ds  # noqa: E402

STEP = re.compile(r"^\[(\d)/8\] (\w+)\s+(ok|FAILED|skipped)\s+(\d+\.\d)s")


class VersionWatch:
    """Polls /health/ through nginx ten times a second; notes when `version` first answers."""

    def __init__(self, server: ds.DeployServer, host: str, version: str) -> None:
        self.server, self.host, self.version = server, host, version
        self.seen_at: float | None = None
        self._stop = threading.Event()

    def _loop(self) -> None:
        while not self._stop.is_set() and self.seen_at is None:
            try:
                status, data = self.server.https(self.host)
                if status == 200 and data.get("version") == self.version:
                    self.seen_at = time.monotonic()
            except OSError:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> VersionWatch:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def steps(output: str) -> dict[str, float]:
    return {m.group(2): float(m.group(4)) for m in map(STEP.match, output.splitlines()) if m}


def fab_deploy(server: ds.DeployServer, image: str, version: str, rate: float) -> dict:
    with (
        ds.Load(server, ds.PROD_HOST, rate=rate) as load,
        VersionWatch(server, ds.PROD_HOST, version) as watch,
    ):
        started = time.monotonic()
        proc = server.fab(*server.deploy_args("production", "--image", image))
        wall = time.monotonic() - started
        if watch.seen_at is None:
            watch._thread.join(15)
    if proc.returncode != 0:
        raise SystemExit(f"fab deploy failed:\n{proc.stdout}\n{proc.stderr}")
    return {
        "wall_s": round(wall, 1),
        "to_new_version_s": round(watch.seen_at - started, 1) if watch.seen_at else None,
        "steps_s": steps(proc.stdout),
        "requests": len(load.results),
        "failed_requests": len(load.failures),
        "requests_per_s": round(load.per_second, 1),
    }


def compose_recreate(server: ds.DeployServer, image: str, version: str, rate: float) -> dict:
    """The guide's deploy step: recreate django_prod from the new image."""
    ds.run(["docker", "tag", image, "aiia/app:guide-bench"])
    env = {**os.environ, "APP_IMAGE": "aiia/app", "APP_TAG_PRODUCTION": "guide-bench"}
    argv = ["docker", "compose", "-p", server.project, "--project-directory", str(server.prod),
            "-f", str(server.prod / "docker-compose.yml"), "up", "-d", "--no-deps",
            "--force-recreate", "--no-build", "django_prod"]  # fmt: skip
    with (
        ds.Load(server, ds.PROD_HOST, rate=rate) as load,
        VersionWatch(server, ds.PROD_HOST, version) as watch,
    ):
        started = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        # the guide's "Restart Nginx": nginx resolved the old container's address
        ds.run(["docker", "exec", "aiia_nginx", "nginx", "-s", "reload"], check=False)
        wall = time.monotonic() - started
        deadline = time.monotonic() + 120
        while watch.seen_at is None and time.monotonic() < deadline:
            time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"compose up failed:\n{proc.stderr}")
    return {
        "wall_s": round(wall, 1),
        "to_new_version_s": round(watch.seen_at - started, 1) if watch.seen_at else None,
        "requests": len(load.results),
        "failed_requests": len(load.failures),
        "requests_per_s": round(load.per_second, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="deploys of each kind (default 1)")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    results: dict = {"new_version": [], "noop_redeploy": [], "guide_recreate": []}
    base = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    with ds.ssh_server(base) as ssh, ds.deploy_server(base, ssh) as server:
        for n in range(args.runs):
            tag = f"bench{n + 2}"
            ds.publish(server.origin, server.work, tag, {})
            image = server.registry.publish(server.origin, server.work, tag)
            results["new_version"].append(fab_deploy(server, image, tag, args.rate))
            results["noop_redeploy"].append(fab_deploy(server, image, tag, args.rate))
            guide = f"guide{n + 2}"
            ds.publish(server.origin, server.work, guide, {})
            guide_image = server.registry.publish(server.origin, server.work, guide)
            ds.run(["docker", "pull", "--quiet", guide_image])
            results["guide_recreate"].append(
                compose_recreate(server, guide_image, guide, args.rate)
            )
        ds.run(["docker", "image", "rm", "aiia/app:guide-bench"], check=False)

    print(f"{'':<34}{'wall s':>8}{'to new version s':>18}{'failed / requests':>20}")
    for kind, label in (
        ("new_version", "fab deploy, new version"),
        ("noop_redeploy", "fab deploy, same image (no-op)"),
        ("guide_recreate", "guide: compose up --force-recreate"),
    ):
        for r in results[kind]:
            to_new = "-" if kind == "noop_redeploy" else str(r["to_new_version_s"])
            print(f"{label:<34}{r['wall_s']:>8}{to_new:>18}"
                  f"{str(r['failed_requests']) + ' / ' + str(r['requests']):>20}")  # fmt: skip
    for kind in ("new_version", "noop_redeploy"):
        for r in results[kind]:
            print(f"  {kind} steps: " + ", ".join(f"{k} {v}s" for k, v in r["steps_s"].items()))
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
