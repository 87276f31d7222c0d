"""Alert rules: each run's readings in, the notices to send out, the state kept between runs.

Every rule is one `Reading` per run (a key such as `cpu` or `health:staging`, whether it
is bad, whether it is good enough to clear, and a line of text). One engine decides for
all of them, the way Alertmanager and Netdata do:

- `for_s` (Alertmanager's `for:`): a reading must stay bad this long before it fires;
  `fail_after` (Gatus's failure threshold): or this many bad readings in a row;
- hysteresis (Netdata): once firing, a rule clears only on readings that are *good*,
  which for thresholds is a lower line (CPU fires above 80 %, clears below 70 %), and
  only after `clear_after` good readings in a row (Gatus's success threshold);
- a reminder every `REPEAT_S` (Alertmanager's `repeat_interval`, 4 h) while firing, a
  fresh notice when a level worsens (certificate days 21 -> 14 -> 7 -> 3), and one
  resolved notice when it clears.

The state is plain JSON, saved by the caller after every run: a restarted job carries
on where the last run stopped and never repeats a notice. Time is a number of seconds
handed in, so tests run every rule on a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

REPEAT_S = 4 * 3600
WINDOW_S = 5 * 60

CPU_RAISE, CPU_CLEAR = 80.0, 70.0
MEMORY_RAISE_MB, MEMORY_CLEAR_MB = 400.0, 350.0
ERRORS_RAISE = 0.01  # 5xx share of requests
DISK_RAISE, DISK_CLEAR = 85.0, 80.0
HEALTH_FAILS = 3
GOOD_CHECKS = 2
BACKUP_MAX_AGE_H = 26.0
CERT_LEVELS = (21, 14, 7, 3)


@dataclass(frozen=True)
class Reading:
    """One rule's reading in one run."""

    key: str
    bad: bool
    text: str
    good: bool | None = None  # default: not bad
    for_s: float = 0.0
    fail_after: int = 1
    clear_after: int = 1
    level: int = 0  # higher is worse: a worse level while firing sends a fresh notice

    @property
    def clears(self) -> bool:
        return (not self.bad) if self.good is None else self.good


@dataclass(frozen=True)
class Notice:
    key: str
    kind: str  # firing | reminder | resolved
    text: str

    def message(self) -> str:
        mark = {
            "firing": ":rotating_light:",
            "reminder": ":bell:",
            "resolved": ":white_check_mark:",
        }
        label = {"firing": "ALERT", "reminder": "STILL FIRING", "resolved": "RESOLVED"}
        return f"{mark[self.kind]} {label[self.kind]} [{self.key}] {self.text}"


@dataclass
class Outcome:
    notices: list[Notice] = field(default_factory=list)
    state: dict[str, dict] = field(default_factory=dict)

    def firing(self) -> list[str]:
        return sorted(k for k, s in self.state.items() if s.get("firing"))


def evaluate(readings: Iterable[Reading], state: Mapping[str, Mapping], now: float) -> Outcome:
    """The notices this run sends and the state the next run starts from.

    A key not read in this run keeps its state untouched (a probe that could not run is
    no evidence either way).
    """
    out = Outcome(state={k: dict(v) for k, v in state.items()})
    for r in readings:
        st = out.state.setdefault(r.key, {})
        if not st.get("firing"):
            if r.bad:
                st.setdefault("bad_since", now)
                st["bad_count"] = st.get("bad_count", 0) + 1
            else:
                st.pop("bad_since", None)
                st["bad_count"] = 0
            held = now - st.get("bad_since", now)
            if r.bad and held >= r.for_s and st["bad_count"] >= r.fail_after:
                st.update(firing=True, fired_at=now, sent_at=now, level=r.level, good_count=0)
                st["text"] = r.text
                out.notices.append(Notice(r.key, "firing", r.text))
            continue
        st["good_count"] = st.get("good_count", 0) + 1 if r.clears else 0
        if st["good_count"] >= r.clear_after:
            out.notices.append(Notice(r.key, "resolved", r.text))
            out.state[r.key] = {"bad_count": 0}
            continue
        if r.bad:
            st["text"] = r.text
        if r.bad and r.level > st.get("level", 0):
            st.update(level=r.level, sent_at=now)
            out.notices.append(Notice(r.key, "firing", r.text))
        elif now - st.get("sent_at", now) >= REPEAT_S:
            st["sent_at"] = now
            out.notices.append(Notice(r.key, "reminder", st.get("text", r.text)))
    return out


# --- the rules of the guide and DESIGN.md, from one run's figures -----------------------


def _hysteresis(
    key: str, value: float, raise_above: float, clear_below: float, text: str, for_s: float = 0.0
) -> Reading:
    """Bad above `raise_above`; once firing, clear only below `clear_below` (no flapping)."""
    return Reading(key, value > raise_above, text, good=value < clear_below, for_s=for_s)


def cpu(percent: float) -> Reading:
    text = (
        f"CPU {percent:.0f} % of the box (alert above {CPU_RAISE:g} % for 5 min, "
        f"clears below {CPU_CLEAR:g} %)"
    )
    return _hysteresis("cpu", percent, CPU_RAISE, CPU_CLEAR, text, for_s=WINDOW_S)


def memory(used_mb: float) -> Reading:
    text = (
        f"memory {used_mb:.0f} MB in use on the box, daemons included (alert above "
        f"{MEMORY_RAISE_MB:g} MB for 5 min, clears below {MEMORY_CLEAR_MB:g} MB)"
    )
    return _hysteresis("memory", used_mb, MEMORY_RAISE_MB, MEMORY_CLEAR_MB, text, for_s=WINDOW_S)


def errors(requests: int, errors_5xx: int) -> Reading:
    share = errors_5xx / requests if requests else 0.0
    return Reading(
        "5xx",
        share > ERRORS_RAISE,
        f"5xx {share:.1%} of {requests} requests in the last minute (alert above "
        f"{ERRORS_RAISE:.0%} for 5 min)",
        for_s=WINDOW_S,
        clear_after=GOOD_CHECKS,
    )


def health(env: str, ok: bool, detail: str) -> Reading:
    return Reading(
        f"health:{env}",
        not ok,
        f"{env} /health/ {'answers' if ok else 'FAILING'}: {detail}",
        fail_after=HEALTH_FAILS,
        clear_after=GOOD_CHECKS,
    )


def certificate(days: int, name: str) -> Reading:
    crossed = [lvl for lvl in CERT_LEVELS if days < lvl]
    level = len(crossed)
    return Reading(
        "certificate",
        level > 0,
        f"certificate {name}: {days} days left" + (f" (below {crossed[-1]})" if crossed else ""),
        level=level,
    )


def disk(percent: float) -> Reading:
    text = (
        f"disk {percent:.0f} % full (alert above {DISK_RAISE:g} %, clears below {DISK_CLEAR:g} %)"
    )
    return _hysteresis("disk", percent, DISK_RAISE, DISK_CLEAR, text)


def backup(age_h: float | None) -> Reading:
    stale = age_h is None or age_h > BACKUP_MAX_AGE_H
    text = "no good backup found" if age_h is None else f"last good backup {age_h:.1f} h old"
    return Reading(
        "backup",
        stale,
        f"{text} (alert past {BACKUP_MAX_AGE_H:g} h)",
        clear_after=GOOD_CHECKS,
    )


def drill(ok: bool, detail: str) -> Reading:
    return Reading(
        "drill",
        not ok,
        f"restore drill {'passed' if ok else 'FAILED'}: {detail}",
        clear_after=GOOD_CHECKS,
    )


def deploy(env: str, ok: bool, detail: str) -> Reading:
    return Reading(f"deploy:{env}", not ok, f"{env} deploy {'ok' if ok else 'FAILED'}: {detail}")


def container(name: str, restarted: int, oom_killed: bool) -> Reading:
    what = []
    if restarted:
        what.append(f"restarted {restarted} time(s) since the last run")
    if oom_killed:
        what.append("OOM-killed")
    return Reading(
        f"container:{name}",
        bool(what),
        f"container {name} " + (" and ".join(what) if what else "stable"),
        clear_after=GOOD_CHECKS,
    )
