"""Three kinds of client sending requests through nginx while something happens to it.

- kept-alive HTTP/1.1: wrk, each connection reused request after request (GET and POST);
- HTTP/2: several streams on each connection (GET and POST), sent as a browser sends them:
  a stream the server's GOAWAY says it never processed is sent again on a new connection
  (RFC 9113 §6.8; tests/remote/h2client.py); h2load, which never sends one again, can be
  run beside it for comparison (`h2load=True`, printed);
- one request per connection: tests.remote.deploy_support.Load (GET and POST).

Each runs in a loop of short, bounded runs (RUN_S seconds each, at most `max_s` in all)
until stopped, at a bounded rate (wrk waits between requests, the HTTP/2 client and h2load
have a rate per connection, Load its rate), on loopback only. Every run's figures are
summed: requests, and errors by kind (status: an answer other than the expected one;
connect, read, write, timeout). A GET expects 200; a POST to the notes API without a
session expects the app's own 403, which proves it went through nginx to gunicorn and
back (nginx's own failures are 502/504).

wrk takes the site's name from its URL for SNI and resolves it with the system resolver,
so it runs in a mount namespace of its own where /etc/hosts maps the site names to
127.0.0.1 (`unshare --mount`); h2load has --connect-to.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RUN_S = 4
KINDS = ("status", "connect", "read", "write", "timeout")
POST_BODY = '{"title": "load", "body": "sent while nginx switches"}'

WRK_SCRIPT = r"""
-- counts answers by status in each thread; done() prints the sums as one JSON line
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  statuses = {}
  pause = tonumber(args[2]) or 0
  if args[1] == "POST" then
    wrk.method = "POST"
    wrk.body = args[3]
    wrk.headers["Content-Type"] = "application/json"
  end
end
function delay() return pause end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do all[k] = (all[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(all) do table.insert(parts, string.format('"%d":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"statuses":{%s}}\n',
    summary.requests, e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
"""


@dataclass
class Tally:
    """Requests and errors of one client kind, summed over its runs."""

    name: str
    requests: int = 0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    statuses: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    problems: list[str] = field(default_factory=list)
    # HTTP/2 streams a GOAWAY or REFUSED_STREAM said were not processed, sent again
    retried: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.errors.items())
        seen = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        again = ", ".join(f"{k}: {v}" for k, v in self.retried.items())
        return (
            f"{self.name:<34} {self.requests:6d} requests, {self.failed} errors "
            f"({kinds}); answers {seen or '-'}; {self.runs} runs" + (f"; {again}" if again else "")
        )


def parse_wrk(text: str, expect: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """(requests, errors by kind, answers by status) from our script's WRK line."""
    m = re.search(r"^WRK (\{.*\})$", text, re.M)
    if not m:
        raise ValueError(f"no WRK line in wrk's output: {text[-500:]!r}")
    data = json.loads(m.group(1))
    statuses = {str(k): int(v) for k, v in data["statuses"].items()}
    errors = {k: int(data.get(k, 0)) for k in KINDS if k != "status"}
    errors["status"] = sum(v for k, v in statuses.items() if k != str(expect))
    return int(data["requests"]), errors, statuses


def parse_h2load(text: str, expect: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """(requests, errors by kind, answers by status class) from h2load's summary."""
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        text,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if not m or not codes:
        raise ValueError(f"no summary in h2load's output: {text[-500:]!r}")
    total, _started, done, _ok, _failed, errored, timeout = map(int, m.groups())
    classes = dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, codes.groups()), strict=True))
    want = f"{str(expect)[0]}xx"
    errors = dict.fromkeys(KINDS, 0)
    errors["status"] = sum(v for k, v in classes.items() if k != want)
    # h2load counts a stream that got no answer (a reset, a closed connection) as errored;
    # a request it never finished is neither done nor errored
    errors["read"] = errored + (total - done - errored - timeout if total > done else 0)
    errors["timeout"] = timeout
    return total, errors, {k: v for k, v in classes.items() if v}


class _Looper:
    """Runs `one_run` again and again in a thread until stopped (bounded by max_s)."""

    def __init__(self, tally: Tally, max_s: float) -> None:
        self.tally = tally
        self.max_s = max_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.proc: subprocess.Popen | None = None

    def one_run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _loop(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.max_s:
            try:
                self.one_run()
            except Exception as exc:  # noqa: BLE001 - reported with the figures
                self.tally.problems.append(f"{type(exc).__name__}: {exc}")
                self._stop.wait(1)

    def _add(self, requests: int, errors: dict[str, int], statuses: dict[str, int]) -> None:
        t = self.tally
        t.runs += 1
        t.requests += requests
        for k, v in errors.items():
            t.errors[k] += v
        for k, v in statuses.items():
            t.statuses[k] = t.statuses.get(k, 0) + v

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Let the run under way finish (its connections end cleanly), then stop."""
        self._stop.set()
        self._thread.join(RUN_S + 60)


class WrkLoop(_Looper):
    def __init__(self, tally, max_s, *, url, hosts_file, script, method, expect, connections,
                 pause_ms) -> None:  # fmt: skip
        super().__init__(tally, max_s)
        self.argv = [
            "unshare", "--mount", "sh", "-c",
            'mount --bind "$1" /etc/hosts && shift && exec "$@"', "sh", str(hosts_file),
            "wrk", "--latency", "-t", str(min(2, connections)), "-c", str(connections),
            "-d", f"{RUN_S}s",
            "--timeout", "10s", "-s", str(script), url, "--", method, str(pause_ms), POST_BODY,
        ]  # fmt: skip
        self.expect = expect

    def one_run(self) -> None:
        out = subprocess.run(self.argv, capture_output=True, text=True, timeout=RUN_S + 60)
        if out.returncode != 0:
            raise RuntimeError(f"wrk exited {out.returncode}: {out.stderr[-300:]}")
        self._add(*parse_wrk(out.stdout, self.expect))


class H2Loop(_Looper):
    def __init__(self, tally, max_s, *, url, port, method, expect, body_file, clients,
                 rps) -> None:  # fmt: skip
        super().__init__(tally, max_s)
        self.argv = [
            "h2load", "--connect-to", f"127.0.0.1:{port}", "-D", str(RUN_S),
            "-c", str(clients), "-m", "4", "-t", "1", "--rps", str(rps), "-T", "10",
        ]  # fmt: skip
        if method == "POST":
            self.argv += ["-d", str(body_file), "-H", "content-type: application/json"]
        self.argv.append(url)
        self.expect = expect

    def one_run(self) -> None:
        out = subprocess.run(self.argv, capture_output=True, text=True, timeout=RUN_S + 60)
        self._add(*parse_h2load(out.stdout, self.expect))


class H2BrowserLoop(_Looper):
    """HTTP/2 as a browser sends it: streams a GOAWAY (or REFUSED_STREAM) says the server
    never processed are sent again on a new connection (tests/remote/h2client.py)."""

    def __init__(self, tally, max_s, *, host, port, path, method, expect, connections,
                 rps) -> None:  # fmt: skip
        super().__init__(tally, max_s)
        from tests.remote.h2client import Browser

        body = POST_BODY.encode()
        self.browsers = [
            Browser(
                host=host, port=port, path=path, method=method, expect=expect, body=body, rps=rps
            )  # fmt: skip
            for _ in range(connections)
        ]

    def one_run(self) -> None:
        results: list = [None] * len(self.browsers)

        def drive(i: int) -> None:
            try:
                results[i] = self.browsers[i].run(RUN_S, self._stop)
            except Exception as exc:  # noqa: BLE001 - reported with the figures
                results[i] = exc

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(self.browsers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for fig in results:
            if isinstance(fig, Exception):
                import traceback

                where = traceback.format_exception(fig)[-3:]
                raise RuntimeError(f"an HTTP/2 client failed: {''.join(where)}") from fig
            self._add(fig.requests, fig.errors, fig.statuses)
            self.tally.runs -= 1
            for key, n in (("GOAWAYs received", fig.goaways),
                           ("sent again after GOAWAY", fig.retried_goaway),
                           ("after REFUSED_STREAM", fig.retried_refused)):  # fmt: skip
                self.tally.retried[key] = self.tally.retried.get(key, 0) + n
        self.tally.runs += 1

    def stop(self) -> None:
        super().stop()
        for b in self.browsers:
            b.close()


class PerConnection(_Looper):
    """One request per connection (`Connection: close`), from deploy_support.Load's code.
    With `seen`, each error is also kept there as (time, kind, what happened)."""

    def __init__(self, tally, max_s, *, server, host, path, method, expect, rate,
                 seen: list | None = None) -> None:  # fmt: skip
        super().__init__(tally, max_s)
        self.server, self.host, self.path = server, host, path
        self.method, self.expect, self.interval = method, expect, 1 / rate
        self.seen = seen

    def _error(self, errors: dict, t: float, kind: str, text: str) -> None:
        errors[kind] += 1
        if self.seen is not None:
            self.seen.append((t, kind, f"{self.method} {text}"))

    def one_run(self) -> None:
        import http.client
        import ssl

        from tests.remote.deploy_support import _SNIConnection

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        end = time.monotonic() + RUN_S
        requests, statuses = 0, {}
        errors = dict.fromkeys(KINDS, 0)
        while time.monotonic() < end and not self._stop.is_set():
            t = time.monotonic()
            conn = _SNIConnection(self.host, self.server.https_port, context=context, timeout=10)
            stage = "connect"
            try:
                conn.connect()
                stage = "write"
                body = POST_BODY.encode() if self.method == "POST" else None
                headers = {"Host": self.host, "Connection": "close"}
                if body is not None:
                    headers["Content-Type"] = "application/json"
                conn.request(self.method, self.path, body=body, headers=headers)
                stage = "read"
                resp = conn.getresponse()
                resp.read()
                statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
                if resp.status != self.expect:
                    self._error(errors, t, "status", f"answered {resp.status}")
            except TimeoutError as exc:
                self._error(errors, t, "timeout", f"{type(exc).__name__}: {exc}")
            except (OSError, http.client.HTTPException) as exc:
                self._error(errors, t, stage, f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()
            requests += 1
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t)))
        self._add(requests, errors, statuses)


class Clients:
    """All three kinds, GET and POST, through nginx to one site, for one case."""

    def __init__(
        self,
        server,
        host: str,
        work: Path,
        *,
        max_s: float = 600,
        post_expect: int = 403,
        h2load: bool = False,
    ) -> None:
        for exe in ("wrk", "h2load", "unshare"):
            if not shutil.which(exe):
                raise AssertionError(f"{exe} is missing: scripts/ensure.sh packages installs it")
        work.mkdir(parents=True, exist_ok=True)
        hosts = work / "hosts"
        hosts.write_text(f"127.0.0.1 localhost {host}\n")
        script = work / "count.lua"
        script.write_text(WRK_SCRIPT)
        body = work / "post.json"
        body.write_text(POST_BODY)
        port = server.https_port
        get, post = "/api/notes/", "/api/notes/"
        self.tallies: list[Tally] = []
        self.loops: list[_Looper] = []

        def add(name: str, loop_cls, **kw) -> None:
            tally = Tally(name)
            self.tallies.append(tally)
            self.loops.append(loop_cls(tally, max_s, **kw))

        url = f"https://{host}:{port}"
        # a rate this shared 2-core machine's app (2 workers x 2 threads) keeps up with,
        # about 60 requests/s in all: an app that falls behind queues requests in the old
        # container's backlog, and stopping it then drops them, whatever nginx does.
        # kept-alive: 4 connections, each waiting 100 ms between requests; the idle gaps
        # are when a server may close a kept-alive connection
        add("kept-alive HTTP/1.1 GET (wrk)", WrkLoop, url=url + get, hosts_file=hosts,
            script=script, method="GET", expect=200, connections=4, pause_ms=100)  # fmt: skip
        add("kept-alive HTTP/1.1 POST (wrk)", WrkLoop, url=url + post, hosts_file=hosts,
            script=script, method="POST", expect=post_expect, connections=1,
            pause_ms=200)  # fmt: skip
        # HTTP/2 as browsers send it: 2 connections at 5 GET/s each, 1 at 3 POST/s
        add("HTTP/2 GET (h2, as a browser)", H2BrowserLoop, host=host, port=port, path=get,
            method="GET", expect=200, connections=2, rps=5)  # fmt: skip
        add("HTTP/2 POST (h2, as a browser)", H2BrowserLoop, host=host, port=port, path=post,
            method="POST", expect=post_expect, connections=1, rps=3)  # fmt: skip
        if h2load:
            # nghttp2's h2load, which sends no stream again: printed beside, for comparison
            add("HTTP/2 GET (h2load)", H2Loop, url=f"https://{host}{get}", port=port,
                method="GET", expect=200, body_file=body, clients=2, rps=5)  # fmt: skip
            add("HTTP/2 POST (h2load)", H2Loop, url=f"https://{host}{post}", port=port,
                method="POST", expect=post_expect, body_file=body, clients=1, rps=3)  # fmt: skip
        add("one request per connection GET", PerConnection, server=server, host=host,
            path=get, method="GET", expect=200, rate=8)  # fmt: skip
        add("one request per connection POST", PerConnection, server=server, host=host,
            path=post, method="POST", expect=post_expect, rate=3)  # fmt: skip

    def __enter__(self) -> Clients:
        for loop in self.loops:
            loop.start()
        # every kind has its connections open before anything happens
        time.sleep(1.0)
        return self

    def __exit__(self, *exc) -> None:
        for loop in self.loops:
            loop._stop.set()
        for loop in self.loops:
            loop.stop()

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.tallies)

    def report(self, case: str) -> str:
        lines = [
            f"{case}: {self.failed} errors in {sum(t.requests for t in self.tallies)} requests"
        ]
        lines += ["  " + t.line() for t in self.tallies]
        lines += [f"  ! {t.name}: {p}" for t in self.tallies for p in t.problems[:3]]
        return "\n".join(lines)

    def problems(self) -> list[str]:
        return [f"{t.name}: {p}" for t in self.tallies for p in t.problems]
