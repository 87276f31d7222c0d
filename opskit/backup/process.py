"""The one place where backup and restore commands are executed (local subprocesses).

A command built by opskit.backup.commands runs here, whatever its transport: a client
tool on this machine, or `docker exec ...` into the PostgreSQL container. Passwords go
into the child's environment as PGPASSWORD, never into argv; stderr goes to a temporary
file (never a pipe nobody drains), and its tail is what an error message quotes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from opskit.shell import Secret, join

STDERR_TAIL = 2000
# Bigger pipes mean fewer wake-ups between pg_dump and us (Linux allows 1 MiB unprivileged).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


def child_env(password: Secret | None = None, extra: dict[str, str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env.setdefault("LANG", "C.UTF-8")
    if password:
        env["PGPASSWORD"] = password.reveal()
    env.update(extra or {})
    return env


def describe_exit(code: int | None) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def widen_pipe(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe only costs a few more system calls


class Child:
    """A running command with its stderr captured to a temporary file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        stdin: int | None = None,
        stdout: int | object | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=stdin, stdout=stdout, stderr=self._stderr, env=env, bufsize=0
            )
        except OSError as exc:
            self._stderr.close()
            raise ProcessError(f"{name}: cannot start {self.argv[0]!r}: {exc.strerror}") from None

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stderr_tail(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - STDERR_TAIL))
        return self._stderr.read().decode("utf-8", "replace").strip()

    def failure(self, what: str = "") -> str:
        """`pg_dump exited with status 1: <its stderr>`."""
        tail = self.stderr_tail()
        detail = f": {tail}" if tail else ""
        return f"{self.name} {describe_exit(self.proc.returncode)}{what}{detail}"

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()


class ProcessError(RuntimeError):
    """A command failed; the message says which, how, and its stderr."""


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    input_text: str | None = None,
    check: bool = True,
) -> Result:
    """Run a short command to completion (psql, --version); raise ProcessError on failure."""
    try:
        proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise ProcessError(f"{name}: cannot start {argv[0]!r}: {exc.strerror}") from None
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise ProcessError(
            f"{name} {describe_exit(proc.returncode)}: {proc.stderr.strip()[-STDERR_TAIL:]}"
            f"\n  command: {join(argv)}"
        )
    return result
