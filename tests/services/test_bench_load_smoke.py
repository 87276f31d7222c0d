"""A short smoke of bench/load.py so it does not rot: every config, every target, 2 s each.

It checks that every run happened and reported every figure, never a time or a rate.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness.core import ROOT, require_binary

CONFIGS = {"tuned", "tuned-nolimit", "stock"}
TARGETS = {"/health/", "/api/notes/", "/admin/"}


def test_bench_load_smoke(tmp_path):
    require_binary("wrk", "packages")
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--duration", "2", "--warmup", "0",
         "--connections", "20", "--json-out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["run"]["duration_s"] == 2 and report["run"]["connections"] == 20
    assert set(report["configs"]) == CONFIGS
    for config in report["configs"].values():
        # nginx + gunicorn + PostgreSQL + Redis at least, each with its workers
        assert config["idle"]["processes"] >= 8 and config["idle"]["peak_pss_mb"] > 0

    results = report["results"]
    assert {(r["config"], r["path"]) for r in results} == {(c, t) for c in CONFIGS for t in TARGETS}
    for r in results:
        where = f"{r['path']} on {r['config']}"
        assert r["requests"] > 0 and r["rps"] > 0, where
        assert r["served"] > 0, f"{where}: nothing served {r['statuses']}"
        assert {"p50", "p95", "p99"} <= set(r["latency_ms"]), where
        # what wrk counted, nginx logged (wrk stops with requests in flight: those are 499)
        logged = sum(n for s, n in r["nginx"]["statuses"].items() if s != "499")
        assert logged >= r["requests"], where
        stack = r["stack"]
        assert stack["peak_rss_mb"] >= stack["peak_pss_mb"] > 0, where
        assert stack["samples"] >= 2 and stack["cpu_peak_pct"] is not None, where
        assert set(r["goals"]) == {"p95_applies", "p95_met", "errors_met", "memory_met",
                                   "cpu_met"}  # fmt: skip
    # the stock config has no PgBouncer; the tuned ones do
    by_config = {r["config"]: r["stack"]["peak_rss_by_server_mb"] for r in results}
    assert "pgbouncer" in by_config["tuned"] and "pgbouncer" not in by_config["stock"]
    # the admin page was served to the logged-in user, not a redirect to the login form
    admin = [r for r in results if r["path"] == "/admin/"]
    assert all(set(r["statuses"]) <= {"200", "429"} for r in admin), admin

    table = proc.stdout.split("\n{", 1)[0]
    assert "p95 ms <200" in table and "errors % <0.1" in table and "RSS MB <480" in table
    assert json.loads(proc.stdout[len(table) :]) == report
