"""python -m opskit.status: one run of the collector (its container runs one every minute).

  run     read the box, the containers, nginx's log and the services; keep the minute
          in the history database; send the alerts; write the devstatus page
  show    the same readings printed as a table or JSON, nothing kept or sent
          (`inv monitor`, `fab monitor`)

Exit status: `run` 0 when it completed (alerts firing or not); `show` 1 when past a
threshold; 2 on wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from opskit.status import collect as C
from opskit.status import page, rules
from opskit.status.history import History
from opskit.status.report import alerts, as_dict, render_text


def _say(message: str) -> None:
    print(f"status: {message}", file=sys.stderr, flush=True)


def _webhook(env_file: Path | None):
    if env_file is None or not env_file.is_file():
        return None
    from dotenv import dotenv_values

    from opskit.shell import Secret

    url = (dotenv_values(env_file).get("SLACK_WEBHOOK_URL") or "").strip()
    return Secret(url) if url else None


def send(url, text: str) -> str | None:
    from opskit.deploy import notify

    return notify.send(url, {"text": text}, timeout=notify.TIMEOUT_S)


def run(opts: C.Options, now: float) -> int:
    hist = History(opts.db, now)
    try:
        state = hist.get("collector") or {}
        alert_state = hist.get("alerts") or {}
        previous_run = hist.get("last_run")
        snap = C.collect(opts, state, now)
        outcome = rules.evaluate(C.readings(snap, state), alert_state, now)
        for notice in outcome.notices:
            line = notice.message()
            if opts.webhook is None:
                _say(f"{line} (no SLACK_WEBHOOK_URL: logged only)")
                continue
            error = send(opts.webhook, line)
            _say(f"{line}" + (f" -- NOT delivered: {error}" if error else " -- sent"))
        hist.record(
            now,
            C.sample_of(snap),
            {env: (ok, ms) for env, (ok, ms, _d) in snap.uptime.items()},
            {"collector": state, "alerts": outcome.state, "last_run": now},
            C.request_figures(snap),
        )
        if opts.page_dir is not None:
            text = page.render(
                snap, hist, firing=outcome.firing(), previous_run=previous_run, db_note=hist.note
            )
            page.publish(opts.page_dir, text)
        _say(
            f"run at {int(now)}: {len(snap.containers)} containers, "
            f"{sum(m.requests for m in snap.requests.values())} requests read, "
            f"{len(outcome.notices)} notice(s), firing: {', '.join(outcome.firing()) or 'none'}"
        )
    finally:
        hist.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opskit.status",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "show"):
        p = sub.add_parser(name)
        p.add_argument("--nginx", default="nginx:443", help="HOST:PORT of nginx's TLS port")
        p.add_argument("--prefix", default=C.PREFIX, help="containers whose name starts so")
        p.add_argument("--deploy-log", action="append", type=Path, default=[])
        p.add_argument("--backup-dir", type=Path)
        p.add_argument("--drill-file", type=Path)
        p.add_argument("--docker-socket", default=C.Options.docker_socket)
        p.add_argument("--cgroup-root", type=Path, default=C.Options.cgroup_root,
                       help="the host's /sys/fs/cgroup (containers' memory and CPU)")  # fmt: skip
        p.add_argument("--domain", action="append", default=[], metavar="ENV=NAME",
                       help="the site name of an environment (default: the guide's)")  # fmt: skip
        if name == "run":
            p.add_argument("--db", type=Path, required=True)
            p.add_argument("--page-dir", type=Path)
            p.add_argument("--access-log", type=Path)
            p.add_argument("--env-file", type=Path, help="SLACK_WEBHOOK_URL is read from it")
            p.add_argument("--now", type=float, help="the clock, epoch seconds (replays, tests)")
        else:
            p.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    host, _, port = args.nginx.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--nginx: expected HOST:PORT, got {args.nginx!r}")
    domains = dict(C.DOMAINS)
    for item in args.domain:
        env, _, value = item.partition("=")
        if not value:
            parser.error(f"--domain: expected ENV=NAME, got {item!r}")
        domains[env] = value
    opts = C.Options(
        db=getattr(args, "db", Path(":memory:")),
        page_dir=getattr(args, "page_dir", None),
        access_log=getattr(args, "access_log", None),
        deploy_logs=args.deploy_log,
        backup_dir=args.backup_dir,
        drill_file=args.drill_file,
        nginx_host=host,
        nginx_port=int(port),
        domains=domains,
        prefix=args.prefix,
        docker_socket=args.docker_socket,
        cgroup_root=args.cgroup_root,
        webhook=_webhook(getattr(args, "env_file", None)),
    )
    if args.command == "run":
        return run(opts, args.now if args.now is not None else time.time())
    state: dict = {}
    C.prime(opts, state)  # CPU is a share of the time between two readings
    time.sleep(1.0)
    snap = C.collect(opts, state, time.time())
    print(json.dumps(as_dict(snap), indent=2) if args.json else render_text(snap))
    return 1 if alerts(snap) else 0


if __name__ == "__main__":
    sys.exit(main())
