"""Load through the web nodes' published 443 while the cluster changes under it.

Two kinds of client per target: kept-alive (one HTTPS connection reused for every
request, as browsers and wrk do) and one request per connection. Every answer other
than 200 and every connection error is a failure; /health/ answers carry the version, so
the test sees which release answered when.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from dataclasses import dataclass, field


def _context() -> ssl.SSLContext:
    # the nginx image's first-start certificate is self-signed: the test checks answers,
    # not the chain (the services tier checks TLS)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Conn(http.client.HTTPSConnection):
    """To 127.0.0.1:port, with the site's name as SNI and Host."""

    def __init__(self, port: int, host: str, timeout: float = 15) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout, context=_context())
        self._sni = host

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._sni)


def get(port: int, host: str, path: str = "/health/", timeout: float = 15) -> tuple[int, dict]:
    conn = _Conn(port, host, timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        res = conn.getresponse()
        body = res.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = {"body": body[:200].decode(errors="replace")}
        return res.status, data
    finally:
        conn.close()


@dataclass
class Load:
    targets: list[tuple[int, str]]  # (published port, site name)
    kept_alive: int = 2  # clients per target
    per_request: int = 2
    interval_s: float = 0.05
    max_s: float = 600.0
    results: list[tuple[float, str, int | str, str]] = field(default_factory=list)
    failures: list[tuple[float, str, int | str, str]] = field(default_factory=list)
    reconnects: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _record(self, kind: str, port: int, status, data: dict) -> None:
        with self._lock:
            version = str(data.get("version", ""))
            self.results.append((time.monotonic(), f"{kind}:{port}", status, version))
            if status != 200:
                self.failures.append(
                    (time.monotonic(), f"{kind}:{port}", status, json.dumps(data)[:300])
                )

    def _kept_alive(self, port: int, host: str) -> None:
        conn = None
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.max_s:
            if conn is None:
                conn = _Conn(port, host)
                with self._lock:
                    self.reconnects += 1
            try:
                conn.request("GET", "/health/", headers={"Host": host})
                res = conn.getresponse()
                body = res.read()
                data = json.loads(body) if body.startswith(b"{") else {"body": body[:200].decode()}
                self._record("keepalive", port, res.status, data)
                if res.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._record("keepalive", port, f"{type(exc).__name__}: {exc}", {})
                conn.close()
                conn = None
            self._stop.wait(self.interval_s)
        if conn is not None:
            conn.close()

    def _per_request(self, port: int, host: str) -> None:
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.max_s:
            try:
                status, data = get(port, host)
            except (OSError, http.client.HTTPException) as exc:
                status, data = f"{type(exc).__name__}: {exc}", {}
            self._record("per-request", port, status, data)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for port, host in self.targets:
            for _ in range(self.kept_alive):
                self._spawn(self._kept_alive, port, host)
            for _ in range(self.per_request):
                self._spawn(self._per_request, port, host)
        return self

    def _spawn(self, fn, *args) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.seconds = time.monotonic() - self.started

    def versions(self, since: float = 0.0) -> list[str]:
        seen: list[str] = []
        for t, _kind, status, version in self.results:
            if t >= since and status == 200 and version and version not in seen:
                seen.append(version)
        return seen

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for _t, kind, _s, _v in self.results:
            kinds[kind] = kinds.get(kind, 0) + 1
        return (
            f"{len(self.results)} requests in {self.seconds:.0f}s "
            f"({len(self.results) / max(self.seconds, 1e-9):.0f}/s), "
            f"{len(self.failures)} failed, kept-alive connections opened: {self.reconnects}; "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        )
