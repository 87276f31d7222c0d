"""Tiers are chosen by folder: tests/unit -> unit, tests/services -> services, ...

A test may also carry its marker explicitly; the folder's is added when missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TIERS = ("unit", "services", "stack", "remote", "vps")
HERE = Path(__file__).parent

pytest_plugins = ["tests.harness.fixtures", "tests.harness.native", "tests.harness.fixtures_vps"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(HERE.resolve())
        tier = rel.parts[0] if rel.parts else ""
        if tier in TIERS and not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


def pytest_sessionstart(session):
    # `timeout` and CI runners stop a run with SIGTERM: turn it into KeyboardInterrupt so
    # fixture teardown still stops every server the run started.
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
