"""The collector's parts that need no server: /proc parsers, the access log read by
inode and offset across rotation, the history database (rollups, retention, a corrupt
file), the page (SVG charts, nothing from another host, nothing inline that the CSP
forbids), secret masking and the Docker stream format."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from opskit.status import accesslog, page, procfs
from opskit.status.collect import Container, Snapshot, mask
from opskit.status.docker_api import demux
from opskit.status.history import History

pytestmark = pytest.mark.unit

T0 = 1_800_000_000 - 1_800_000_000 % 3600


def line(
    status: int, t: str = "2027-01-15T08:00:10+00:00", took: float = 0.010, agent: str = "curl"
) -> bytes:
    return json.dumps(
        {"time": t, "status": status, "request_time": took, "user_agent": agent}
    ).encode()


def test_proc_parsers():
    stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"
    times = procfs.parse_stat(stat)
    assert times == procfs.CpuTimes(150, 1000)
    later = procfs.parse_stat("cpu  200 0 100 850 50 0 0 0 0 0\n")
    assert procfs.cpu_percent(times, later) == pytest.approx(75.0)
    assert procfs.cpu_percent(None, later) is None
    mem = procfs.parse_meminfo(
        "MemTotal: 524288 kB\nMemAvailable: 131072 kB\nSwapTotal: 1000 kB\nSwapFree: 400 kB\n"
    )
    assert (mem.total, mem.used, mem.swap_used) == (512 << 20, 384 << 20, 600 * 1024)
    assert procfs.parse_loadavg("0.52 0.40 0.30 1/200 999\n") == 0.52
    with pytest.raises(ValueError, match="MemAvailable"):
        procfs.parse_meminfo("MemTotal: 1 kB\n")


def test_access_log_incremental_and_across_rotation(tmp_path):
    log = tmp_path / "access.log"
    log.write_bytes(line(200) + b"\n" + line(500) + b"\n" + b'{"partial')
    lines, pos = accesslog.read_new(log, accesslog.Position())
    assert len(lines) == 2  # the unfinished line waits for the next run
    with open(log, "ab") as f:
        f.write(b'": 1}\n' + line(404) + b"\n")
    lines, pos = accesslog.read_new(log, pos)
    assert len(lines) == 2 and json.loads(lines[1])["status"] == 404
    # rotation: more lines land in the old file, it is renamed, nginx opens a new one
    with open(log, "ab") as f:
        f.write(line(502) + b"\n")
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(line(201) + b"\n")
    lines, pos = accesslog.read_new(log, pos)
    assert [json.loads(x)["status"] for x in lines] == [502, 201]
    assert pos.inode == log.stat().st_ino
    assert accesslog.read_new(log, pos)[0] == []
    # truncated in place: read from the start
    log.write_bytes(line(200) + b"\n")
    assert len(accesslog.read_new(log, accesslog.Position(log.stat().st_ino, 10_000))[0]) == 1


def test_access_log_figures_per_minute():
    rows = [line(200, took=t / 1000) for t in range(1, 101)] + [line(503), line(429), line(404)]
    rows += [line(500, agent="aiia-status/1"), line(500, t="2027-01-15T08:01:00+00:00"), b"garbage"]
    minutes, bad = accesslog.aggregate(rows)
    assert bad == 1
    first = minutes[accesslog.minute_of("2027-01-15T08:00:00+00:00")]
    assert (first.requests, first.s5xx, first.s4xx, first.s429) == (103, 1, 2, 1)
    assert first.percentile(50) == pytest.approx(49.0)  # three 10 ms lines below the middle
    assert first.percentile(95) == pytest.approx(95.0)
    assert len(minutes) == 2


def test_tail_reads_the_last_lines(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert accesslog.tail(f, 3) == ["line 4997", "line 4998", "line 4999"]
    assert accesslog.tail(tmp_path / "missing", 3) == []


def test_history_records_rolls_up_and_prunes(tmp_path):
    hist = History(tmp_path / "status.db")
    for i in range(3):
        now = T0 + i * 60
        hist.record(now, {"cpu": 10.0 * (i + 1), "mem_mb": 300.0}, {"staging": (i != 1, 5.0)},
                    {"alerts": {"x": i}}, {now: {"requests": 10, "s4xx": 0, "s5xx": i, "s429": 0,
                                                 "p50_ms": 1.0, "p95_ms": 2.0}})  # fmt: skip
    assert hist.get("alerts") == {"x": 2}
    assert [v for _, v in hist.series("cpu", T0)] == [10.0, 20.0, 30.0]
    assert hist.minute(T0 + 120)["s5xx"] == 2
    assert hist.uptime_share("staging", T0, T0 + 180) == pytest.approx(2 / 3)
    assert hist.uptime_share("staging", T0 - 30 * 86400, T0 + 180) == pytest.approx(2 / 3)
    (hour, cpu), = hist.hourly_series("cpu", T0)  # fmt: skip
    assert (hour, cpu) == (T0, pytest.approx(20.0))
    # two days later the minute samples are gone, the hourly rollup stays
    hist.record(T0 + 49 * 3600, {"cpu": 1.0}, {}, {})
    assert [ts for ts, _ in hist.series("cpu", 0)] == [T0 + 49 * 3600]
    assert len(hist.hourly_series("cpu", 0)) == 2
    hist.close()


def test_requests_of_one_minute_read_in_two_runs_add_up(tmp_path):
    hist = History(tmp_path / "status.db")
    figures = {"requests": 6, "s4xx": 0, "s5xx": 2, "s429": 0, "p50_ms": 1.0, "p95_ms": 2.0}
    hist.record(T0 + 30, {"cpu": 1.0}, {}, {}, {T0: figures})
    hist.record(T0 + 59, {"cpu": 2.0}, {}, {}, {T0: figures})
    got = hist.minute(T0)
    assert (got["requests"], got["s5xx"], got["cpu"]) == (12, 4, 2.0)


def test_corrupt_history_starts_afresh_with_a_note(tmp_path):
    db = tmp_path / "status.db"
    db.write_bytes(b"this is not a database" * 100)
    hist = History(db, now=T0)
    assert "could not be read" in hist.note and "corrupt-" in hist.note
    assert list(tmp_path.glob("status.db.corrupt-*"))
    hist.record(T0, {"cpu": 1.0}, {}, {})
    hist.close()
    assert History(db).note == hist.note  # the note stays on the page


def test_page_has_svg_charts_and_nothing_the_csp_refuses(tmp_path):
    hist = History(tmp_path / "status.db")
    for i in range(30):
        now = T0 + i * 60
        uptime = {"production": (True, 4.0), "staging": (i < 20, 4.0)}
        figures = {"requests": 10, "s4xx": 1, "s5xx": 1, "s429": 0, "p50_ms": 3.0, "p95_ms": 9.0}
        hist.record(now, {"cpu": 50.0, "mem_mb": 380.0}, uptime, {}, {now: figures})
    snap = Snapshot(
        T0 + 29 * 60,
        cpu=50.0,
        mem_mb=380.0,
        mem_total_mb=512.0,
        swap_mb=0.0,
        disk_pct=40.0,
        load1=0.5,
    )
    snap.containers = [
        Container("aiia_nginx", "running", "healthy", 8 << 20, 56 << 20, 0.5, 0, False)
    ]
    snap.uptime = {"production": (True, 4.0, "HTTP 200"), "staging": (False, 4.0, "HTTP 502")}
    snap.logs = {"aiia_django_prod": ["POSTGRES_PASSWORD=hunter2 <script>"]}
    text = page.render(snap, hist, firing=["health:staging"], previous_run=T0 - 600)
    assert text.count("<svg") >= 7  # five charts, two 90-day bars
    assert "<script" not in text and " style=" not in text and "<style" not in text
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "hunter2" not in text and "&lt;script&gt;" in text
    assert "a gap from" in text  # the collector saw its own gap of 10 minutes
    assert '<!--# if expr="$date_gmt = /^(202701150829|202701150830|202701150831)/" -->' in text
    assert 'data-uptime="staging-24h">66.67 %' in text
    assert 'data-share5xx="0.100000"' in text
    page.publish(tmp_path / "www", text)
    assert (tmp_path / "www" / "index.html").read_text() == text
    assert (tmp_path / "www" / "status.css").read_text() == page.CSS
    assert not [p for p in (tmp_path / "www").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "raw, masked",
    [
        ("POSTGRES_PASSWORD=s3cret rest", "POSTGRES_PASSWORD=*** rest"),
        ("django_secret_key: abc", "django_secret_key: ***"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("redis://user:pw@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("https://hooks.slack.com/services/T0/B0/XX", "https://hooks.slack.com/services/***"),
        ("GET /api/notes/ 200", "GET /api/notes/ 200"),
    ],
    ids=["env", "lowercase", "bearer", "url", "slack", "plain"],
)
def test_log_lines_are_masked(raw, masked):
    assert mask(raw) == masked


def test_docker_stream_demux():
    frame = lambda kind, data: struct.pack(">BxxxI", kind, len(data)) + data  # noqa: E731
    assert demux(frame(1, b"out1\n") + frame(2, b"err\n") + frame(1, b"out2\n")) == (
        "out1\nout2\n",
        "err\n",
    )


def test_page_dir_rename_is_atomic(tmp_path: Path):
    target = tmp_path / "index.html"
    page.write_atomic(target, "one")
    inode = target.stat().st_ino
    page.write_atomic(target, "two")
    assert target.read_text() == "two" and target.stat().st_ino != inode


def test_not_after_read_from_der_matches_cryptography():
    import datetime as dt

    from cryptography.hazmat.primitives.serialization import Encoding

    from opskit import tls
    from opskit.status.collect import not_after

    ca = tls.create_ca("status test CA")
    leaf = tls.issue_leaf(ca, ["eduaiia.com"])
    for cert in (ca.cert, leaf.cert):
        der = cert.public_bytes(Encoding.DER)
        assert not_after(der) == cert.not_valid_after_utc.replace(microsecond=0)
        assert not_after(der).tzinfo == dt.UTC
