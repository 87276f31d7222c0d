"""opskit.backup.rotation: which sets are good, and which rotation keeps."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from opskit.backup import manifest, rotation
from opskit.backup.rotation import DAMAGED, GOOD, PARTIAL, SetState

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def state(day: int, kind: str = GOOD, env: str = "prod") -> SetState:
    ts = T0 + dt.timedelta(days=day)
    name = f"db_{env}_{ts:%Y%m%d_%H%M%S}" + (".partial" if kind == PARTIAL else "")
    return SetState(name, env, ts, kind)


def test_five_good_and_one_failed_keep_the_newest_three():
    sets = [state(d) for d in range(5)] + [state(5, PARTIAL)]
    plan = rotation.plan(sets, env_short="prod", keep=3)
    assert [s.timestamp.day for s in plan.keep] == [5, 4, 3]
    assert sorted(s.timestamp.day for s in plan.delete) == [1, 2]
    assert [s.state for s in plan.remove_partial] == [PARTIAL]


def test_a_newer_failure_never_pushes_out_good_sets():
    sets = [state(0), state(1), state(2, PARTIAL), state(3, PARTIAL)]
    plan = rotation.plan(sets, env_short="prod", keep=3)
    assert len(plan.keep) == 2 and plan.delete == ()


@pytest.mark.parametrize("keep", [0, -1, 1])
def test_never_deletes_the_last_good_one(keep):
    sets = [state(0), state(1)]
    plan = rotation.plan(sets, env_short="prod", keep=keep)
    assert [s.timestamp.day for s in plan.keep] == [2]


def test_other_environments_and_damaged_sets_are_untouched():
    sets = [state(d, env="staging") for d in range(6)] + [state(0), state(1, DAMAGED)]
    plan = rotation.plan(sets, env_short="prod", keep=3)
    assert [s.name for s in plan.keep] == [state(0).name]
    assert plan.delete == () and plan.remove_partial == ()
    assert [s.name for s in plan.damaged] == [state(1, DAMAGED).name]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("db_prod_20240101_120000", ("prod", dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), False)),
        ("db_staging_20240101_120000.partial",
         ("staging", dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), True)),
        ("db_prod_20241301_120000", None),
        ("db_qa_20240101_120000", None),
        ("notes", None),
    ],
)  # fmt: skip
def test_parse_name(name, expected):
    assert rotation.parse_name(name) == expected


def _write_set(root, name, *, body=b"dump", manifest_text=True, size_delta=0):
    path = root / name
    path.mkdir()
    (path / manifest.DUMP_FILE).write_bytes(body)
    if manifest_text:
        entry = manifest.FileEntry(
            manifest.DUMP_FILE, len(body) + size_delta, hashlib.sha256(body).hexdigest()
        )
        m = manifest.Manifest(
            name=name, environment="production", database="aiia_prod", owner="aiia_prod",
            created=T0, recipient="age1x", dump_bytes=4, toc_entries=1, tables=1,
            migrations_table=False, files=(entry,),
        )  # fmt: skip
        (path / manifest.MANIFEST_FILE).write_text(m.render())
    return path


def test_inspect_classifies_directories(tmp_path):
    _write_set(tmp_path, "db_prod_20240101_000000")
    _write_set(tmp_path, "db_prod_20240102_000000", manifest_text=False)
    _write_set(tmp_path, "db_prod_20240103_000000", size_delta=10)
    _write_set(tmp_path, "db_prod_20240104_000000.partial", manifest_text=False)
    (tmp_path / "db_prod_20240105_000000").write_text("a file, not a set")
    (tmp_path / "unrelated").mkdir()
    got = {s.name: (s.state, s.reason) for s in rotation.inspect(tmp_path)}
    assert got["db_prod_20240101_000000"] == (GOOD, "")
    assert got["db_prod_20240102_000000"][0] == DAMAGED
    assert "never completed" in got["db_prod_20240102_000000"][1]
    assert got["db_prod_20240103_000000"][0] == DAMAGED
    assert "truncated" in got["db_prod_20240103_000000"][1]
    assert got["db_prod_20240104_000000.partial"][0] == PARTIAL
    assert len(got) == 4
    assert rotation.good_sets(tmp_path, "prod") == ["db_prod_20240101_000000"]
