"""Process and readiness helpers shared by every test tier.

Fixtures start real servers with these; nothing here knows about a particular server.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENSURE = ROOT / "scripts" / "ensure.sh"


class PrerequisiteError(RuntimeError):
    """A tier's prerequisite could not be installed or started: the tier fails, never skips."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], *, timeout: float, what: str, interval: float = 0.1):
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception as exc:  # noqa: BLE001 - the probe's failure is the answer "not yet"
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"{what} was not ready after {timeout:.0f}s{detail}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, *, timeout: float = 30, what: str | None = None) -> None:
    wait_until(lambda: port_open(host, port), timeout=timeout, what=what or f"{host}:{port}")


def ensure(*what: str) -> None:
    """Install what a tier needs with the project's own script (the one CI and README use)."""
    proc = subprocess.run(["bash", str(ENSURE), *what], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PrerequisiteError(
            f"scripts/ensure.sh {' '.join(what)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def venv_tool(name: str) -> str:
    """A console script of the virtualenv the tests run in (never PATH's: .venv/bin may not
    be on it, and another install of the same tool may be)."""
    path = Path(sys.executable).parent / name
    if not os.access(path, os.X_OK):
        raise PrerequisiteError(
            f"{name} is missing from {path.parent}: scripts/ensure.sh test installs the "
            "project with its test extra into .venv"
        )
    return str(path)


def require_binary(name: str, *ensure_args: str) -> str:
    """Path of `name`, installing it through ensure.sh when missing."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found:
        return found
    ensure(*(ensure_args or ("packages",)))
    found = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None
    )
    if not found:
        raise PrerequisiteError(
            f"{name} is still missing after scripts/ensure.sh {' '.join(ensure_args)}"
        )
    return found


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the test process dies, however it dies.

    Set after the child switched user (Popen does that first), so it is not cleared.
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


class Started:
    """`with server:` starts a server and stops it on the way out, whatever happened inside.

    For the harness's server classes, which have start() (returning the server) and stop().
    """

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class Service:
    """A server process run in the foreground, its output kept in a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log
        self.env = env
        self.cwd = cwd
        self.user = user
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            user=self.user,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads exist in the child yet
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        if not self.running:
            raise PrerequisiteError(
                f"{self.argv[0]} exited (code {self.proc.returncode if self.proc else '?'}):\n"
                f"{self.logs()[-4000:]}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if not self.running:
            return
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
