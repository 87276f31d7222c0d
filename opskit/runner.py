"""One way to run an argv on "the server", whichever transport reaches it.

The deploy engine only ever calls `Runner.run(argv, stdin=...)`. Over SSH that is a
Fabric `Connection` (any invoke `Context` works, which is how unit tests hand in a
`MockContext`); on the server itself (`scripts/deploy.sh`) it is a subprocess. Every
argv is joined with shlex on the way to a remote shell, so each word arrives as one
word; values that are secret or typed by a user travel on stdin, never in argv.

This module imports neither invoke nor fabric: `scripts/deploy.sh` runs the engine in a
container of the application image, which has neither.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from opskit.shell import join


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exited: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exited == 0

    @classmethod
    def of(cls, ok: bool, stdout: str = "", stderr: str = "") -> Result:
        """An answer without its command: saved output in tests, a probe's outcome."""
        return cls((), 0 if ok else 1, stdout, stderr)

    def error(self) -> str:
        """The last line of what it printed: enough to say why a question failed."""
        return self.tail(1) or "no output"

    def tail(self, lines: int = 15) -> str:
        """The last lines of stderr (else stdout): what to show when a command failed."""
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-lines:])


class CommandFailed(RuntimeError):
    def __init__(self, result: Result, what: str = "") -> None:
        self.result = result
        shown = what or join(result.argv[:6]) + (" ..." if len(result.argv) > 6 else "")
        detail = result.tail()
        super().__init__(
            f"{shown} failed (exit {result.exited})" + (f": {detail}" if detail else "")
        )


class Runner:
    """Runs argv lists on one machine; `where` says which, for messages."""

    where = "?"

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None
    ) -> Result:
        raise NotImplementedError

    def check(self, argv: Sequence[str], *, what: str = "", **how) -> Result:
        """run(), raising CommandFailed (named `what`) unless it exited 0."""
        result = self.run(argv, **how)
        if not result.ok:
            raise CommandFailed(result, what)
        return result

    def ask(self, argv: Sequence[str], *, assume: str | None = None, **how) -> Result:
        """A read-only question. `assume` is the answer a dry run takes instead of asking,
        when the question is about something only a real run creates (a new container)."""
        return self.run(argv, **how)


NOT_RUN = "(dry run: not run)\n"


class DryRunner(Runner):
    """What a dry run talks to: questions go to the real server, changes are only shown.

    Every command is shown, in order, as the real run would send it (`? ` marks a question
    that was asked; stdin, where secrets travel, is never shown). A change answers success
    with NOT_RUN; a question about what only a real run would create gets its `assume`.
    `planned` keeps the commands, for comparison with what a real run sent.
    """

    def __init__(self, real: Runner, out) -> None:
        self.real = real
        self.out = out
        self.where = real.where
        self.planned: list[tuple[str, ...]] = []

    def _show(self, argv: Sequence[str], mark: str) -> tuple[str, ...]:
        argv = tuple(str(a) for a in argv)
        self.planned.append(argv)
        self.out(f"  {mark}{join(argv)}")
        return argv

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None
    ) -> Result:
        return Result(self._show(argv, ""), 0, NOT_RUN)

    def ask(self, argv: Sequence[str], *, assume: str | None = None, **how) -> Result:
        shown = self._show(argv, "? ")
        if assume is not None:
            return Result(shown, 0, assume)
        return self.real.ask(argv, **how)


class _WholeStdin(io.StringIO):
    """stdin for invoke that hands over everything at the first read.

    invoke reads a stream that is not a terminal one byte per call, sleeping 10 ms between
    calls: a 3 KB env file took 30 s to reach `docker run --env-file /dev/stdin`.
    """

    def read(self, size: int | None = -1) -> str:
        return super().read()


class ContextRunner(Runner):
    """Through an invoke Context: a Fabric Connection (SSH) or, in unit tests, a MockContext."""

    def __init__(self, context, where: str | None = None) -> None:
        self.context = context
        if where is None:
            host = getattr(context, "host", None)
            user = getattr(context, "user", None)
            port = getattr(context, "port", None)
            where = f"{user}@{host}:{port}" if host else "local"
        self.where = where

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None
    ) -> Result:
        argv = tuple(str(a) for a in argv)
        kwargs: dict = {"hide": True, "warn": True, "pty": False}
        # never the operator's terminal: a command that wants input gets EOF at once
        kwargs["in_stream"] = _WholeStdin(stdin or "")
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            res = self.context.run(join(argv), **kwargs)
        except Exception as exc:  # noqa: BLE001 - invoke's and paramiko's, named below
            kind = type(exc).__name__
            if kind == "CommandTimedOut":
                return Result(argv, 124, "", f"timed out after {timeout}s")
            if kind in ("ThreadException", "SSHException", "NoValidConnectionsError") or (
                isinstance(exc, OSError)
            ):
                # the connection failed under the command: an answer, not a crash, so the
                # caller can still report, clean up and release what it holds
                return Result(argv, 255, "", f"connection to {self.where} failed: {kind}")
            raise
        return Result(argv, res.exited, res.stdout or "", res.stderr or "")


class LocalRunner(Runner):
    """A subprocess on this machine, optionally through a prefix such as nsenter."""

    def __init__(self, prefix: Sequence[str] = (), where: str = "local") -> None:
        self.prefix = tuple(prefix)
        self.where = where

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None
    ) -> Result:
        argv = tuple(str(a) for a in argv)
        try:
            proc = subprocess.run(
                [*self.prefix, *argv],
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return Result(argv, 124, "", f"timed out after {timeout}s")
        except OSError as exc:
            return Result(argv, 127, "", str(exc))
        return Result(argv, proc.returncode, proc.stdout, proc.stderr)


class BridgeRunner(Runner):
    """Commands run by the host's shell while this process runs in a container.

    `scripts/deploy.sh` starts the engine in a container of the application image (the
    host needs no Python) and executes, on the host, each command the engine asks for.
    The two talk over the container's stdin/stdout, one line each way per command; the
    argv, stdin and output travel as files in a private directory both can see (the
    script makes it mode 0700 on a tmpfs, so a secret handed to a command's stdin never
    reaches a disk):

        engine -> script:  run N TIMEOUT      (argv in N.argv, NUL-separated; stdin in N.in)
        script -> engine:  done N EXIT        (output in N.out and N.err)
    """

    def __init__(self, directory: str, requests=None, replies=None, where: str = "local") -> None:
        import sys

        self.directory = directory
        self.requests = requests or sys.stdout
        self.replies = replies or sys.stdin
        self.where = where
        self._n = 0

    def run(
        self, argv: Sequence[str], *, stdin: str | None = None, timeout: float | None = None
    ) -> Result:
        import os

        argv = tuple(str(a) for a in argv)
        self._n += 1
        base = os.path.join(self.directory, str(self._n))
        old = os.umask(0o077)
        try:
            with open(base + ".argv", "wb") as f:
                f.write(b"".join(a.encode() + b"\0" for a in argv))
            with open(base + ".in", "w") as f:
                f.write(stdin or "")
        finally:
            os.umask(old)
        self.requests.write(f"run {self._n} {int(timeout or 0)}\n")
        self.requests.flush()
        reply = self.replies.readline().split()
        if len(reply) != 3 or reply[0] != "done" or reply[1] != str(self._n):
            raise RuntimeError(f"the deploy script answered {reply!r} to command {self._n}")
        out = err = ""
        for suffix in (".out", ".err", ".argv", ".in"):
            path = base + suffix
            try:
                with open(path, errors="replace") as f:
                    text = f.read()
            except FileNotFoundError:
                text = ""
            if suffix == ".out":
                out = text
            elif suffix == ".err":
                err = text
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return Result(argv, int(reply[2]), out, err)

    def close(self, code: int) -> None:
        self.requests.write(f"exit {int(code)} 0\n")
        self.requests.flush()
