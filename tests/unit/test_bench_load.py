"""bench/load.py's pure parts: percentiles, wrk's report, nginx's access log, /proc figures.

wrk's reports and the access log lines are saved from real runs of the benchmark
(tests/fixtures/bench/).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.harness.core import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "bench"


def _load():
    # bench/ is a folder of scripts, not a package: load the file itself
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


load = _load()
NO_SOCKET_ERRORS = {"connect": 0, "read": 0, "write": 0, "timeout": 0}


# --- percentiles and wrk's times ------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [(0, 1), (10, 1), (11, 2), (50, 5), (90, 9), (95, 10), (99, 10), (100, 10)],
    ids=lambda v: str(v),
)
def test_percentile_is_nearest_rank(p, expected):
    values = [7, 3, 10, 1, 5, 2, 9, 4, 8, 6]  # 1..10, unsorted
    assert load.percentile(values, p) == expected


def test_percentile_of_one_value_and_of_none():
    assert load.percentile([42.0], 99) == 42.0
    assert load.percentile([], 95) is None


def test_percentile_keeps_its_input_unsorted():
    values = [3, 1, 2]
    assert load.percentile(values, 50) == 2
    assert values == [3, 1, 2]


@pytest.mark.parametrize("p", [-1, 100.1])
def test_percentile_out_of_range(p):
    with pytest.raises(ValueError, match="out of range"):
        load.percentile([1, 2], p)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("850.00us", 0.85), ("4.11ms", 4.11), ("1.11s ", 1110.0), ("1.50m", 90_000.0),
     ("2.00h", 7_200_000.0)],
    ids=["us", "ms", "s-trailing-space", "minutes", "hours"],
)  # fmt: skip
def test_parse_time_ms(text, ms):
    assert load.parse_time_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "12", "1.2 ms", "ms", "3.0d"])
def test_parse_time_ms_refuses(text):
    with pytest.raises(ValueError, match="not a wrk time"):
        load.parse_time_ms(text)


# --- wrk's report -------------------------------------------------------------------------


def test_wrk_report_with_our_json_line():
    """/health/ behind the shipped nginx at 100 connections: mostly 429s, some 503s."""
    result = load.parse_wrk_output((FIXTURES / "wrk_health_tuned_limited.txt").read_text())
    assert result["requests"] == 358659
    assert result["duration_s"] == pytest.approx(20.09319)
    assert result["rps"] == pytest.approx(358659 / 20.09319)
    assert result["bytes"] == 258035871
    assert result["statuses"] == {429: 354555, 200: 3445, 503: 659}
    assert result["non_2xx_3xx"] == 354555 + 659
    assert result["socket_errors"] == NO_SOCKET_ERRORS
    lat = result["latency_ms"]
    assert lat["p50"] == pytest.approx(4.107)
    assert lat["p95"] == pytest.approx(66.709)
    assert lat["p99"] == pytest.approx(623.051)
    assert lat["p99.9"] == pytest.approx(956.467)
    assert lat["max"] == pytest.approx(1137.251)
    assert lat["min"] == pytest.approx(0.020)


def test_wrk_json_line_agrees_with_wrks_own_text():
    text = (FIXTURES / "wrk_admin_stock.txt").read_text()
    with_json = load.parse_wrk_output(text)
    text_only = load.parse_wrk_output(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith("wrk-json: "))
    )
    assert with_json["requests"] == text_only["requests"] == 1558
    assert with_json["rps"] == pytest.approx(text_only["rps"], rel=0.001)
    # wrk prints two decimals of the unit it picks (1.11s): equal to that precision
    for key in ("p50", "p75", "p90", "p99", "max"):
        assert with_json["latency_ms"][key] == pytest.approx(text_only["latency_ms"][key], abs=5), (
            key
        )


def test_wrk_text_report_alone():
    text = (FIXTURES / "wrk_health_tuned_limited.txt").read_text()
    result = load.parse_wrk_output(
        "\n".join(ln for ln in text.splitlines() if not ln.startswith("wrk-json: "))
    )
    assert result["requests"] == 358659
    assert result["duration_s"] == pytest.approx(20.09)
    assert result["rps"] == 17849.78
    assert result["statuses"] is None
    assert result["non_2xx_3xx"] == 355214
    assert result["latency_ms"] == pytest.approx(
        {"mean": 24.03, "stdev": 96.90, "max": 1140.0, "p50": 4.11, "p75": 9.34, "p90": 21.48,
         "p99": 623.05}
    )  # fmt: skip
    assert "p95" not in result["latency_ms"]  # only our script reports it


def test_wrk_socket_errors():
    """Stock /admin/ with --timeout 1: wrk's timeouts outnumber the late responses."""
    text = (FIXTURES / "wrk_admin_stock_timeouts.txt").read_text()
    expected = {"connect": 0, "read": 0, "write": 0, "timeout": 150}
    assert load.parse_wrk_output(text)["socket_errors"] == expected
    text_only = "\n".join(ln for ln in text.splitlines() if not ln.startswith("wrk-json: "))
    assert load.parse_wrk_output(text_only)["socket_errors"] == expected
    result = load.parse_wrk_output(text)
    counts = load.classify(result["requests"], result["statuses"], result["socket_errors"])
    assert result["requests"] == 221 and counts["served"] == 221
    assert counts["failed"] == 150 and counts["error_pct"] == pytest.approx(100 * 150 / 221)


def test_error_rate_never_exceeds_100_percent():
    counts = load.classify(10, {200: 10}, {"connect": 0, "read": 0, "write": 0, "timeout": 25})
    assert counts["error_pct"] == 100.0


def test_wrk_output_without_a_report_is_refused():
    with pytest.raises(ValueError, match="no wrk report"):
        load.parse_wrk_output("unable to connect to eduaiia.com:443 Connection refused\n")


# --- what counts as an error -------------------------------------------------------------------


def test_429s_are_counted_apart_from_errors():
    counts = load.classify(1000, {200: 700, 302: 50, 429: 240, 503: 10}, NO_SOCKET_ERRORS)
    assert counts["served"] == 750
    assert counts["limited_429"] == 240 and counts["limited_pct"] == pytest.approx(24.0)
    assert counts["failed"] == 10 and counts["error_pct"] == pytest.approx(1.0)
    assert counts["attempts"] == 1000


def test_socket_errors_and_timeouts_are_errors():
    socket_errors = {"connect": 2, "read": 3, "write": 0, "timeout": 5}
    counts = load.classify(995, {200: 995}, socket_errors)
    # connect/read/write errors lost their request; a timeout's response still arrived
    assert counts["attempts"] == 1000
    assert counts["socket_failed"] == 10 and counts["failed"] == 10
    assert counts["error_pct"] == pytest.approx(1.0)
    assert counts["served"] == 995


def test_without_per_status_counts_every_non_2xx_3xx_is_an_error():
    counts = load.classify(100, None, NO_SOCKET_ERRORS, non_2xx_3xx=4)
    assert counts["failed"] == 4 and counts["limited_429"] == 0 and counts["served"] == 96


def test_no_requests_no_division():
    counts = load.classify(0, {}, NO_SOCKET_ERRORS)
    assert counts["error_pct"] == 0.0 and counts["limited_pct"] == 0.0


# --- nginx's access log ------------------------------------------------------------------------


def test_access_log_statuses_and_served_latency():
    lines = (FIXTURES / "nginx_access.jsonl").read_text().splitlines()
    entries = load.parse_access_log([*lines, ""])
    assert len(entries) == 12
    assert entries[0] == (200, pytest.approx(31.0))
    summary = load.access_summary(entries)
    assert summary["requests"] == 12
    assert summary["statuses"] == {"200": 5, "429": 4, "499": 2, "503": 1}
    # served: the five 200s (31, 33, 40, 41, 53 ms) and the 503 (16 ms); not 429 or 499
    assert summary["served_latency_ms"]["p50"] == pytest.approx(33.0)
    assert summary["served_latency_ms"]["p95"] == pytest.approx(53.0)


def test_access_summary_of_nothing():
    assert load.access_summary([])["served_latency_ms"] == {"p50": None, "p95": None, "p99": None}


# --- /proc --------------------------------------------------------------------------------------

# a PostgreSQL backend: its name holds spaces and parentheses; it called setsid() itself
BACKEND_STAT = (
    "4242 (postgres: aiia_prod aiia_prod 127.0.0.1(51234) idle) S 4100 4242 4242 0 -1 "
    "4194560 1063 0 0 0 17 5 3 1 20 0 1 0 123456 230000000 6000 18446744073709551615 "
    "1 1 0 0 0 0 4194304 19935232 1073745414 0 0 0 17 1 0 0 0 0 0"
)


def test_parse_proc_stat():
    ppid, session, ticks = load.parse_proc_stat(BACKEND_STAT)
    assert (ppid, session) == (4100, 4242)
    assert ticks == 17 + 5 + 3 + 1  # utime + stime + cutime + cstime


def test_servers_are_sessions_and_their_descendants():
    tree = {
        100: (1, 100),  # gunicorn master, a session leader
        101: (100, 100),  # its workers
        102: (100, 100),
        200: (1, 200),  # postmaster
        201: (200, 201),  # backends: setsid() each, still the postmaster's children
        202: (200, 202),
        203: (201, 203),  # a grandchild
        300: (1, 300),  # someone else's process
        301: (300, 300),
    }
    owner = load.assign_servers(tree, {100: "gunicorn", 200: "postgresql"})
    assert owner == {100: "gunicorn", 101: "gunicorn", 102: "gunicorn", 200: "postgresql",
                     201: "postgresql", 202: "postgresql", 203: "postgresql"}  # fmt: skip


def test_status_kb():
    status = "Name:\tnginx\nVmHWM:\t   12000 kB\nVmRSS:\t   10616 kB\n"
    assert load.status_kb(status, "VmRSS") == 10616
    assert load.status_kb("Rss:  900 kB\nPss:  321 kB\n", "Pss") == 321
    assert load.status_kb(status, "Pss") == 0  # a kernel thread or a zombie has none


def test_parse_cpu_line():
    stat = "cpu  100 5 50 800 45 0 0 0 0 0\ncpu0 50 2 25 400 20 0 0 0 0 0\n"
    assert load.parse_cpu_line(stat) == (155, 1000)


def test_summarize_samples_peaks_and_cpu():
    def sample(t, rss, pss, ticks, busy, total):
        return {"t": t, "rss_kb": rss, "pss_kb": pss, "ticks": sum(ticks.values()),
                "ticks_by_server": ticks, "processes": len(rss),
                "machine_busy": busy, "machine_total": total}  # fmt: skip

    samples = [
        sample(0.0, {"nginx": 10240, "gunicorn": 102400}, {"nginx": 2048}, {"nginx": 0}, 0, 0),
        sample(0.5, {"nginx": 20480, "gunicorn": 153600}, {"nginx": 4096},
               {"nginx": 5, "gunicorn": 45}, 90, 100),
        sample(1.0, {"nginx": 10240, "gunicorn": 102400}, {"nginx": 3072},
               {"nginx": 8, "gunicorn": 52}, 140, 200),
    ]  # fmt: skip
    summary = load.summarize_samples(samples, clk_tck=100, cpus=2)
    assert summary["peak_rss_mb"] == 170.0
    assert summary["peak_rss_by_server_mb"] == {"gunicorn": 150.0, "nginx": 20.0}
    assert summary["peak_pss_mb"] == 4.0
    # 50 ticks in 0.5 s on 2 CPUs = 50 %; then 10 ticks = 10 %; 60 ticks over 1 s = 30 %
    assert summary["cpu_peak_pct"] == 50.0
    assert summary["cpu_avg_pct"] == 30.0
    # a server first seen after the first sample counts from zero
    assert summary["cpu_s_by_server"] == {"gunicorn": 0.52, "nginx": 0.08}
    assert summary["machine_cpu_avg_pct"] == 70.0
    assert summary["samples"] == 3


def test_one_sample_has_memory_but_no_cpu():
    one = {"t": 0.0, "rss_kb": {"redis": 1024}, "pss_kb": {"redis": 512}, "ticks": 9,
           "ticks_by_server": {"redis": 9}, "processes": 1, "machine_busy": 1,
           "machine_total": 2}  # fmt: skip
    summary = load.summarize_samples([one], clk_tck=100, cpus=2)
    assert summary["peak_rss_mb"] == 1.0 and summary["peak_pss_mb"] == 0.5
    assert summary["cpu_peak_pct"] is None and summary["cpu_avg_pct"] is None


# --- goals and the table -------------------------------------------------------------------------


def _result(target, config, p95, error_pct, rss, cpu):
    stack = {"peak_rss_mb": rss, "peak_pss_mb": rss / 2, "cpu_peak_pct": cpu}
    return {
        "target": target, "path": load.TARGETS[target], "config": config, "rps": 100.0,
        "served_rps": 90.0, "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.2},
        "error_pct": error_pct, "limited_pct": 10.0, "nginx": {"served_latency_ms": {"p95": p95}},
        "stack": stack, "loadgen_cpu_pct": 3.0,
        "goals": load.goals(target, p95, error_pct, stack),
    }  # fmt: skip


def test_goals():
    stack = {"peak_rss_mb": 480.0, "cpu_peak_pct": 79.9}
    met = load.goals("admin", 199.9, 0.099, stack)
    assert met == {"p95_applies": True, "p95_met": True, "errors_met": True,
                   "memory_met": True, "cpu_met": True}  # fmt: skip
    missed = load.goals("health", 200.0, 0.1, {"peak_rss_mb": 480.1, "cpu_peak_pct": 80.0})
    assert not any(missed.values())


def test_table_puts_the_targets_next_to_the_figures():
    report = {
        "run": {"connections": 100, "threads": 2, "duration_s": 20, "warmup_s": 2,
                "timeout_s": 10, "think_ms": 0, "cpus": 2},
        "configs": {"tuned": {"description": "ours", "idle": {"peak_rss_mb": 300.0,
                                                              "peak_pss_mb": 120.0,
                                                              "processes": 16}}},
        "results": [_result("admin", "tuned", 150.0, 0.0, 400.0, 70.0),
                    _result("health", "tuned", 250.0, 0.5, 500.0, 90.0)],
    }  # fmt: skip
    text = load.table(report)
    header, _rule, admin, health = text.splitlines()[:4]
    assert "p95 ms <200" in header and "errors % <0.1" in header and "RSS MB <480" in header
    assert admin.split()[:2] == ["/admin/", "tuned"]
    assert "150.0 ok" in admin and "0.00 ok" in admin and "400 ok" in admin and "70 ok" in admin
    # the p95 target is the guide's for /admin only: no mark on /health/
    assert "250.0 " in health and "250.0 ok" not in health and "250.0 MISS" not in health
    assert "0.50 MISS" in health and "500 MISS" in health and "90 MISS" in health
    assert "no pause between requests (saturation)" in text
    assert "tuned: ours; idle RSS 300 MB, PSS 120 MB (16 processes)" in text


@pytest.mark.parametrize(
    ("think_ms", "expected"),
    [(0, "no pause between requests"), (1000, "1000 ms mean pause between requests")],
)
def test_table_says_how_the_load_was_paced(think_ms, expected):
    report = {
        "run": {"connections": 10, "threads": 1, "duration_s": 2, "warmup_s": 0,
                "timeout_s": 10, "think_ms": think_ms, "cpus": 2},
        "configs": {}, "results": [_result("notes", "stock", 50.0, 0.0, 100.0, 10.0)],
    }  # fmt: skip
    assert expected in load.table(report)


def test_wrk_argv():
    argv = load.wrk_argv("https://eduaiia.com:8443/admin/", duration=2, connections=100,
                         threads=2, timeout=10, script=None)  # fmt: skip
    assert argv == ["wrk", "-t", "2", "-c", "100", "-d", "2s", "--timeout", "10s", "--latency",
                    "-H", "Host: eduaiia.com", "https://eduaiia.com:8443/admin/"]  # fmt: skip


# --- rounds, ratios to stock, the knee ----------------------------------------------------------


def _run(config, target, served_rps, p95, error_pct=0.0, cpu=None, users=None):
    return {"config": config, "target": target, "path": load.TARGETS[target], "users": users,
            "rps": served_rps, "served_rps": served_rps, "latency_ms": {"p95": p95},
            "error_pct": error_pct, "cpu_ms_per_served": cpu}  # fmt: skip


def test_median():
    assert load.median([3.0, 1.0, 2.0]) == 2.0
    assert load.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert load.median([None, 5.0]) == 5.0
    assert load.median([]) is None


def test_summarize_runs_takes_medians_and_compares_with_stock():
    runs = [_run("tuned", "admin", r, 100.0, cpu=c) for r, c in ((30, 10), (20, 14), (40, 12))]
    runs += [_run("stock", "admin", r, 300.0, cpu=c) for r, c in ((10, 30), (12, 36), (8, 33))]
    rows = {r["config"]: r for r in load.summarize_runs(runs)}
    assert rows["tuned"]["runs"] == 3 and rows["tuned"]["served_rps"] == 30
    assert rows["tuned"]["cpu_ms_per_served"] == 12
    assert rows["tuned"]["x_baseline_rps"] == 3.0  # 30 / 10
    assert rows["tuned"]["x_baseline_cpu"] == 2.75  # 33 / 12
    assert rows["stock"]["x_baseline_rps"] == 1.0


def test_summarize_runs_without_stock_has_no_ratio():
    (row,) = load.summarize_runs([_run("tuned", "notes", 50, 20.0, cpu=4)])
    assert row["x_baseline_rps"] is None and row["x_baseline_cpu"] is None


def test_knee_is_the_last_user_count_before_the_first_miss():
    runs = [
        _run("tuned", "admin", 10, 90.0, users=10),
        _run("tuned", "admin", 20, 150.0, users=20),
        _run("tuned", "admin", 40, 250.0, users=40),
        _run("tuned", "admin", 60, 120.0, users=60),  # after a miss: not counted
        _run("stock", "admin", 10, 120.0, users=10),
        _run("stock", "admin", 20, 180.0, error_pct=0.01, users=20),  # an error ends it
        _run("other", "admin", 10, 200.0, users=10),  # 200 ms is not under 200
    ]
    knees = load.knee(load.summarize_runs(runs), "admin")
    assert knees == {"tuned": 20, "stock": 10, "other": None}


def test_summary_table_shows_the_knee():
    runs = [{**_run("tuned", "admin", 10, 90.0, cpu=12, users=10), "round": 1},
            {**_run("stock", "admin", 8, 250.0, cpu=30, users=10), "round": 1}]  # fmt: skip
    report = {"run": {"think_ms": 1000}, "results": runs, "summary": load.summarize_runs(runs)}
    report["knee"] = {"admin": load.knee(report["summary"], "admin")}
    text = "\n".join(load.summary_table(report))
    assert "x stock req/s" in text and "1.25" in text and "2.50" in text
    assert "tuned: 10" in text and "stock: -" in text
