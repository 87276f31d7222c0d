"""A reload costs no kept-alive client a request once the drain flag is up first.

nginx 1.22 closes idle kept-alive HTTP/1.1 connections the moment its old workers are told
to quit; snippets/drain.conf makes every HTTP/1.x answer close its connection while
$NGINX_RUN_DIR/draining exists, which nginx/reload.sh (aiia-reload) creates before the
reload. Both ways are measured here with the three client kinds (tests/remote/clients.py)
against the real nginx with the shipped templates; h2load runs beside the HTTP/2 client,
printed: it sends no stream again after a GOAWAY, as the HTTP/2 client (and a browser) does.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from pathlib import Path

from tests.remote.clients import Clients

HOST = "eduaiia.com"


def _ask(nginx_server, path: str = "/api/x") -> bytes:
    context = ssl.create_default_context(cafile=str(nginx_server.ca_cert))
    with socket.create_connection(("127.0.0.1", nginx_server.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            tls.sendall(f"GET {path}?q=1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls.recv(65536)
            return data.split(b"\r\n\r\n", 1)[0]


def test_the_flag_makes_answers_close_their_connection(nginx_server):
    flag = nginx_server.root / "run" / "draining"
    assert b"Connection: keep-alive" in _ask(nginx_server)
    flag.write_text("")
    try:
        head = _ask(nginx_server)
        assert b"Connection: close" in head
        assert head.startswith(b"HTTP/1.1 200")
        # static files too, and the proxied request is the one asked for (query kept)
        assert b"Connection: close" in _ask(nginx_server, "/static/app.css")
    finally:
        flag.unlink()
    assert b"Connection: keep-alive" in _ask(nginx_server)


def _reload_under_load(nginx_server, work: Path, *, drain: bool, capsys) -> Clients:
    pid = int((nginx_server.root / "run" / "nginx.pid").read_text())
    flag = nginx_server.root / "run" / "draining"
    with Clients(nginx_server, HOST, work, max_s=60, post_expect=200, h2load=True) as clients:
        time.sleep(1)
        if drain:
            flag.write_text("")
            time.sleep(1.5)  # the clients send every 40-100 ms; a server waits keepalive_timeout
        os.kill(pid, signal.SIGHUP)
        time.sleep(2)
        flag.unlink(missing_ok=True)
        time.sleep(1)
    with capsys.disabled():
        print("\n" + clients.report(f"nginx reload {'with' if drain else 'without'} the drain"))
    return clients


def test_a_reload_drops_kept_alive_requests_without_the_drain_and_none_with_it(
    nginx_server, tmp_path, capsys
):
    plain = _reload_under_load(nginx_server, tmp_path / "plain", drain=False, capsys=capsys)
    drained = _reload_under_load(nginx_server, tmp_path / "drained", drain=True, capsys=capsys)
    kept_alive = [t for t in plain.tallies if "kept-alive" in t.name]
    # the trap is real: idle kept-alive connections are closed under their next request
    assert sum(t.errors["read"] for t in kept_alive) > 0, plain.report("plain")
    assert plain.problems() == [] and drained.problems() == []
    for tally in drained.tallies:
        if "h2load" in tally.name:
            continue  # sends no stream again after nginx's GOAWAY: see docs/deploy.md
        assert tally.failed == 0, drained.report("drained")
        assert tally.requests > 0, drained.report("drained")
