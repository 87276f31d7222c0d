"""The devstatus page: static HTML, inline SVG charts, one stylesheet beside it.

No JavaScript and nothing from another host. The site's CSP (`default-src 'self'`)
forbids inline styles, so the look is in `status.css`, written beside `index.html`,
and the charts use SVG presentation attributes (which CSP allows). Both files are
written to a temporary name and renamed into place: nginx never serves half a page.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from opskit.status.collect import Snapshot, mask
from opskit.status.history import History

MIB = 1024 * 1024
DAY = 86400
STALE_AFTER_S = 180
BOX_MB = 512
MEMORY_ALERT_MB = 400

CSS = """\
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{padding:12px 20px;color:#fff;background:#2e7d32}
header.warn{background:#b26a00}header.bad{background:#c62828}
header h1{margin:0;font-size:20px}
main{padding:12px 20px}
section{background:#fff;border-radius:6px;padding:10px 14px;margin:0 0 14px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:4px 0 8px}
.notes p{margin:4px 0;padding:6px 10px;border-radius:4px;background:#fff3cd}
.notes p.stale{background:#f8d7da;font-weight:bold}
.cards{display:flex;flex-wrap:wrap;gap:8px}
.card{border:1px solid #ccd;border-left:6px solid #2e7d32;border-radius:4px;padding:6px 10px;min-width:190px}
.card.yellow{border-left-color:#b26a00}.card.red{border-left-color:#c62828}.card.grey{border-left-color:#888}
.card b{display:block}
.charts{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-weight:bold;font-size:13px}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;border-bottom:1px solid #eee}
td.num,th.num{text-align:right}
td.ok{color:#2e7d32}td.failed{color:#c62828;font-weight:bold}
pre{background:#111;color:#ddd;padding:8px;overflow-x:auto;font-size:12px;max-height:360px}
footer{padding:8px 20px;color:#555}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def chart(
    title: str,
    points: Sequence[tuple[int, float | None]],
    since: float,
    until: float,
    *,
    unit: str = "",
    y_max: float | None = None,
    lines: Sequence[tuple[float, str, str]] = (),
    width: int = 420,
    height: int = 140,
    color: str = "#1565c0",
) -> str:
    """A line chart as inline SVG; `lines` are horizontal marks (value, label, color)."""
    left, right, top, bottom = 44, 8, 8, 18
    w, h = width - left - right, height - top - bottom
    values = [v for _, v in points if v is not None]
    top_value = max([y_max or 0.0, *values, *(v for v, _, _ in lines)], default=1.0) or 1.0
    top_value *= 1.05

    def x(ts: float) -> float:
        return left + (ts - since) / max(until - since, 1) * w

    def y(v: float) -> float:
        return top + h - (v / top_value) * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafbfc" stroke="#ccd"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        v = top_value / 1.05 * frac
        parts.append(
            f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#555">{v:.0f}{_e(unit)}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 4}" font-size="10" fill="#555">{_e(_utc(since)[11:])}</text>'
    )
    parts.append(
        f'<text x="{left + w}" y="{height - 4}" font-size="10" text-anchor="end" fill="#555">'
        f"{_e(_utc(until)[11:])}</text>"
    )
    for value, label, mark in lines:
        parts.append(
            f'<line x1="{left}" x2="{left + w}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="{mark}" stroke-dasharray="4 3"/>'
            f'<text x="{left + w - 2}" y="{y(value) - 2:.1f}" font-size="10" text-anchor="end" '
            f'fill="{mark}">{_e(label)}</text>'
        )
    segment: list[str] = []
    segments = []
    for ts, v in points:
        if v is None:
            if segment:
                segments.append(segment)
            segment = []
            continue
        segment.append(f"{x(ts):.1f},{y(v):.1f}")
    if segment:
        segments.append(segment)
    for seg in segments:
        if len(seg) == 1:
            cx, cy = seg[0].split(",")
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="1.5" fill="{color}"/>')
        else:
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(seg)}"/>'
            )
    if not values:
        parts.append(
            f'<text x="{left + w / 2}" y="{top + h / 2}" font-size="12" text-anchor="middle" '
            f'fill="#888">no data yet</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def uptime_bar(days: dict[int, float], until: float, n: int = 90) -> str:
    """One bar per day for `n` days: green all up, amber some down, red mostly down."""
    width, bar = n * 5, 4
    last = int(until) - int(until) % DAY
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="24" '
        f'viewBox="0 0 {width} 24" role="img" aria-label="uptime per day, {n} days">'
    ]
    for i in range(n):
        day = last - (n - 1 - i) * DAY
        share = days.get(day)
        fill = (
            "#ddd"
            if share is None
            else "#2e7d32"
            if share >= 0.999
            else "#f9a825"
            if share >= 0.95
            else "#c62828"
        )
        label = "no data" if share is None else f"{share:.2%}"
        parts.append(
            f'<rect x="{i * 5}" y="2" width="{bar}" height="20" fill="{fill}">'
            f"<title>{_e(_utc(day)[:10])}: {_e(label)}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def stale_banner(now: float) -> str:
    """A "stale since" banner that nginx shows (SSI, `ssi on` in devstatus.conf) once the
    minute it serves the page in is 3 or more after the one it was generated in: a
    static page cannot know the time it is read at, but the server that serves it can."""
    minute = int(now) - int(now) % 60
    fresh = "|".join(
        time.strftime("%Y%m%d%H%M", time.gmtime(minute + i * 60))
        for i in range(STALE_AFTER_S // 60)
    )
    return (
        '<!--# config timefmt="%Y%m%d%H%M" -->'
        f'<!--# if expr="$date_gmt = /^({fresh})/" --><!--# else -->'
        f'<p class="stale" id="stale">stale since {_e(_utc(now))}: the collector has not '
        "written this page for 3 minutes or more (is its container running? scripts/status.sh start; see "
        "logs/status.log)</p><!--# endif -->"
    )


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.2f} %"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


def _minute_row(ts: int, m: dict) -> str:
    total, s5xx = int(m["requests"] or 0), int(m["s5xx"] or 0)
    share = s5xx / total if total else 0.0
    return (
        f'<tr data-minute="{ts}"><td>{_e(_utc(ts)[11:16])}</td><td class="num">{total}</td>'
        f'<td class="num">{int(m["s4xx"] or 0)}</td><td class="num">{s5xx}</td>'
        f'<td class="num">{int(m["s429"] or 0)}</td>'
        f'<td class="num" data-share5xx="{share:.6f}">{100.0 * share:.2f} %</td>'
        f'<td class="num">{_ms(m["p50_ms"])}</td><td class="num">{_ms(m["p95_ms"])}</td></tr>'
    )


def _container_card(c) -> str:
    state = "green"
    if c.status != "running" or c.health == "unhealthy" or c.oom_killed:
        state = "red"
    elif c.health == "starting" or (c.memory_limit and c.memory_used / c.memory_limit >= 0.9):
        state = "yellow"
    mem = f"{c.memory_used / MIB:.1f} MB" + (
        f" of {c.memory_limit / MIB:.0f} MB" if c.memory_limit else " (no limit)"
    )
    cpu = "n/a" if c.cpu_percent is None else f"{c.cpu_percent:.1f} %"
    extra = []
    if c.restarts:
        extra.append(f"restarts {c.restarts}")
    if c.oom_killed:
        extra.append("OOM-killed")
    return (
        f'<div class="card {state}" data-container="{_e(c.name)}"><b>{_e(c.name)}</b>'
        f"{_e(c.status)}{' / ' + _e(c.health) if c.health else ''}<br>memory {_e(mem)}<br>"
        f"CPU {_e(cpu)}{'<br>' + _e(', '.join(extra)) if extra else ''}</div>"
    )


def render(
    snap: Snapshot,
    hist: History,
    *,
    firing: Sequence[str],
    previous_run: float | None,
    db_note: str = "",
) -> str:
    now = snap.now
    since = now - DAY
    down = [c for c in snap.containers if c.status != "running"]
    level = "bad" if firing or down else "ok"
    headline = (
        f"{len(firing)} alert(s) firing: {', '.join(firing)}" if firing
        else f"{len(down)} container(s) not running" if down else "all systems normal"
    )  # fmt: skip
    notes = []
    if previous_run is not None and now - previous_run > STALE_AFTER_S:
        notes.append(
            f'<p class="stale">a gap from {_e(_utc(previous_run))}: the collector did not run '
            f"for {(now - previous_run) / 60:.0f} minutes before this run</p>"
        )
    if db_note:
        notes.append(f"<p>{_e(db_note)}</p>")
    notes += [f"<p>{_e(p)}</p>" for p in snap.problems]

    box = []
    if snap.cpu is not None:
        box.append(f"CPU {snap.cpu:.1f} %")
    if snap.mem_mb is not None:
        box.append(f"memory {snap.mem_mb:.0f} of {snap.mem_total_mb:.0f} MB (daemons included)")
    if snap.swap_mb is not None:
        box.append(f"swap {snap.swap_mb:.0f} MB")
    if snap.disk_pct is not None:
        box.append(f"disk {snap.disk_pct:.0f} %")
    if snap.load1 is not None:
        box.append(f"load {snap.load1:.2f}")

    cards = [_container_card(c) for c in snap.containers]
    cards += [
        f'<div class="card {_e(p.status)}" data-service="{_e(p.name)}"><b>{_e(p.name)}</b>{_e(p.summary)}</div>'
        for p in snap.services
    ]

    requests = hist.series("requests", since)
    errors = [(ts, (hist.minute(ts) or {}).get("s5xx")) for ts, _ in requests]
    share = [
        (ts, (100.0 * (e or 0) / r) if r else None)
        for (ts, r), (_, e) in zip(requests, errors, strict=True)
    ]
    charts = [
        chart("CPU %, 24 h", hist.series("cpu", since), since, now, unit="%", y_max=100,
              lines=[(80, "alert 80 %", "#c62828")]),
        chart("memory MB, 24 h (daemons included)", hist.series("mem_mb", since), since, now,
              unit="", y_max=BOX_MB,
              lines=[(BOX_MB, "512 MB box", "#555"), (MEMORY_ALERT_MB, "alert 400 MB", "#c62828")]),
        chart("requests per minute, 24 h", requests, since, now),
        chart("5xx % of requests, 24 h", share, since, now, unit="%", y_max=2,
              lines=[(1, "alert 1 %", "#c62828")], color="#c62828"),
        chart("p95 latency ms, 24 h", hist.series("p95_ms", since), since, now, unit="",
              lines=[(200, "goal 200 ms", "#b26a00")]),
    ]  # fmt: skip
    titles = ("CPU % of the box", "memory in use, MB (512 MB box, 400 MB alert)",
              "requests per minute", "5xx share of requests, %", "p95 latency, ms")  # fmt: skip
    chart_html = "".join(
        f"<figure><figcaption>{_e(t)}</figcaption>{c}</figure>"
        for t, c in zip(titles, charts, strict=True)
    )

    minutes = [(ts, hist.minute(ts)) for ts, r in requests[-15:] if r]
    minute_rows = "".join(_minute_row(ts, m) for ts, m in reversed(minutes) if m)

    up_rows = []
    for env in sorted(set(hist.uptime_envs()) | set(snap.uptime)):
        cells = "".join(
            f'<td class="num" data-uptime="{env}-{label}">{_pct(hist.uptime_share(env, now - span, now))}</td>'
            for label, span in (("24h", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY))
        )
        current = snap.uptime.get(env)
        state = "" if current is None else ("up" if current[0] else "DOWN") + f" ({current[2]})"
        up_rows.append(
            f"<tr><td>{_e(env)}</td><td>{_e(state)}</td>{cells}"
            f"<td>{uptime_bar(hist.uptime_days(env, now - 90 * DAY), now)}</td></tr>"
        )

    deploy_rows = "".join(
        f"<tr><td>{_e(d.get('when', ''))}</td><td>{_e(d.get('env', ''))}</td><td>{_e(d.get('action', ''))}</td>"
        f"<td>{_e(d.get('who', ''))}</td><td>{_e(d.get('image') or d.get('ref') or d.get('release', ''))}</td>"
        f'<td class="{"ok" if d.get("result") == "ok" else "failed"}">{_e(d.get("result", ""))}</td>'
        f"<td>{_e(d.get('reason', ''))}</td></tr>"
        for d in reversed(snap.deploys)
    )
    backups = "".join(
        f"<li>{_e(env)}: "
        + ("no good backup" if age is None else f"last good backup {age:.1f} h ago")
        + "</li>"
        for env, age in snap.backups.items()
    )
    drill = (
        "no restore drill has run yet"
        if snap.drill is None
        else f"restore drill {'passed' if snap.drill.get('ok') else 'FAILED'} at "
        f"{snap.drill.get('when', '?')}: {snap.drill.get('detail', '')}"
    )
    cert = (
        "no certificate read" if snap.cert_days is None
        else f"{snap.cert_name}: {snap.cert_days} days left"
    )  # fmt: skip
    logs = "".join(
        f"<h3>{_e(name)}</h3><pre>{_e(chr(10).join(mask(x) for x in lines)) or '(empty)'}</pre>"
        for name, lines in snap.logs.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="60">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aiia status</title>
<link rel="stylesheet" href="status.css">
</head><body>
<header class="{level}" data-status="{level}"><h1>aiia status: {_e(headline)}</h1>
<div>{_e(" · ".join(box))}</div></header>
<main>
<div class="notes">{stale_banner(now)}{"".join(notes)}</div>
<section><h2>services</h2><div class="cards">{"".join(cards) or "no containers found"}</div></section>
<section><h2>last 24 hours</h2><div class="charts">{chart_html}</div></section>
<section><h2>requests per minute</h2><table id="minutes"><tr><th>minute</th><th class="num">requests</th>
<th class="num">4xx</th><th class="num">5xx</th><th class="num">429</th><th class="num">5xx share</th>
<th class="num">p50 ms</th><th class="num">p95 ms</th></tr>{minute_rows}</table></section>
<section><h2>uptime (/health/ every minute)</h2><table id="uptime"><tr><th>environment</th><th>now</th>
<th class="num">24 h</th><th class="num">7 d</th><th class="num">30 d</th><th>90 days</th></tr>{"".join(up_rows)}</table></section>
<section><h2>last deploys</h2><table id="deploys"><tr><th>when</th><th>env</th><th>action</th><th>who</th>
<th>what</th><th>result</th><th>reason</th></tr>{deploy_rows}</table></section>
<section><h2>backups and restore drill</h2><ul>{backups}<li>{_e(drill)}</li></ul></section>
<section><h2>certificate</h2><p>{_e(cert)}</p></section>
<section><h2>recent logs (secrets masked)</h2>{logs or "no logs"}</section>
</main>
<footer>generated {_e(_utc(now))} ({int(now)}); regenerated every minute by the collector</footer>
</body></html>
"""


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish(page_dir: Path, text: str) -> None:
    css = page_dir / "status.css"
    if not css.exists() or css.read_text() != CSS:
        write_atomic(css, CSS)
    write_atomic(page_dir / "index.html", text)
