"""What every task module shares: where the project is, how a command runs or is shown.

Commands are argv lists from opskit.commands; they run here, through `c.run`, and nowhere
else. With `dry_run` they are printed and nothing runs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from invoke import Exit

from opskit import devenv
from opskit.runner import Result
from opskit.settings import ENVIRONMENTS
from opskit.shell import MASK, join

ENV_HELP = "local, staging or production (default: ENVIRONMENT of .env, else local)"
DRY_HELP = "print the commands and run none"


def project_root(*, outside_is_cwd: bool = False) -> Path:
    """The checkout: the nearest directory up from here holding tasks.py and opskit/.

    Run outside a checkout (`inv --search-root`), that is the checkout opskit came from,
    or with `outside_is_cwd` the current directory (backups land where the operator is).
    """
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "tasks.py").is_file() and (candidate / "opskit").is_dir():
            return candidate
    return here if outside_is_cwd else Path(__file__).resolve().parents[2]


def environment(env: str | None, root: Path | None = None) -> str:
    """--env as given, else ENVIRONMENT of the checkout's .env, else local."""
    chosen = env or devenv.environment_of(root or project_root()) or "local"
    if chosen not in ENVIRONMENTS:
        raise Exit(f"--env {chosen}: unknown environment; use {', '.join(ENVIRONMENTS)}", code=2)
    return chosen


def compose_project() -> str | None:
    """COMPOSE_PROJECT_NAME when set: compose itself then uses it over the files' `name:`."""
    return os.environ.get("COMPOSE_PROJECT_NAME") or None


def say(message: str) -> None:
    """Progress on stderr, so stdout stays the result (a table, JSON, the logs)."""
    print(message, file=sys.stderr, flush=True)


def shown(argv: Sequence[str], env: Mapping[str, str] | None = None, secret=()) -> str:
    """The command as an operator could type it: env first, secret values as ***."""
    prefix = [f"{k}={MASK if k in secret else v}" for k, v in (env or {}).items()]
    return " ".join([*prefix, join(argv)])


def in_root(c, root: Path):
    """Run from the checkout's root, where the compose files and .env are."""
    return c.cd(str(root)) if Path.cwd().resolve() != root else _Nothing()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run(
    c,
    argv: Sequence[str],
    *,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    secret: Sequence[str] = (),
    pty: bool = False,
    warn: bool = False,
    hide=None,
    timed: bool = True,
):
    """Run one command (or, with dry_run, print it); env values reach only the child.

    A command that ran visibly and succeeded gets a line with its duration (`timed`).
    """
    if dry_run:
        print(shown(argv, env, secret))
        return None
    started = time.monotonic()
    kwargs = {"warn": warn, "pty": pty}
    if env:
        kwargs["env"] = dict(env)
    if hide is not None:
        kwargs["hide"] = hide
    result = c.run(join(argv), **kwargs)
    if timed and hide is None and result is not None and result.ok:
        say(f"    ok in {time.monotonic() - started:.1f}s")
    return result


def ask(c, argv: Sequence[str]) -> Result:
    """Run a read-only question (warn, hidden, no stdin) and return its output."""
    result = c.run(join(argv), warn=True, hide=True, in_stream=False)
    return Result(tuple(argv), result.exited, result.stdout or "", result.stderr or "")


def interactive() -> bool:
    return sys.stdin.isatty()


def confirm(question: str, *, yes: bool, refuse: str) -> None:
    """Go on only after --yes or a typed 'yes'; without a terminal, refuse with `refuse`."""
    if yes:
        return
    if not interactive():
        raise Exit(refuse, code=1)
    answer = input(f"{question} Type 'yes' to go on: ").strip().lower()
    if answer != "yes":
        raise Exit("stopped: nothing was changed", code=1)


def child_env(names: Sequence[str], values: Mapping[str, str]) -> dict[str, str]:
    """Values for names, from this process's environment first, then from `values`."""
    return {n: os.environ.get(n) or values.get(n, "") for n in names}
