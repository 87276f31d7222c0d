"""An HTTP/2 client that treats a server's GOAWAY as RFC 9113 says a browser does.

h2load (nghttp2) counts every stream it sent and got no answer to as a failure. On a
graceful shutdown (nginx's reload: its old workers' connections) a server sends GOAWAY
naming the last stream it took, and ignores every stream the client opened after it:
those were never processed, and RFC 9113 §6.8 and §8.7 let a client send them again on
a new connection, whatever their method; browsers do. A stream at or below that
last-stream-id, or one the connection lost without a GOAWAY, may have been processed:
that is a failure here, as it is for a browser. REFUSED_STREAM (§8.7) is retried too.

`Browser` keeps one connection open across its runs, opens a new one after a GOAWAY, and
sends `rps` requests a second on it (up to `max_streams` at once), each with a 10 s
deadline. Its figures: requests (each counted once, however often it was sent), errors
by kind (status, connect, read, write, timeout), answers by status, and how many streams
were sent again because a GOAWAY or REFUSED_STREAM said they were not processed.

The h2 library (python-hyper's h2, the HTTP/2 state machine behind httpx's HTTP/2) does the
framing, HPACK and flow control; this module only decides what happens to each request.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3


@dataclass
class Request:
    method: str
    attempts: int = 0
    started: float = 0.0  # when it was first sent (its deadline runs from there)


@dataclass
class Figures:
    requests: int = 0
    errors: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("status", "connect", "read", "write", "timeout"), 0)
    )
    statuses: dict[str, int] = field(default_factory=dict)
    retried_goaway: int = 0
    retried_refused: int = 0
    goaways: int = 0


class _Conn:
    """One TLS connection speaking HTTP/2 through h2's state machine."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.h2.initiate_connection()
        self.streams: dict[int, tuple[Request, dict]] = {}
        self.goaway_last: int | None = None  # last-stream-id of a GOAWAY received
        self.closed = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    @property
    def open_for_new(self) -> bool:
        return not self.closed and self.goaway_last is None

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class Browser:
    """Requests to one https URL over HTTP/2, retried as RFC 9113 allows (see the module)."""

    def __init__(self, *, host: str, port: int, path: str, method: str, expect: int,
                 body: bytes, rps: float, max_streams: int = 4) -> None:  # fmt: skip
        self.host, self.port, self.path = host, port, path
        self.method, self.expect, self.body = method, expect, body
        self.interval = 1 / rps
        self.max_streams = max_streams
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE  # nginx's own certificate, on loopback
        self.context.set_alpn_protocols(["h2"])
        self.conn: _Conn | None = None
        self.queue: deque[Request] = deque()  # to be sent (new, or again)
        self.draining: list[_Conn] = []  # connections that said GOAWAY, finishing streams
        self.fig = Figures()

    # --- connections ----------------------------------------------------------------------

    def _connect(self) -> _Conn | None:
        try:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT_S)
            sock = self.context.wrap_socket(raw, server_hostname=self.host)
            if sock.selected_alpn_protocol() != "h2":
                raise ConnectionError(f"ALPN chose {sock.selected_alpn_protocol()!r}, not h2")
            sock.settimeout(TIMEOUT_S)
            conn = _Conn(sock)
            conn.flush()
            return conn
        except (OSError, ssl.SSLError, ConnectionError):
            return None

    def _lost(self, conn: _Conn, kind: str) -> None:
        """The connection is gone: what it still carried was answered, sent again or lost."""
        conn.close()
        for sid, (req, _resp) in list(conn.streams.items()):
            if conn.goaway_last is not None and sid > conn.goaway_last:
                self._again(req, goaway=True)
            else:
                self._fail(req, kind)
        conn.streams.clear()
        if self.conn is conn:
            self.conn = None

    # --- requests -------------------------------------------------------------------------

    def _again(self, req: Request, *, goaway: bool) -> None:
        if req.attempts >= MAX_ATTEMPTS:
            self._fail(req, "read")
            return
        if goaway:
            self.fig.retried_goaway += 1
        else:
            self.fig.retried_refused += 1
        self.queue.appendleft(req)

    def _fail(self, req: Request, kind: str) -> None:
        self.fig.requests += 1
        self.fig.errors[kind] += 1

    def _done(self, req: Request, status: int) -> None:
        self.fig.requests += 1
        self.fig.statuses[str(status)] = self.fig.statuses.get(str(status), 0) + 1
        if status != self.expect:
            self.fig.errors["status"] += 1

    def _send(self, req: Request) -> None:
        conn = self.conn
        if conn is None:
            conn = self.conn = self._connect()
            if conn is None:
                self._fail(req, "connect")
                return
        sid = conn.h2.get_next_available_stream_id()
        headers = [(":method", req.method), (":scheme", "https"),
                   (":authority", self.host), (":path", self.path)]  # fmt: skip
        body = self.body if req.method == "POST" else b""
        if body:
            headers += [("content-type", "application/json"),
                        ("content-length", str(len(body)))]  # fmt: skip
        req.attempts += 1
        req.started = req.started or time.monotonic()
        conn.streams[sid] = (req, {})
        try:
            conn.h2.send_headers(sid, headers, end_stream=not body)
            if body:
                conn.h2.send_data(sid, body, end_stream=True)
            conn.flush()
        except (OSError, h2.exceptions.ProtocolError):
            # the server may have said GOAWAY and closed meanwhile: read what it sent
            # before judging what became of each stream
            deadline = time.monotonic() + 1.0
            while not conn.closed and time.monotonic() < deadline:
                self._poll([conn], 0.1)
            if not conn.closed:
                self._lost(conn, "write")

    def _poll(self, conns: list[_Conn], wait: float) -> None:
        """Handle what the servers sent within `wait` seconds."""
        ready = [c for c in conns if c.sock.pending()]
        if not ready:
            try:
                socks, _, _ = select.select([c.sock for c in conns], [], [], wait)
            except (OSError, ValueError):
                socks = [c.sock for c in conns]
            ready = [c for c in conns if c.sock in socks]
        for conn in ready:
            self._read(conn)

    def _read(self, conn: _Conn) -> None:
        if conn.closed:
            return
        try:
            data = conn.sock.recv(65536)
        except (OSError, ssl.SSLError):
            self._lost(conn, "read")
            return
        if not data:
            self._lost(conn, "read")
            return
        try:
            events = conn.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._lost(conn, "read")
            return
        for ev in events:
            self._event(conn, ev)
        if conn.closed:
            return
        try:
            conn.flush()
        except OSError:
            pass  # a connection the server shut after its GOAWAY: the next read tells

    def _event(self, conn: _Conn, ev) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            entry = conn.streams.get(ev.stream_id)
            if entry:
                entry[1]["status"] = int(dict(ev.headers)[":status"])
        elif isinstance(ev, h2.events.DataReceived):
            conn.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            entry = conn.streams.pop(ev.stream_id, None)
            if entry:
                self._done(entry[0], entry[1].get("status", 0))
        elif isinstance(ev, h2.events.StreamReset):
            entry = conn.streams.pop(ev.stream_id, None)
            if entry:
                if ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    self._again(entry[0], goaway=False)
                else:
                    self._fail(entry[0], "read")
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.fig.goaways += 1
            conn.goaway_last = ev.last_stream_id
            # streams the server never took go again on a new connection; those it took
            # are still answered on this one (§6.8), which closes after them
            for sid in [s for s in conn.streams if s > ev.last_stream_id]:
                self._again(conn.streams.pop(sid)[0], goaway=True)
            if conn.streams:
                # h2 closes its state machine on a GOAWAY and would refuse those answers
                # (python-hyper/h2#1181, open): keep it open for them; this client opens no
                # new stream on a connection that said GOAWAY
                conn.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            else:
                conn.close()
                if self.conn is conn:
                    self.conn = None

    # --- the loop -------------------------------------------------------------------------

    def run(self, seconds: float, stop) -> Figures:
        """Send requests for `seconds` (or until `stop` is set), then let the last ones
        finish; the figures of this run (the connection stays open for the next)."""
        self.fig = Figures()
        end = time.monotonic() + seconds
        next_at = time.monotonic()
        while True:
            # a connection that said GOAWAY takes no new stream; it finishes its own
            if self.conn is not None and (self.conn.closed or not self.conn.open_for_new):
                if not self.conn.closed:
                    self.draining.append(self.conn)
                self.conn = None
            now = time.monotonic()
            sending = now < end and not stop.is_set()
            if sending and now >= next_at:
                self.queue.append(Request(self.method))
                next_at += self.interval
            while self.queue and (
                self.conn is None
                or (self.conn.open_for_new and len(self.conn.streams) < self.max_streams)
            ):
                self._send(self.queue.popleft())
            self.draining = [c for c in self.draining if not c.closed]
            conns = [c for c in (self.conn, *self.draining) if c is not None and not c.closed]
            wait = min(0.05, max(0.0, next_at - time.monotonic())) if sending else 0.05
            if conns:
                self._poll(conns, wait)
            else:
                time.sleep(wait)
            for c in conns:
                for sid, (req, _r) in list(c.streams.items()):
                    if time.monotonic() - req.started > TIMEOUT_S:
                        del c.streams[sid]
                        try:
                            c.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                        except h2.exceptions.ProtocolError:
                            pass
                        self._fail(req, "timeout")
            for c in self.draining:
                if not c.streams:
                    c.close()
            pending = self.queue or any(
                c.streams for c in (self.conn, *self.draining) if c is not None and not c.closed
            )
            if not sending and not pending:
                return self.fig

    def close(self) -> None:
        for c in self.draining:
            c.close()
        if self.conn is not None:
            try:
                self.conn.h2.close_connection()
                self.conn.flush()
            except (OSError, h2.exceptions.ProtocolError):
                pass
            self.conn.close()
            self.conn = None
