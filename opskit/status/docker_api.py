"""A few calls of the Docker Engine API over its unix socket, with the standard library.

The collector runs in a small container every minute: the Docker CLI (a 40 MB Go binary)
would cost more memory than the whole job, so it asks the engine directly: the
containers, their state and one-shot stats, the tail of their logs, a read-only probe
command inside PostgreSQL, PgBouncer and Redis, and USR1 to nginx after rotating its
access log. Nothing here starts, stops or removes anything.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

SOCKET = "/var/run/docker.sock"


class DockerError(RuntimeError):
    """The engine did not answer, or answered an error; the message says which call."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def demux(data: bytes) -> tuple[str, str]:
    """A non-TTY attach/logs stream (8-byte frame headers) -> (stdout, stderr)."""
    out, err = [], []
    i = 0
    while i + 8 <= len(data):
        kind, size = data[i], struct.unpack(">I", data[i + 4 : i + 8])[0]
        frame = data[i + 8 : i + 8 + size]
        (err if kind == 2 else out).append(frame)
        i += 8 + size
    return b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Docker:
    def __init__(self, socket_path: str = SOCKET, timeout_s: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        conn = _UnixConnection(self.socket_path, self.timeout_s)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError as exc:
            raise DockerError(
                f"{method} {path.split('?')[0]}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            conn.close()

    def _json(self, method: str, path: str, body: object = None, ok=(200,)) -> object:
        status, data = self._call(method, path, body)
        if status not in ok:
            raise DockerError(f"{method} {path.split('?')[0]}: HTTP {status} {data[:200]!r}")
        return json.loads(data) if data else None

    def info(self) -> dict:
        return self._json("GET", "/info")

    def containers(self, prefix: str = "") -> list[dict]:
        """`docker inspect` of every container whose name starts with `prefix`."""
        listed = self._json("GET", "/containers/json?all=1")
        names = sorted(c["Names"][0].lstrip("/") for c in listed if c.get("Names"))
        found = []
        for name in names:
            if name.startswith(prefix):
                try:
                    found.append(self.inspect(name))
                except DockerError:
                    continue  # removed since the listing
        return found

    def inspect(self, name: str) -> dict:
        return self._json("GET", f"/containers/{urllib.parse.quote(name)}/json")

    def stats(self, name: str) -> dict:
        """One reading, without the second sample `docker stats` waits a second for."""
        return self._json(
            "GET", f"/containers/{urllib.parse.quote(name)}/stats?stream=false&one-shot=true"
        )

    def logs(self, name: str, tail: int = 50, stdout: bool = True, stderr: bool = True) -> str:
        query = urllib.parse.urlencode(
            {"tail": tail, "stdout": int(stdout), "stderr": int(stderr), "timestamps": 1}
        )
        status, data = self._call("GET", f"/containers/{urllib.parse.quote(name)}/logs?{query}")
        if status != 200:
            raise DockerError(f"logs {name}: HTTP {status}")
        out, err = demux(data)
        return out + err

    def exec(self, name: str, argv: Sequence[str]) -> ExecResult:
        created = self._json(
            "POST",
            f"/containers/{urllib.parse.quote(name)}/exec",
            {"Cmd": list(argv), "AttachStdout": True, "AttachStderr": True},
            ok=(201,),
        )
        status, data = self._call("POST", f"/exec/{created['Id']}/start", {"Detach": False})
        if status != 200:
            raise DockerError(f"exec in {name}: HTTP {status}")
        out, err = demux(data)
        code = self._json("GET", f"/exec/{created['Id']}/json").get("ExitCode")
        return ExecResult(code if code is not None else -1, out, err)

    def signal(self, name: str, signal: str) -> None:
        self._json(
            "POST", f"/containers/{urllib.parse.quote(name)}/kill?signal={signal}", ok=(204,)
        )
