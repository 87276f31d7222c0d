"""The status collector on the real server stack: `scripts/status.sh run`, one run of
what the collector's container does every minute, in its small container; the devstatus
page nginx serves; alerts to a real webhook receiver on loopback.

Time: the stops, failures and CPU load are real; the collector's clock is handed in
(`--now`, one minute per run) so that "5 minutes over 80 %" or "3 failed checks a minute
apart" take seconds of test time. The access log's minutes are nginx's real time.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness.core import ROOT, wait_until
from tests.stack.stackkit import (
    BUILD_TIMEOUT_S,
    PROD,
    STAGING,
    STATUS,
    SNIConnection,
    container_state,
    docker,
)

pytestmark = pytest.mark.stack

SCRIPT = ROOT / "scripts" / "status.sh"
ARTEFACTS = Path(os.environ.get("AIIA_ARTEFACTS", ROOT / "artefacts"))
MINUTE = 60


class Receiver:
    """A Slack-compatible webhook on loopback: keeps every `text` it is sent."""

    def __init__(self) -> None:
        texts = self.texts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the base class's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                texts.append(json.loads(body)["text"])
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def got(self, kind: str, key: str) -> bool:
        return any(f"{kind} [{key}]" in t for t in self.texts)

    def close(self) -> None:
        self.server.shutdown()


class Collector:
    """scripts/status.sh against the test stack, with a clock that moves a minute a run."""

    def __init__(self, stack, base: Path, *, host_network: bool, webhook: str = "") -> None:
        self.stack = stack
        self.base = base
        self.now = time.time()
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env_file = base / "status.env"
        self.env_file.write_text(f"SLACK_WEBHOOK_URL={webhook}\n" if webhook else "")
        # a history (and alert state) of its own per test; the page volume is the stack's
        self.history = f"aiia_test_status_history_{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "HISTORY_VOLUME": self.history,
            "ENV_FILE": str(self.env_file),
            "LOG_DIR": str(self.logs),
            "BACKUP_DIR": str(base / "backups"),
            "VOLUME_PREFIX": f"{stack.compose.project}_",
        }
        if host_network:
            # the webhook receiver listens on this machine's loopback
            self.env |= {"NETWORK": "host", "NGINX": f"127.0.0.1:{stack.https_port}"}

    def run(self) -> str:
        env = self.env | {"STATUS_ARGS": f"--now {self.now:.0f}"}
        self.now += MINUTE
        proc = subprocess.run(
            ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    def close(self) -> None:
        docker("volume", "rm", "-f", self.history, check=False)


@pytest.fixture
def collectors():
    made: list[Collector] = []
    yield made
    for c in made:
        c.close()


def collector_for(collectors, *args, **kw) -> Collector:
    c = Collector(*args, **kw)
    collectors.append(c)
    return c


@pytest.fixture(scope="module")
def status_image(server_stack):
    server_stack.compose.run("build", "backup", timeout=BUILD_TIMEOUT_S)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def auth_header(stack) -> dict[str, str]:
    env = dict(
        line.split("=", 1)
        for line in (stack.workdir / "production.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    token = base64.b64encode(f"{env.get('STATUS_USER', 'ops')}:{env['STATUS_PASSWORD']}".encode())
    return {"Authorization": "Basic " + token.decode()}, env


def get(stack, host: str, path: str, headers=None) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    conn = SNIConnection("127.0.0.1", stack.https_port, host, context, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def devstatus(stack) -> str:
    headers, _ = auth_header(stack)
    status, body = get(stack, STATUS, "/", headers)
    assert status == 200, body[:300]
    return body


def test_devstatus_serves_the_page_the_cron_job_wrote(
    server_stack, status_image, tmp_path, collectors
):
    """status.sh exactly as cron runs it (the stack's network, nginx:443) writes the page."""
    headers, _ = auth_header(server_stack)
    collector = collector_for(collectors, server_stack, tmp_path, host_network=False)
    collector.run()
    collector.run()
    status, body = get(server_stack, STATUS, "/", headers)
    assert status == 200
    assert body.count("<svg") >= 5
    for name in ("aiia_nginx", "aiia_django_prod", "aiia_django_staging", "aiia_postgresql",
                 "aiia_pgbouncer", "aiia_redis"):  # fmt: skip
        assert f'data-container="{name}"' in body
    assert 'data-uptime="production-24h">100.00 %' in body
    assert 'data-service="postgresql"' in body and 'data-service="redis"' in body
    assert "days left" in body  # the stack's test certificate, read through nginx
    assert get(server_stack, STATUS, "/")[0] == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}
    assert get(server_stack, STATUS, "/", wrong)[0] == 401
    # no resident process: the run's container is gone
    assert not docker("ps", "-q", "--filter", "name=aiia_status_").stdout.strip()


def test_chromium_renders_the_page_without_errors_or_other_hosts(
    server_stack, status_image, tmp_path, collectors
):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: ./scripts/ensure.sh packages installs it"
    collector_for(collectors, server_stack, tmp_path, host_network=False).run()
    headers, env = auth_header(server_stack)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "devstatus.png"
    netlog = tmp_path / "netlog.json"
    user = env.get("STATUS_USER", "ops")
    url = f"https://{user}:{env['STATUS_PASSWORD']}@{STATUS}:{server_stack.https_port}/"
    argv = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        # every other name fails to resolve: nothing can leave this machine, whoever asks
        f"--host-resolver-rules=MAP {STATUS} 127.0.0.1, MAP * ~NOTFOUND",
        "--no-pings", "--disable-domain-reliability", "--disable-default-apps",
        "--disable-extensions", "--disable-client-side-phishing-detection",
        "--ignore-certificate-errors", "--enable-logging=stderr", "--v=0",
        f"--log-net-log={netlog}", "--window-size=1280,2400",
    ]  # fmt: skip

    def browse(*extra: str) -> subprocess.CompletedProcess:
        # the engine creating networks for other work makes Chromium abort a load with
        # ERR_NETWORK_CHANGED: that is this machine, not the page; try again, a few times
        for _ in range(4):
            proc = subprocess.run([*argv, *extra, url], capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            if "ERR_NETWORK_CHANGED" not in proc.stderr:
                return proc
        return proc

    shot_proc = browse(f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, shot_proc.stderr[-2000:]
    dom = browse("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<svg") >= 5 and "aiia status" in dom.stdout
    console = [
        line for line in (shot_proc.stderr + dom.stderr).splitlines()
        if "CONSOLE" in line or "Content Security Policy" in line or "Failed to load" in line
    ]  # fmt: skip
    assert console == [], console
    # what the page asked for: requests whose initiator is the page's origin (the
    # browser's own background requests have none, and resolve nowhere, see above)
    origin = f"https://{STATUS}:{server_stack.https_port}"
    page_urls = set()
    for event in load_netlog(netlog):
        params = event.get("params") or {}
        if params.get("initiator") == origin and "url" in params:
            # Chromium writes "URL (credentials redacted)" where credentials were sent
            page_urls.add(params["url"].split(" ")[0])
    assert f"{origin}/status.css" in page_urls, page_urls
    assert {urlsplit(u).hostname for u in page_urls} == {STATUS}, page_urls


def load_netlog(path: Path) -> list[dict]:
    """Chromium's --log-net-log events; a log cut short at exit lacks its closing `]}`."""
    text = path.read_text()
    try:
        return json.loads(text)["events"]
    except ValueError:
        return json.loads(text.rstrip().rstrip(",") + "]}")["events"]


def minute_row(body: str, minute: int) -> tuple[int, int, float]:
    row = re.search(rf'<tr data-minute="{minute}">(.*?)</tr>', body)
    assert row, f"no row for minute {minute}"
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
    share = float(re.search(r'data-share5xx="([0-9.]+)"', row.group(1)).group(1))
    return int(cells[1]), int(cells[3]), share


def uptime(body: str, env: str, span: str) -> float:
    found = re.search(rf'data-uptime="{env}-{span}">([0-9.]+) %', body)
    assert found, f"no {span} uptime for {env}"
    return float(found.group(1))


def test_staging_down_alerts_drops_its_uptime_and_counts_the_5xx_share(
    server_stack, status_image, tmp_path, receiver, collectors
):
    """django_staging stopped for 3 collector minutes: its /health/ alert and resolved
    message reach the webhook; staging's uptime drops below 100 %, production's stays;
    N requests of which M were sent to the stopped staging give a 5xx share of M/N."""
    collector = collector_for(
        collectors, server_stack, tmp_path, host_network=True, webhook=receiver.url
    )
    collector.run()
    before = devstatus(server_stack)
    prod_before = uptime(before, "production", "24h")
    docker("stop", "aiia_django_staging", timeout=60)
    try:
        # the requests of one real minute, nobody else's: start as a fresh one begins
        time.sleep(60.5 - time.time() % 60)
        n, m = 40, 10
        minute = int(time.time()) - int(time.time()) % 60
        statuses = [get(server_stack, STAGING if i % 4 == 0 else PROD, "/api/notes/")[0]
                    for i in range(n)]  # fmt: skip
        assert int(time.time()) - int(time.time()) % 60 == minute, "the requests crossed a minute"
        assert sum(s >= 500 for s in statuses) == m, statuses
        for _ in range(3):
            collector.run()
        assert receiver.got("ALERT", "health:staging"), receiver.texts
        assert not receiver.got("ALERT", "health:production"), receiver.texts
        body = devstatus(server_stack)
        assert uptime(body, "staging", "24h") < 100.0
        assert uptime(body, "production", "24h") == prod_before == 100.0
        assert minute_row(body, minute) == (n, m, pytest.approx(m / n))
    finally:
        docker("start", "aiia_django_staging", timeout=60)
        wait_until(
            lambda: (
                container_state("aiia_django_staging")["State"].get("Health", {}).get("Status")
                == "healthy"
            ),
            timeout=120,
            what="django_staging healthy again",
        )
    wait_until(lambda: get(server_stack, STAGING, "/health/")[0] == 200, timeout=60,
               what="staging answering through nginx again")  # fmt: skip
    collector.run()
    collector.run()
    assert receiver.got("RESOLVED", "health:staging"), receiver.texts


def test_cpu_alert_from_a_real_burner(server_stack, status_image, tmp_path, receiver, collectors):
    """Two busy loops in a container hold both CPUs: the alert after 5 collector minutes,
    resolved once the burner is gone and the box is below 70 %."""
    collector = collector_for(
        collectors, server_stack, tmp_path, host_network=True, webhook=receiver.url
    )
    name = f"aiia_test_cpuburn_{uuid.uuid4().hex[:6]}"
    collector.run()
    burn = "while :; do :; done & while :; do :; done"
    docker("run", "-d", "--rm", "--name", name, "--cpus", "2", "--memory", "16m",
           "debian:bookworm-slim", "sh", "-c", burn)  # fmt: skip
    try:
        # 5 collector minutes over 80 % take 6 runs; the first may still count time
        # from before the burner started
        for _ in range(10):
            time.sleep(2)  # the burner's share of the real time between two runs
            collector.run()
            if receiver.got("ALERT", "cpu"):
                break
        assert receiver.got("ALERT", "cpu"), receiver.texts
    finally:
        docker("rm", "-f", name, check=False)
    # the box is shared: allow other work to settle, a bounded number of runs
    for _ in range(20):
        time.sleep(5)
        collector.run()
        if receiver.got("RESOLVED", "cpu"):
            break
    assert receiver.got("RESOLVED", "cpu"), receiver.texts


def test_bench_status_smoke(server_stack, status_image, tmp_path):
    """bench/status.py runs (a small log by default; AIIA_STATUS_BENCH_LINES for the
    README's 300,000) and prints the collector beside the baseline."""
    lines = os.environ.get("AIIA_STATUS_BENCH_LINES", "3000")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "status.py"), "--lines", lines,
         "--nginx", f"127.0.0.1:{server_stack.https_port}", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout.split("\n{", 1)[0])
    doc = json.loads(out.read_text())
    assert doc["lines"] == int(lines)
    assert doc["collector"]["peak_mb"] > doc["baseline"]["peak_mb"] > 0
    assert doc["collector"]["cpu_s"] > 0
