"""Every alert rule on a fake clock: fires after its window and not before, hysteresis,
reminders every 4 h, resolved, and the state carried across runs (as JSON, like the
SQLite state between two cron runs)."""

from __future__ import annotations

import json

import pytest

from opskit.status import rules as R

pytestmark = pytest.mark.unit
MIN = 60


class Clock:
    """Runs of the collector one minute apart; the state goes through JSON each run."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.state: dict = {}

    def run(self, *readings: R.Reading) -> list[tuple[str, str]]:
        out = R.evaluate(readings, self.state, self.now)
        self.state = json.loads(json.dumps(out.state))
        self.now += MIN
        return [(n.key, n.kind) for n in out.notices]


def runs(clock: Clock, make, values) -> list[list[tuple[str, str]]]:
    return [clock.run(make(v)) for v in values]


@pytest.mark.parametrize(
    "make, bad, between, good, key",
    [
        (R.cpu, 95.0, 75.0, 50.0, "cpu"),
        (R.memory, 420.0, 380.0, 300.0, "memory"),
    ],
    ids=["cpu", "memory"],
)
def test_threshold_fires_after_5_min_and_clears_only_below_the_lower_line(
    make, bad, between, good, key
):
    clock = Clock()
    # bad at minutes 0..4: held 4 minutes, not yet 5
    assert runs(clock, make, [bad] * 5) == [[]] * 5
    assert clock.run(make(bad)) == [(key, "firing")]  # minute 5: held 5 minutes
    # between the lines: still firing, nothing sent (hysteresis)
    assert runs(clock, make, [between] * 3) == [[]] * 3
    assert clock.state[key]["firing"]
    assert clock.run(make(good)) == [(key, "resolved")]
    assert not clock.state[key].get("firing")


def test_threshold_dip_restarts_the_window():
    clock = Clock()
    runs(clock, R.cpu, [95.0] * 4)
    clock.run(R.cpu(60.0))  # one good minute: the 5 minutes start again
    assert runs(clock, R.cpu, [95.0] * 5) == [[]] * 5
    assert clock.run(R.cpu(95.0)) == [("cpu", "firing")]


def test_reminder_every_4_hours_while_firing_then_resolved():
    clock = Clock()
    runs(clock, R.memory, [450.0] * 6)
    sent = runs(clock, R.memory, [450.0] * (4 * 60 - 1))
    assert all(s == [] for s in sent)  # nothing for 4 h minus one minute
    assert clock.run(R.memory(450.0)) == [("memory", "reminder")]  # 4 h after the alert
    assert all(s == [] for s in runs(clock, R.memory, [450.0] * 239))
    assert clock.run(R.memory(450.0)) == [("memory", "reminder")]
    assert clock.run(R.memory(100.0)) == [("memory", "resolved")]


def test_5xx_over_1_percent_for_5_min_clears_after_2_good_checks():
    clock = Clock()
    assert [clock.run(R.errors(100, 5)) for _ in range(5)] == [[]] * 5
    assert clock.run(R.errors(100, 5)) == [("5xx", "firing")]
    assert clock.run(R.errors(100, 0)) == []  # one good check
    assert clock.run(R.errors(100, 5)) == []  # bad again: the count starts over
    assert clock.run(R.errors(100, 0)) == []
    assert clock.run(R.errors(100, 0)) == [("5xx", "resolved")]


def test_exactly_1_percent_is_not_over():
    clock = Clock()
    assert all(s == [] for s in [clock.run(R.errors(100, 1)) for _ in range(10)])


def test_health_fails_3_times_in_a_row_then_clears_after_2():
    clock = Clock()
    assert clock.run(R.health("staging", False, "502")) == []
    assert clock.run(R.health("staging", False, "502")) == []
    assert clock.run(R.health("staging", True, "200")) == []  # streak broken
    assert clock.run(R.health("staging", False, "502")) == []
    assert clock.run(R.health("staging", False, "502")) == []
    assert clock.run(R.health("staging", False, "502")) == [("health:staging", "firing")]
    assert clock.run(R.health("staging", True, "200")) == []
    assert clock.run(R.health("staging", True, "200")) == [("health:staging", "resolved")]


def test_health_of_each_environment_is_its_own_alert():
    clock = Clock()
    for _ in range(3):
        sent = clock.run(R.health("staging", False, "502"), R.health("production", True, "200"))
    assert sent == [("health:staging", "firing")]


def test_certificate_notices_at_21_14_7_and_3_days():
    clock = Clock()
    sent = [clock.run(R.certificate(d, "eduaiia.com")) for d in (30, 22, 21, 20, 15, 13, 13, 6, 2)]
    assert sent == [
        [], [], [],
        [("certificate", "firing")],  # 20 < 21
        [],
        [("certificate", "firing")],  # 13 < 14
        [],
        [("certificate", "firing")],  # 6 < 7
        [("certificate", "firing")],  # 2 < 3
    ]  # fmt: skip
    assert clock.run(R.certificate(89, "eduaiia.com")) == [("certificate", "resolved")]


def test_backup_older_than_26_hours():
    clock = Clock()
    assert clock.run(R.backup(25.9)) == []
    assert clock.run(R.backup(26.1)) == [("backup", "firing")]
    assert clock.run(R.backup(0.1)) == []
    assert clock.run(R.backup(0.2)) == [("backup", "resolved")]
    assert Clock().run(R.backup(None)) == [("backup", "firing")]


def test_disk_over_85_percent_clears_below_80():
    clock = Clock()
    assert clock.run(R.disk(85.0)) == []
    assert clock.run(R.disk(86.0)) == [("disk", "firing")]
    assert clock.run(R.disk(82.0)) == []
    assert clock.run(R.disk(79.0)) == [("disk", "resolved")]


def test_failed_drill():
    clock = Clock()
    assert clock.run(R.drill(True, "ok")) == []
    assert clock.run(R.drill(False, "pg_restore failed")) == [("drill", "firing")]
    assert clock.run(R.drill(True, "ok")) == []
    assert clock.run(R.drill(True, "ok")) == [("drill", "resolved")]


def test_failed_deploy_fires_at_once_and_resolves_on_the_next_good_one():
    clock = Clock()
    assert clock.run(R.deploy("production", False, "health gate")) == [
        ("deploy:production", "firing")
    ]
    assert clock.run(R.deploy("production", False, "health gate")) == []
    assert clock.run(R.deploy("production", True, "ok")) == [("deploy:production", "resolved")]


def test_container_restart_or_oom_kill():
    clock = Clock()
    assert clock.run(R.container("aiia_redis", 0, False)) == []
    assert clock.run(R.container("aiia_redis", 1, False)) == [("container:aiia_redis", "firing")]
    assert clock.run(R.container("aiia_redis", 0, False)) == []
    assert clock.run(R.container("aiia_redis", 0, False)) == [("container:aiia_redis", "resolved")]
    assert clock.run(R.container("aiia_nginx", 0, True)) == [("container:aiia_nginx", "firing")]


def test_state_kept_across_runs_never_repeats_an_alert():
    """A restarted job (a fresh evaluate with the saved state) sends nothing new."""
    clock = Clock()
    runs(clock, R.cpu, [95.0] * 6)
    saved = json.dumps(clock.state)
    restarted = Clock()
    restarted.now, restarted.state = clock.now, json.loads(saved)
    assert runs(restarted, R.cpu, [95.0] * 30) == [[]] * 30
    assert restarted.run(R.cpu(10.0)) == [("cpu", "resolved")]


def test_a_rule_not_read_keeps_its_state():
    clock = Clock()
    for _ in range(3):
        clock.run(R.health("staging", False, "down"))
    assert clock.run() == []
    assert clock.state["health:staging"]["firing"]


def test_messages_say_what_and_which():
    notice = R.Notice("cpu", "firing", "CPU 95 %")
    assert notice.message() == ":rotating_light: ALERT [cpu] CPU 95 %"
    assert "RESOLVED" in R.Notice("cpu", "resolved", "CPU 5 %").message()
