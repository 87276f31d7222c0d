"""Backups against the real PostgreSQL 15: the set, its checks, rotation, and the faults.

Every fault must leave the earlier good sets untouched and say what happened.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import stat
import subprocess
import tarfile

import pytest

from opskit.backup import manifest, pipeline, restore, rotation
from opskit.backup.commands import PgConn
from opskit.shell import Secret
from tests.harness.backup import PG_BIN, Database, add_rows, create_database, fingerprint, seed

pytest_plugins = ["tests.harness.backup"]

T0 = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def clock_at(days: float):
    return lambda: T0 + dt.timedelta(days=days)


def set_dirs(backup_dir) -> list[str]:
    return sorted(p.name for p in backup_dir.iterdir() if p.is_dir())


def age_decrypt(key, path) -> bytes:
    return subprocess.run(
        ["age", "-d", "-i", str(key.identity_file), str(path)], capture_output=True, check=True
    ).stdout


def test_a_backup_set_is_encrypted_complete_and_verified(backup_db, age_key, tmp_path):
    env_file = tmp_path / "prod.env"
    env_file.write_text("POSTGRES_PASSWORD=not-in-the-clear-anywhere\n")
    media = tmp_path / "media"
    (media / "avatars").mkdir(parents=True)
    (media / "avatars" / "a.png").write_bytes(b"\x89PNG fake")
    lines: list[str] = []
    result = pipeline.run_backup(
        backup_db.spec(tmp_path / "backups", age_key.recipient, env_file=env_file,
                       media_dir=media),
        report=lines.append,
        clock=clock_at(0),
    )  # fmt: skip
    assert result.path.name == "db_prod_20240101_120000"
    assert set_dirs(tmp_path / "backups") == ["db_prod_20240101_120000"]
    names = sorted(p.name for p in result.path.iterdir())
    assert names == ["MANIFEST.txt", "config.tar.gz.age", "database.dump.age", "media.tar.gz.age"]
    for path in result.path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        # nothing in the set is readable without the key, except the manifest
        if path.name != "MANIFEST.txt":
            assert path.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert b"not-in-the-clear" not in b"".join(p.read_bytes() for p in result.path.iterdir())

    m = manifest.read(result.path)
    assert (m.environment, m.database, m.recipient) == ("production", backup_db.name,
                                                        age_key.recipient)  # fmt: skip
    assert m.tables == 3 and m.migrations_table and m.toc_entries > 10
    assert manifest.check_files(result.path, m.files) == []
    assert m.tools["pg_dump"].startswith("pg_dump (PostgreSQL) 15")

    # Debian's age opens every file; the dump is a pg_restore archive of that database
    dump = age_decrypt(age_key, result.path / "database.dump.age")
    assert dump.startswith(b"PGDMP") and len(dump) == m.dump_bytes
    listing = subprocess.run([f"{PG_BIN}/pg_restore", "--list"], input=dump,
                             capture_output=True, check=True).stdout.decode()  # fmt: skip
    assert "TABLE public django_migrations" in listing
    config = tmp_path / "config.tgz"
    config.write_bytes(age_decrypt(age_key, result.path / "config.tar.gz.age"))
    with tarfile.open(config) as tar:
        assert tar.getnames() == ["prod.env"]
    media_tgz = tmp_path / "media.tgz"
    media_tgz.write_bytes(age_decrypt(age_key, result.path / "media.tar.gz.age"))
    with tarfile.open(media_tgz) as tar:
        assert "media/avatars/a.png" in tar.getnames()
    assert any("pg_restore --list ok" in line for line in lines)
    assert any("verified" in line for line in lines)


def test_plain_age_and_pg_restore_from_the_manifest_restore_the_data(
    backup_db, age_key, tmp_path, postgres_server
):
    """The disaster path: only Debian's age, createdb and pg_restore, as MANIFEST.txt says."""
    result = pipeline.run_backup(
        backup_db.spec(tmp_path / "backups", age_key.recipient), report=lambda _: None
    )
    m = manifest.read(result.path)
    text = (result.path / "MANIFEST.txt").read_text()
    lines = m.plain_restore()
    assert all(f"#   {line}" in text for line in lines)
    workdir = tmp_path / "disaster"
    workdir.mkdir()
    for entry in m.files:
        (workdir / entry.name).write_bytes((result.path / entry.name).read_bytes())
    (workdir / "MANIFEST.txt").write_text(text)
    (workdir / "backup.key").write_bytes(age_key.identity_file.read_bytes())
    restored = f"{backup_db.name}_restored"
    env = {
        **os.environ,
        "PATH": f"{PG_BIN}:{os.environ['PATH']}",
        "PGHOST": postgres_server.host,
        "PGPORT": str(postgres_server.port),
        "PGUSER": postgres_server.superuser,
        "PGPASSWORD": postgres_server.superuser_password,
    }
    script = "\n".join([manifest.CHECK_COMMAND, *lines])
    proc = subprocess.run(["bash", "-o", "errexit", "-o", "pipefail", "-c", script],
                          cwd=workdir, env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(postgres_server, restored) == fingerprint(postgres_server, backup_db.name)


def test_pg_dump_killed_midway(postgres_server, age_key, tmp_path):
    db = create_database(postgres_server)
    try:
        seed(db, noise_kb=4096)
        backups = tmp_path / "backups"
        good = pipeline.run_backup(db.spec(backups, age_key.recipient), report=lambda _: None,
                                   clock=clock_at(0))  # fmt: skip
        before = {p.name: p.read_bytes() for p in good.path.iterdir()}
        killed = []

        def kill_once(done: int, proc: subprocess.Popen) -> None:
            if not killed and done >= 1 << 20:
                killed.append(done)
                os.kill(proc.pid, signal.SIGKILL)

        with pytest.raises(pipeline.BackupFailed) as failure:
            pipeline.run_backup(db.spec(backups, age_key.recipient), report=lambda _: None,
                                clock=clock_at(1), on_block=kill_once)  # fmt: skip
        message = str(failure.value)
        assert killed, "pg_dump finished before the test could kill it"
        assert "pg_dump was killed by SIGKILL after" in message
        assert "db_prod_20240102_120000.partial was removed" in message
        assert "earlier backups untouched: 1 good set(s), newest db_prod_20240101_120000" in message
        assert set_dirs(backups) == ["db_prod_20240101_120000"]
        assert {p.name: p.read_bytes() for p in good.path.iterdir()} == before
    finally:
        db.drop()


def test_disk_full_during_the_write(postgres_server, age_key, small_tmpfs):
    db = create_database(postgres_server)
    try:
        seed(db, accounts=50, events=200)
        good = pipeline.run_backup(db.spec(small_tmpfs, age_key.recipient),
                                   report=lambda _: None, clock=clock_at(0))  # fmt: skip
        before = {p.name: p.read_bytes() for p in good.path.iterdir()}
        add_rows(db, noise_kb=4096)  # twice the size of the disk, incompressible
        with pytest.raises(pipeline.BackupFailed) as failure:
            pipeline.run_backup(db.spec(small_tmpfs, age_key.recipient),
                                report=lambda _: None, clock=clock_at(1))  # fmt: skip
        message = str(failure.value)
        assert f"the disk holding {small_tmpfs} is full" in message
        assert "No space left on device" in message
        assert "earlier backups untouched: 1 good set(s)" in message
        assert set_dirs(small_tmpfs) == ["db_prod_20240101_120000"]
        assert {p.name: p.read_bytes() for p in good.path.iterdir()} == before
        # the space was given back: a smaller backup fits again
        db.psql("DROP TABLE blobs")
        pipeline.run_backup(db.spec(small_tmpfs, age_key.recipient), report=lambda _: None,
                            clock=clock_at(2))  # fmt: skip
        assert set_dirs(small_tmpfs) == ["db_prod_20240101_120000", "db_prod_20240103_120000"]
    finally:
        db.drop()


def test_rotation_after_five_good_and_one_failed_keeps_the_newest_three_good(
    backup_db, age_key, tmp_path
):
    backups = tmp_path / "backups"
    for day in range(5):
        pipeline.run_backup(backup_db.spec(backups, age_key.recipient), report=lambda _: None,
                            clock=clock_at(day))  # fmt: skip
    bad = backup_db.spec(backups, age_key.recipient, password=Secret("wrong-password"))
    with pytest.raises(pipeline.BackupFailed, match="password authentication failed"):
        pipeline.run_backup(bad, report=lambda _: None, clock=clock_at(5))
    assert set_dirs(backups) == [
        "db_prod_20240103_120000", "db_prod_20240104_120000", "db_prod_20240105_120000",
    ]  # fmt: skip
    states = rotation.inspect(backups)
    assert [s.state for s in states] == [rotation.GOOD] * 3


def test_rotation_never_counts_or_keeps_a_crashed_partial_set(backup_db, age_key, tmp_path):
    backups = tmp_path / "backups"
    backups.mkdir()
    crashed = backups / "db_prod_20240109_000000.partial"
    crashed.mkdir()
    (crashed / "database.dump.age").write_bytes(b"age-encryption.org/v1\n half")
    lines: list[str] = []
    pipeline.run_backup(backup_db.spec(backups, age_key.recipient, keep=1),
                        report=lines.append, clock=clock_at(0))  # fmt: skip
    assert set_dirs(backups) == ["db_prod_20240101_120000"]
    assert "rotation: removed db_prod_20240109_000000.partial (unfinished)" in lines


def test_a_second_backup_waits_for_nothing_it_refuses(backup_db, age_key, tmp_path):
    backups = tmp_path / "backups"
    with pipeline.backup_lock(backups):
        with pytest.raises(pipeline.BackupLocked, match="another backup is running"):
            pipeline.run_backup(backup_db.spec(backups, age_key.recipient), report=print)
    assert set_dirs(backups) == []


def test_a_wrong_recipient_fails_before_anything_runs(backup_db, tmp_path):
    with pytest.raises(ValueError, match="invalid recipient"):
        pipeline.run_backup(backup_db.spec(tmp_path, "age1notakey"), report=print)
    assert list(tmp_path.iterdir()) == []


def test_the_application_database_as_the_stack_makes_it(app_databases, postgres_server, age_key,
                                                        tmp_path):  # fmt: skip
    """aiia_prod from postgres/init-databases.sh (PgBouncer's lookup function owned by the
    superuser, CONNECT revoked from PUBLIC), dumped as its own role over TCP, drilled."""
    prod = app_databases["production"]
    db = Database(postgres_server, prod.db, prod.password)
    assert db.name == prod.user == "aiia_prod"
    result = pipeline.run_backup(db.spec(tmp_path / "backups", age_key.recipient),
                                 report=lambda _: None)  # fmt: skip
    listing = manifest.read(result.path)
    assert listing.toc_entries > 0
    spec = restore.RestoreSpec(
        environment="production", database=prod.db, owner=prod.user,
        conn=PgConn(user="postgres", host=postgres_server.host, port=postgres_server.port,
                    bin_dir=PG_BIN),
        password=Secret(postgres_server.superuser_password),
        identities=[line for line in age_key.identity_file.read_text().splitlines()
                    if line.startswith("AGE-SECRET-KEY-")],
    )  # fmt: skip
    drill = restore.run_restore(result.path, spec, verify_only=True, report=lambda _: None)
    assert not drill.swapped
