"""The command line of scripts/deploy.sh: the deploy engine on the server itself.

The script runs `python -m opskit.deploy` in a container of the application image (which
has neither invoke nor fabric) and executes on the host each command the engine asks for
(opskit.runner.BridgeRunner).
"""

from __future__ import annotations

import argparse
import sys

from opskit.commands import deploy as cmd
from opskit.deploy.plan import EXIT_FAILED, Plan
from opskit.deploy.steps import Deployer
from opskit.runner import BridgeRunner


def main(argv: list[str] | None = None) -> int:
    """`python -m opskit.deploy`: what scripts/deploy.sh runs in its container."""
    parser = argparse.ArgumentParser(
        prog="scripts/deploy.sh",
        description="Deploy on this server (the same steps as `fab deploy`).",
    )
    parser.add_argument("env", choices=("production", "staging"))
    parser.add_argument("--path", required=True, help="the environment's checkout")
    parser.add_argument("--bridge", required=True, help="the script's command directory")
    parser.add_argument("--who", default="", help="who runs the deploy")
    parser.add_argument("--holder-pid", type=int, default=None, help="the script's pid")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ref", help="git ref to build (default: the environment's branch)")
    source.add_argument("--image", help="registry image to pull instead of building")
    source.add_argument(
        "--rollback",
        nargs="?",
        const="",
        metavar="RELEASE",
        help="bring back a kept release (default: the previous one)",
    )
    parser.add_argument("--why", default="", help="the reason, kept in the lock and the log")
    parser.add_argument("--skip-backup", action="store_true", help="no pre-deploy backup")
    parser.add_argument("--health-attempts", type=int, default=30)
    parser.add_argument("--health-interval", type=float, default=2.0)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    parser.add_argument("--keep", type=int, default=3, help="release images kept")
    parser.add_argument("--extra-ca", help="CA bundle for builds behind a TLS proxy")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)

    runner = BridgeRunner(args.bridge, where="this server")
    code = EXIT_FAILED
    try:
        try:
            plan = Plan(
                env=cmd.environment(args.env, args.path),
                action="rollback" if args.rollback is not None else "deploy",
                ref=args.ref,
                image=args.image,
                to_release=args.rollback or None,
                why=args.why,
                who=args.who,
                skip_backup=args.skip_backup,
                health_attempts=args.health_attempts,
                health_interval_s=args.health_interval,
                drain_timeout_s=args.drain_timeout,
                keep_releases=args.keep,
                extra_ca=args.extra_ca,
                holder_pid=args.holder_pid,
                transcript=False,  # the script tees everything into logs/deploy_<env>_*.log
                server="this server",
                dry_run=args.dry_run,
            )
        except (cmd.BuilderError, ValueError) as exc:
            print(f"deploy.sh: {exc}", file=sys.stderr)
            code = 2
            return code
        outcome = Deployer(
            runner, plan, out=lambda line: print(line, file=sys.stderr, flush=True)
        ).run()
        code = outcome.exit_code
        return code
    finally:
        runner.close(code)
