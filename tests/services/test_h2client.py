"""The remote tier's HTTP/2 client against a scripted HTTP/2 server on loopback.

What a reload of nginx does to an HTTP/2 connection happens at a moment no test can pick;
here a server built on h2 does each thing on purpose, request by request, and the client
must send again exactly the streams RFC 9113 says were not processed (above a GOAWAY's
last-stream-id, or refused with REFUSED_STREAM), take the answers that follow a GOAWAY,
and count as failures the streams that may have been processed.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
from hyperframe.frame import GoAwayFrame

from opskit import tls
from tests.remote.h2client import Browser

ANSWER, GOAWAY_UNANSWERED, GOAWAY_THEN_ANSWER, REFUSE, DROP, GOAWAY_TAKEN_UNANSWERED = range(6)
# what the server does with its 1st, 2nd, ... request; every later one is answered
SCRIPT = [
    ANSWER,  # connection 1, stream 1
    GOAWAY_UNANSWERED,  # stream 3: GOAWAY last-stream-id 1, closed: never processed
    GOAWAY_THEN_ANSWER,  # connection 2, stream 1 (the one above, again): answered after it
    REFUSE,  # connection 3, stream 1: REFUSED_STREAM
    ANSWER,  # stream 3 (the one above, again)
    DROP,  # stream 5: the connection closes without a GOAWAY: may have been processed
    GOAWAY_TAKEN_UNANSWERED,  # connection 4, stream 1: GOAWAY naming it, then closed
]


class ScriptedServer:
    def __init__(self, root) -> None:
        ca = tls.create_ca("h2 client test CA")
        tls.issue_leaf(ca, ["eduaiia.com", "127.0.0.1"]).write(root / "c.pem", root / "k.pem")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(root / "c.pem", root / "k.pem")
        self.context.set_alpn_protocols(["h2"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = 0
        self.lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw) -> None:
        sock = self.context.wrap_socket(raw, server_side=True)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())

        def answer(sid: int) -> None:
            conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
            conn.send_data(sid, b"ok", end_stream=True)

        def goaway(last: int) -> None:
            # written past h2, whose state machine would refuse the answer that follows
            sock.sendall(conn.data_to_send() + GoAwayFrame(0, last_stream_id=last).serialize())

        def linger_and_close() -> None:
            sock.sendall(conn.data_to_send())
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            sock.close()

        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                sock.close()
                return
            for ev in conn.receive_data(data):
                if not isinstance(ev, h2.events.RequestReceived):
                    continue
                with self.lock:
                    step = SCRIPT[self.seen] if self.seen < len(SCRIPT) else ANSWER
                    self.seen += 1
                sid = ev.stream_id
                if step == ANSWER:
                    answer(sid)
                elif step == GOAWAY_UNANSWERED:
                    goaway(sid - 2)
                    return linger_and_close()
                elif step == GOAWAY_THEN_ANSWER:
                    goaway(sid)
                    answer(sid)
                    return linger_and_close()
                elif step == REFUSE:
                    conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                elif step == DROP:
                    sock.close()
                    return
                elif step == GOAWAY_TAKEN_UNANSWERED:
                    goaway(sid)
                    return linger_and_close()
            sock.sendall(conn.data_to_send())

    def close(self) -> None:
        self.listener.close()


def test_streams_a_goaway_or_refused_stream_says_were_not_processed_go_again(tmp_path):
    server = ScriptedServer(tmp_path)
    browser = Browser(host="eduaiia.com", port=server.port, path="/", method="GET", expect=200,
                      body=b"", rps=20, max_streams=1)  # fmt: skip
    stop = threading.Event()
    # stop once the script has played and a few plain answers followed (bounded)
    threading.Thread(
        target=lambda: (
            [time.sleep(0.05) for _ in range(400) if server.seen < len(SCRIPT) + 3],
            stop.set(),
        ),
        daemon=True,
    ).start()
    try:
        fig = browser.run(30, stop)
    finally:
        browser.close()
        server.close()
    assert server.seen >= len(SCRIPT) + 3, server.seen
    # the never-processed stream and the refused one went again, once each
    assert (fig.retried_goaway, fig.retried_refused) == (1, 1), fig
    assert fig.goaways == 3, fig
    # the two that may have been processed are failures, not sent again
    assert fig.errors == {"status": 0, "connect": 0, "read": 2, "write": 0, "timeout": 0}, fig
    # every request counted once: requests the server saw, less those sent again
    assert fig.requests == server.seen - 2, (fig, server.seen)
    assert fig.statuses == {"200": fig.requests - 2}, fig
    assert server.connections == 5, server.connections
