"""A short smoke of bench/backup.py so it does not rot: it runs and reports every figure.

It checks the shape of the report and that every variant ran, never a time.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness.core import ROOT, require_binary


def test_bench_backup_smoke(tmp_path):
    require_binary("age", "packages")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "backup.py"), "--size-mb", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["database_mb"] >= 8
    results = report["results"]
    assert set(results) == {"floor", "age", "opskit"}
    assert all(r["ok"] and r["seconds"] > 0 for r in results.values())
    assert results["opskit"]["python_rss_mb"] > 0 and results["age"]["age_rss_mb"] > 0
    # the encrypted outputs of age and of the pipeline hold the same dump: similar sizes
    assert (
        abs(results["opskit"]["bytes"] - results["age"]["bytes"]) < 0.05 * results["age"]["bytes"]
    )
    assert {"ratio", "ratio_met", "rss_mb", "rss_met"} <= set(report["goals"])
    table = proc.stdout.split("\n{", 1)[0]
    assert "opskit backup pipeline" in table and "pg_dump -Fc > /dev/null" in table
    assert "goals: within 1.1x of the floor" in table
    # the restore of the first set ran through the real restore and found the table
    restored = report["restore"]
    assert restored["ok"] and restored["tables"] >= 1 and restored["seconds"] > 0
    assert "restore of the first set (RTO" in table
