"""bench/vps_memory.py's breakdown and bench/vps_levers.py's medians: their pure parts.

The breakdown is parsed from a probe's output saved inside a 512 MB VPS that `fab setup`
provisioned (tests/fixtures/bench/vps-breakdown.txt).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.harness.core import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "bench"


def _load(name: str):
    # bench/ is a folder of scripts, not a package: load the file itself
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vps_memory = _load("vps_memory")
vps_levers = _load("vps_levers")


def _reading(state: str, rnd: int, machine: list[float], **parts: list[float]):
    r = vps_levers.Reading(state, rnd, machine=list(machine))
    for name, values in parts.items():
        for v in values:
            r.add(name, v)
    return r


def test_a_lever_is_the_median_of_its_rounds_beside_the_baseline():
    lever = vps_levers.LEVERS["containerd-no-cri"]
    readings = [
        _reading("off", 1, [400, 402, 401], containerd=[28, 28, 28], dockerd=[57, 58, 57]),
        _reading("on", 1, [390, 391, 395], containerd=[17, 17, 18], dockerd=[57, 57, 57]),
        _reading("off", 2, [404, 403, 410], containerd=[28, 29, 28], dockerd=[57, 57, 58]),
        _reading("on", 2, [392, 392, 393], containerd=[17, 17, 17], dockerd=[58, 57, 57]),
    ]
    s = vps_levers.summary(lever, readings)
    # medians per round (401, 404 off; 391, 392 on), then the median of the rounds
    assert (s["machine_off_mib"], s["machine_on_mib"], s["delta_mib"]) == (402.5, 391.5, -11.0)
    assert (s["machine_max_off_mib"], s["machine_max_on_mib"]) == (410, 395)
    # only what moved by a MiB or more is named
    assert s["moved_mib"] == {"containerd": (28.0, 17.0)}
    text = vps_levers.table([s])
    assert "| containerd-no-cri | 402.5 | 391.5 | -11.0 | 410.0 | 395.0 |" in text
    assert "containerd: 28.0 -> 17.0 (-11.0)" in text


def test_levers_together_switch_all_and_restore_each_as_found():
    a, b = vps_levers.LEVERS["engine-gogc50"], vps_levers.LEVERS["no-uu-shutdown-helper"]
    both = vps_levers.together([a, b])
    assert both.name == "engine-gogc50+no-uu-shutdown-helper"
    assert both.on == a.on + "\n" + b.on and both.off == a.off + "\n" + b.off


@pytest.mark.parametrize("name", sorted(vps_levers.LEVERS))
def test_every_lever_can_be_undone_and_says_which_state_it_is_in(name):
    lever = vps_levers.LEVERS[name]
    assert lever.on and lever.off and lever.on != lever.off
    assert "echo on" in lever.check and "echo off" in lever.check


def test_a_phase_keeps_what_held_the_machine_at_its_own_peak():
    def sample(machine: float, pinned: float, **containers: float):
        return vps_memory.Sample(containers, {"dockerd": (1, 50.0)}, machine, 512.0, 0, pinned)

    peak = vps_memory.Peak()
    peak.add(sample(400, 300, web=90, db=50))
    peak.add(sample(505, 350, web=80, db=40))  # the machine's peak: page cache, not the apps
    peak.add(sample(450, 380, web=120, db=60, oneoff=40))
    # each row is its own highest; the peak's own composition is kept beside them
    assert (peak.machine_mb, peak.pinned_mb, peak.containers["web"]) == (505, 380, 120)
    assert peak.at_peak.containers == {"web": 80, "db": 40}
    assert peak.at_peak.pinned_mb == 350
    text = vps_memory.table({"deploy peak": peak}, 350, 480)
    assert "| at its peak: containers (n)" in text and "120.0 (2)" in text
    assert "| at its peak: not page cache" in text and "350.0" in text
    # the goals' own count is one sample's sum (the third: 220 + 50), not the rows' maxima
    assert (peak.counted_mb, peak.counted_n) == (270, 3)
    assert "| containers + daemons, one sample (n)" in text and "270.0 (3)" in text
    assert "highest 505 MiB against the goal of 480: not met, 25 over" in text
    assert "containers + daemons highest 270 MiB against the goal of 480: met" in text
