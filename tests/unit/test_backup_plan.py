"""The backup's dry run is its plan: the programs `inv db-backup --dry-run` prints are the
ones the pipeline starts, from the same builders, in the same order.

The pipeline runs for real here, with stand-ins for pg_dump and pg_restore (shell scripts in
the connection's bin_dir that print a dump and its table of contents), so no PostgreSQL is
needed; every program it starts is recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from opskit import age
from opskit.backup import commands, pipeline, process
from opskit.backup.commands import PgConn

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

PG_DUMP = """#!/bin/sh
[ "$1" = --version ] && { echo "pg_dump (PostgreSQL) 15.18"; exit 0; }
head -c 200000 /dev/urandom
"""
PG_RESTORE = """#!/bin/sh
cat > /dev/null
cat "$TOC"
"""


def test_the_printed_plan_is_what_the_pipeline_starts(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("pg_dump", PG_DUMP), ("pg_restore", PG_RESTORE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("TOC", str(FIXTURES / "pg_restore_list.txt"))
    started: list[list[str]] = []

    class Recorded(process.Child):
        def __init__(self, name, argv, **kwargs):
            started.append(list(argv))
            super().__init__(name, argv, **kwargs)

    monkeypatch.setattr(process, "Child", Recorded)
    _identity, recipient = age.generate_identity()
    spec = pipeline.BackupSpec(
        environment="production",
        database="aiia_prod",
        owner="aiia_prod",
        conn=PgConn(user="postgres", bin_dir=str(bin_dir)),
        recipient=recipient,
        backup_dir=tmp_path / "backups",
    )
    (tmp_path / "backups").mkdir()
    result = pipeline.run_backup(spec, report=lambda line: None)
    assert result.path.is_dir()

    plan = pipeline.plan(spec, tmp_path / "backups" / "db_prod_<UTC time>.partial")
    printed = [line for line in plan if commands.display(started[0]) in line]
    assert printed and plan[0].startswith(commands.display(started[0]) + " | ")
    assert plan[1].endswith("| " + commands.display(started[1]))
    assert started[:2] == list(map(list, pipeline.dump_commands(spec)))
    # the encryption is this process's own stage, and said to be: no `age` program ran
    assert not any(Path(argv[0]).name == "age" for argv in started)
    assert "(in this process) age -r " + recipient in plan[0]
