"""Monitor parsers on saved `docker stats` / `docker inspect` output, alerts and rendering.

tests/fixtures/monitor/docker_stats.jsonl and docker_inspect.jsonl: five containers of the
base image (64 MB limit; a busy loop under 32 MB; healthy under 16 MB; unhealthy, no
limit; exited with code 3), sampled by `docker stats --no-stream --all --format
'{{json .}}'` and `docker inspect --format INSPECT_FORMAT`. The *_high_memory files: one
container holding 440 MB in a tmpfs under a 512 MB limit, one idle under 64 MB.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from opskit import health
from opskit import monitor as mon
from opskit.commands import docker as docker_cmd
from opskit.commands import probes
from opskit.monitor.probe import MonitorError, take
from opskit.runner import Result

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
MIB = 1024 * 1024


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0B", 0),
        ("544KiB", 544 * 1024),
        ("441.8MiB", int(441.8 * MIB)),
        ("23.54GiB", int(23.54 * 1024**3)),
        ("736B", 736),
        ("1.2kB", 1200),
        ("12MB", 12_000_000),
    ],
)
def test_sizes_as_docker_prints_them(text, size):
    assert mon.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "12 parsecs", "MiB", "--"])
def test_bad_sizes(text):
    with pytest.raises(mon.ParseError):
        mon.parse_size(text)


def test_stats_from_saved_output():
    usage = mon.parse_stats(fixture("monitor/docker_stats.jsonl"))
    assert set(usage) == {
        "opskit_fx_limited",
        "opskit_fx_busy",
        "opskit_fx_healthy",
        "opskit_fx_unhealthy",
        "opskit_fx_exited",
    }
    assert usage["opskit_fx_busy"] == mon.Usage(49.39, 400 * 1024)
    assert usage["opskit_fx_exited"] == mon.Usage(0.0, 0)


def test_inspect_from_saved_output():
    states = mon.parse_inspect(fixture("monitor/docker_inspect.jsonl"))
    assert states["opskit_fx_limited"] == mon.State("running", "", 64 * MIB, 0, False, 0)
    assert states["opskit_fx_healthy"].health == "healthy"
    assert states["opskit_fx_unhealthy"].health == "unhealthy"
    assert states["opskit_fx_unhealthy"].memory_limit == 0
    assert states["opskit_fx_exited"].status == "exited"
    assert states["opskit_fx_exited"].exit_code == 3


def test_not_json_is_a_parse_error():
    with pytest.raises(mon.ParseError):
        mon.parse_stats("Error response from daemon: No such container: x")


def snapshot(stats: str, inspect: str, ncpu: int = 2, services=()) -> mon.Snapshot:
    rows = mon.merge(mon.parse_stats(fixture(stats)), mon.parse_inspect(fixture(inspect)))
    return mon.Snapshot(NOW, rows, ncpu, tuple(services))


def test_quiet_containers_raise_no_alert():
    shot = snapshot("monitor/docker_stats.jsonl", "monitor/docker_inspect.jsonl")
    assert shot.alerts() == []
    # 49.39 + 1.12 + 1.09 % of one core each, over 2 CPUs
    assert shot.cpu_total == pytest.approx((49.39 + 1.12 + 1.09) / 2)


def test_memory_above_400_mb_is_an_alert():
    shot = snapshot(
        "monitor/docker_stats_high_memory.jsonl", "monitor/docker_inspect_high_memory.jsonl"
    )
    assert shot.memory_total / MIB == pytest.approx(441.8 + 424 / 1024, abs=0.01)
    assert shot.alerts() == ["memory 442.2 MB in containers is above 400 MB"]
    big = next(r for r in shot.containers if r.name == "opskit_fx_big")
    assert not big.memory_warn  # 86 % of its own 512 MB limit


def test_cpu_above_80_percent_of_the_box_is_an_alert():
    busy = mon.ContainerRow("aiia_django_prod", "running", "healthy", 170.2, 100 * MIB, 160 * MIB)
    shot = mon.Snapshot(NOW, [busy], 2)
    assert shot.alerts() == ["CPU 85.1 % of 2 CPUs is above 80 %"]
    assert busy.cpu_alert


def test_render_marks_what_is_past_a_threshold():
    near_limit = mon.ContainerRow("aiia_redis", "running", "healthy", 1.0, 60 * MIB, 64 * MIB)
    hot = mon.ContainerRow(
        "aiia_django_prod", "running", "unhealthy", 95.0, 150 * MIB, 160 * MIB, 2
    )
    down = mon.ContainerRow("aiia_nginx", "exited", "", 0.0, 0, 32 * MIB)
    services = [health.Check("redis", "yellow", "49.9 MB of 50.0 MB (100%, allkeys-lru)")]
    shot = mon.Snapshot(NOW, [near_limit, hot, down], 1, services)
    text = mon.render(shot)
    lines = text.splitlines()
    assert lines[0] == "monitor 2026-01-15 12:00:00 UTC  alerts: CPU > 80 %, memory > 400 MB"
    redis = next(ln for ln in lines if ln.startswith("aiia_redis"))
    assert "60.0 / 64 MB (94%) !" in redis
    django = next(ln for ln in lines if ln.startswith("aiia_django_prod"))
    assert "running x2" in django and "unhealthy" in django and django.endswith("95.0 !")
    total = next(ln for ln in lines if ln.startswith("TOTAL"))
    assert total.endswith("96.0 % of 1 CPUs !")
    assert "redis  yellow  49.9 MB of 50.0 MB (100%, allkeys-lru)" in lines
    assert lines[-1] == "ALERT: CPU 96.0 % of 1 CPUs is above 80 %"
    assert "\x1b[" not in text
    colored = mon.render(shot, color=True)
    assert "\x1b[31;1mALERT: CPU 96.0 % of 1 CPUs is above 80 %\x1b[0m" in colored


def test_as_dict_for_scripts():
    shot = snapshot(
        "monitor/docker_stats_high_memory.jsonl", "monitor/docker_inspect_high_memory.jsonl"
    )
    data = mon.as_dict(shot)
    assert data["alerts"] == ["memory 442.2 MB in containers is above 400 MB"]
    assert {c["name"] for c in data["containers"]} == {"opskit_fx_big", "opskit_fx_small"}
    assert data["containers"][0]["memory_limit"] == 512 * MIB


class FakeEngine:
    def __init__(self, answers):
        self.answers = {tuple(k): v for k, v in answers}
        self.asked = []

    def __call__(self, argv):
        self.asked.append(argv)
        try:
            return self.answers[tuple(argv)]
        except KeyError:
            raise AssertionError(f"unexpected command: {argv}") from None


def test_take_asks_stats_inspect_and_the_data_services():
    names = sorted(mon.parse_stats(fixture("monitor/docker_stats.jsonl")))
    ps = (
        '{"service":"postgresql","name":"aiia_postgresql","state":"running","status":"Up"}\n'
        '{"service":"redis","name":"aiia_redis","state":"exited","status":"Exited (0)"}\n'
    )
    engine = FakeEngine(
        [
            (docker_cmd.stats(), Result.of(True, fixture("monitor/docker_stats.jsonl"))),
            (docker_cmd.inspect(names), Result.of(True, fixture("monitor/docker_inspect.jsonl"))),
            (docker_cmd.info("NCPU"), Result.of(True, "2\n")),
            (docker_cmd.project_containers("aiia"), Result.of(True, ps)),
            (
                docker_cmd.exec_("aiia_postgresql", probes.postgres_connections()),
                Result.of(True, fixture("health/postgres_connections.csv")),
            ),
        ]
    )
    shot = take(engine, health.layout("production"), now=NOW)
    assert [c.name for c in shot.containers] == names
    assert shot.ncpu == 2
    assert [(c.name, c.status) for c in shot.services] == [
        ("postgresql", "green"),
        ("pgbouncer", "red"),
        ("redis", "red"),
    ]


def test_take_with_a_prefix_and_docker_down():
    engine = FakeEngine(
        [
            (docker_cmd.stats(), Result.of(True, fixture("monitor/docker_stats.jsonl"))),
            (docker_cmd.inspect(["opskit_fx_busy"]), Result.of(True, "")),
            (docker_cmd.info("NCPU"), Result.of(True, "2\n")),
        ]
    )
    shot = take(engine, None, prefix="opskit_fx_bu", now=NOW)
    assert [c.name for c in shot.containers] == ["opskit_fx_busy"]
    assert shot.containers[0].status == "unknown"
    down = FakeEngine(
        [(docker_cmd.stats(), Result.of(False, "", "Cannot connect to the Docker daemon"))]
    )
    with pytest.raises(MonitorError, match="Cannot connect"):
        take(down, None)
