"""The deploy log's lines, their table, and the Slack-compatible webhook (a real local server)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading

import pytest

from opskit.deploy import history, notify
from opskit.shell import Secret, join

OK = history.Entry(
    when="2025-01-01T12:00:00+00:00",
    env="production",
    action="deploy",
    who="alice@laptop",
    result="ok",
    duration_s=42.4,
    release="20250101-120000-abc1234",
    ref="main",
    commit="abc1234" + "0" * 33,
    version="v2",
)
FAILED = history.Entry(
    when="2025-01-01T13:00:00+00:00",
    env="production",
    action="deploy",
    who="octo (github actions run 7)",
    result="failed",
    duration_s=70,
    release="20250101-130000-0f0f0f0",
    image="registry.local:5000/aiia/app:0f0f0f0",
    reason="health check failed: not healthy after 30 attempts",
)


def test_lines_round_trip_and_a_damaged_line_is_shown_not_hidden():
    text = OK.to_line() + '{"when": "2025-01-01T12:30' + "\n" + FAILED.to_line()
    parsed = history.parse(text)
    assert parsed[0] == OK and parsed[2] == FAILED
    assert isinstance(parsed[1], history.Unreadable) and parsed[1].line_no == 2
    table = history.table(parsed).splitlines()
    assert table[0].split() == [
        "when",
        "(UTC)",
        "env",
        "action",
        "who",
        "release",
        "/",
        "source",
        "took",
        "result",
    ]
    assert "2025-01-01 12:00:00" in table[1] and table[1].rstrip().endswith("42s  ok")
    assert "abc1234" in table[1] and "main@abc12340000" in table[1]
    assert "unreadable" in table[2]
    assert table[3].endswith("failed: health check failed: not healthy after 30 attempts")
    assert "registry.local:5000/aiia/app:0f0f0f0" in table[3]


def test_successful_releases_are_those_that_served():
    entries = history.parse(OK.to_line() + FAILED.to_line())
    assert history.successful_releases(entries, "production") == [OK]
    assert history.successful_releases(entries, "staging") == []


def test_append_and_read_through_sh(tmp_path):
    log = tmp_path / "logs" / "deploys.log"
    for entry in (OK, FAILED):
        res = subprocess.run(history.append(str(log)), input=entry.to_line(), text=True)
        assert res.returncode == 0
    tail = subprocess.run(history.read(str(log), 1), capture_output=True, text=True)
    assert history.parse(tail.stdout) == [FAILED]
    missing = subprocess.run(
        ["bash", "-c", join(history.read(str(tmp_path / "none.log")))],
        capture_output=True,
        text=True,
    )
    assert (missing.returncode, missing.stdout) == (0, "")


class Hook:
    """A real HTTP server on loopback that records what a webhook receives."""

    def __init__(self, status: int = 200) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = Secret(f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/secret")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_webhook_receives_the_message(hook):
    body = notify.message(
        env="production",
        action="deploy",
        ok=True,
        who="alice",
        release=OK.release,
        source="main@abc1234",
        seconds=42,
        version="v2",
    )
    assert notify.send(hook.url, body) is None
    ((path, ctype, got),) = hook.received
    assert path == "/services/T0/B0/secret" and ctype == "application/json"
    assert got["text"] == (
        ":white_check_mark: production deploy by alice: release "
        "20250101-120000-abc1234 (main@abc1234) is serving, version v2 (42s)"
    )


def test_failure_message_says_the_previous_release_keeps_serving():
    body = notify.message(
        env="staging",
        action="deploy",
        ok=False,
        who="bob",
        release="r",
        source="img",
        seconds=9,
        reason="migration core.0003 failed",
        server="ubuntu@host",
    )
    assert body["text"] == (
        ":x: staging deploy by bob on ubuntu@host FAILED after 9s: "
        "migration core.0003 failed (img); the previous release keeps serving"
    )


def test_urllib_path_without_requests(hook, tmp_path):
    """The application image has no requests: the standard library posts the same body."""
    code = (
        "import sys; sys.modules['requests'] = None\n"
        "from opskit.deploy import notify\nfrom opskit.shell import Secret\n"
        f"print(notify.send(Secret({hook.url.reveal()!r}), {{'text': 'hi'}}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "None", res.stderr
    assert hook.received[-1][2] == {"text": "hi"}


def test_undeliverable_webhook_is_reported_without_its_url():
    bad = Hook(status=500)
    try:
        assert notify.send(bad.url, {"text": "x"}) == "webhook answered HTTP 500"
    finally:
        bad.close()
    gone = Secret(f"http://127.0.0.1:{bad.server.server_port}/secret-path")
    problem = notify.send(gone, {"text": "x"}, timeout=2)
    assert problem.startswith("webhook not delivered") and "secret-path" not in problem


def test_previous_release_is_what_served_before_the_current_one():
    def entry(release, previous, result="ok", action="deploy"):
        return history.Entry(
            when="w",
            env="production",
            action=action,
            who="a",
            result=result,
            duration_s=1,
            release=release,
            previous=previous,
        )

    entries = [
        entry("r1", "initial-r0"),
        entry("r2", "r1"),
        entry("r3", "r2", "failed"),
        entry("r1", "r2", action="rollback"),
    ]
    assert history.previous_release(entries, "production", "r2") == "r1"
    # after a rollback to r1, the previous one is r2: rollback toggles
    assert history.previous_release(entries, "production", "r1") == "r2"
    assert history.previous_release(entries, "production", "r9") == ""
    assert history.served_releases(entries, "production") == ["initial-r0", "r1", "r2"]
