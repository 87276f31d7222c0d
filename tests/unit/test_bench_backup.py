"""bench/backup.py's pure part: the users' figures over one phase of the run."""

from __future__ import annotations

import importlib.util
import sys

from tests.harness.core import ROOT


def _load():
    # bench/ is a folder of scripts, not a package: load the file itself
    spec = importlib.util.spec_from_file_location("bench_backup", ROOT / "bench" / "backup.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


backup = _load()


def test_a_phase_counts_the_answers_that_started_inside_it():
    answers = [
        (9.99, 500.0, 200),  # before the phase: its slow answer is not the phase's
        *((10.0 + i / 100, float(i + 1), 200) for i in range(100)),
        (20.0, 900.0, 200),  # the phase's end is outside it
    ]
    w = backup.window(answers, 10.0, 20.0)
    assert w["requests"] == 100
    assert w["seconds"] == 10.0
    # nearest rank, as wrk and bench/load.py report them
    assert (w["p50_ms"], w["p95_ms"]) == (50.0, 95.0)
    assert (w["errors"], w["error_pct"]) == (0, 0.0)


def test_errors_are_statuses_outside_2xx_3xx_and_exceptions_by_name():
    answers = [
        (1.0, 5.0, 200),
        (1.1, 5.0, 302),
        (1.2, 5.0, 429),
        (1.3, 5.0, 502),
        (1.4, 15000.0, "TimeoutError"),
    ]
    w = backup.window(answers, 0.0, 2.0)
    assert (w["requests"], w["errors"], w["error_pct"]) == (5, 3, 60.0)
    # a timed-out request's wait counts in the latency: it is what the user saw
    assert w["p95_ms"] == 15000.0


def test_a_phase_without_answers_has_no_latency():
    w = backup.window([(1.0, 5.0, 200)], 2.0, 3.0)
    assert w == {"requests": 0, "seconds": 1.0, "p50_ms": None, "p95_ms": None,
                 "errors": 0, "error_pct": 0.0}  # fmt: skip
