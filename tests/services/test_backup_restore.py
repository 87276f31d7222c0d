"""Restores against the real PostgreSQL 15: drill, restore into a new database, swap, and
the sets or keys that must be refused, each refusal naming the file and changing nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess

import pytest

from opskit import age
from opskit.backup import manifest, pipeline, restore
from opskit.backup.restore import RestoreSpec
from opskit.shell import Secret
from tests.harness.backup import PG_BIN, age_keygen, fingerprint
from tests.harness.core import wait_until

pytest_plugins = ["tests.harness.backup"]

T0 = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def databases(server, like: str) -> list[str]:
    out = server.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{like}%' ORDER BY 1")  # noqa: S608
    return out.splitlines()


def restore_spec(db, key, *, database=None, environment="production") -> RestoreSpec:
    return RestoreSpec(
        environment=environment,
        database=database or db.name,
        owner=db.name,
        conn=db.superuser_conn(),
        password=Secret(db.server.superuser_password),
        identities=age.parse_identity_file(key.identity_file.read_text()),
        identity_source=key.identity_file.name,
    )


@pytest.fixture
def backed_up(backup_db, age_key, tmp_path):
    result = pipeline.run_backup(
        backup_db.spec(tmp_path / "backups", age_key.recipient),
        report=lambda _: None,
        clock=lambda: T0,
    )
    return backup_db, result.path


def test_restore_into_a_new_database_matches_every_table(backed_up, age_key, postgres_server):
    db, set_dir = backed_up
    target = f"{db.name}_copy"
    lines: list[str] = []
    result = restore.run_restore(
        set_dir / "database.dump",  # the guide's path: the set is found from it
        restore_spec(db, age_key, database=target),
        confirm=lambda _q: True,
        report=lines.append,
    )
    assert result.swapped and result.old_database is None
    assert result.tables == 3 and result.migrations == 40
    original = fingerprint(postgres_server, db.name)
    assert len(original) == 3 and all(count > 0 for count, _ in original.values())
    assert fingerprint(postgres_server, target) == original
    assert databases(postgres_server, f"{db.name}_restore") == []
    # the restored tables belong to the application role, as before
    owners = postgres_server.psql("SELECT DISTINCT tableowner FROM pg_tables "
                                  "WHERE schemaname = 'public'", db=target)  # fmt: skip
    assert owners == db.name


def test_drill_restores_into_scratch_and_drops_it(backed_up, age_key, postgres_server):
    db, set_dir = backed_up
    before = fingerprint(postgres_server, db.name)
    lines: list[str] = []
    result = restore.run_restore(
        set_dir, restore_spec(db, age_key), verify_only=True, confirm=pytest.fail,
        report=lines.append,
    )  # fmt: skip
    assert not result.swapped and result.tables == 3
    assert any("drill passed" in line for line in lines)
    assert databases(postgres_server, db.name) == [db.name]
    assert fingerprint(postgres_server, db.name) == before


def test_swap_replaces_the_database_and_keeps_the_old_one(backed_up, age_key, postgres_server):
    db, set_dir = backed_up
    backed = fingerprint(postgres_server, db.name)
    # the application's access rules on the database, as init-databases.sh sets them
    postgres_server.psql(f"REVOKE ALL ON DATABASE {db.name} FROM PUBLIC")
    acl_before = postgres_server.psql(f"SELECT datacl FROM pg_database WHERE datname = '{db.name}'")  # noqa: S608
    db.psql("DELETE FROM events WHERE id % 2 = 0; UPDATE accounts SET balance = 0")
    damaged = fingerprint(postgres_server, db.name)
    assert damaged != backed
    # an application session that the swap must end
    session = subprocess.Popen(
        [f"{PG_BIN}/psql", "-X", "-h", postgres_server.host, "-p", str(postgres_server.port),
         "-U", db.name, "-d", db.name, "-c", "SELECT pg_sleep(60)"],
        env={**os.environ, "PGPASSWORD": db.password}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(
        lambda: (
            postgres_server.psql(
                f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db.name}' "  # noqa: S608
                "AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
            )
            == "1"
        ),
        timeout=20,
        what="the application session",
    )
    result = restore.run_restore(
        set_dir, restore_spec(db, age_key), confirm=lambda _q: True, report=lambda _: None,
        clock=lambda: T0 + dt.timedelta(days=1),
    )  # fmt: skip
    assert result.swapped
    _, err = session.communicate(timeout=30)
    assert session.returncode != 0 and "terminat" in err
    assert result.old_database == f"{db.name}_before_20240102_120000"
    assert fingerprint(postgres_server, db.name) == backed
    assert fingerprint(postgres_server, result.old_database) == damaged
    assert (
        postgres_server.psql(f"SELECT datacl FROM pg_database WHERE datname = '{db.name}'")  # noqa: S608
        == acl_before
    )
    # the application role still logs in to its database by name
    assert db.psql("SELECT count(*) FROM django_migrations") == "40"


def test_not_confirmed_changes_nothing(backed_up, age_key, postgres_server):
    db, set_dir = backed_up
    db.psql("DELETE FROM events")
    before = fingerprint(postgres_server, db.name)
    questions: list[str] = []
    result = restore.run_restore(
        set_dir, restore_spec(db, age_key), confirm=lambda q: questions.append(q) or False,
        report=lambda _: None,
    )  # fmt: skip
    assert not result.swapped
    assert questions and f"Replace {db.name} (production)" in questions[0]
    assert databases(postgres_server, db.name) == [db.name]
    assert fingerprint(postgres_server, db.name) == before


def _flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_flipped_byte_is_refused_naming_the_file(backed_up, age_key, postgres_server):
    db, set_dir = backed_up
    dump = set_dir / "database.dump.age"
    _flip_byte(dump, dump.stat().st_size // 2)
    with pytest.raises(restore.RestoreRefused) as refused:
        restore.run_restore(set_dir, restore_spec(db, age_key), verify_only=True,
                            report=lambda _: None)  # fmt: skip
    assert "database.dump.age: SHA-256 mismatch" in str(refused.value)
    assert "nothing was restored" in str(refused.value)
    assert databases(postgres_server, db.name) == [db.name]


def test_a_truncated_backup_is_refused(backed_up, age_key, postgres_server):
    db, set_dir = backed_up
    dump = set_dir / "database.dump.age"
    size = dump.stat().st_size
    dump.write_bytes(dump.read_bytes()[: size - 1000])
    with pytest.raises(restore.RestoreRefused) as refused:
        restore.run_restore(set_dir, restore_spec(db, age_key), verify_only=True,
                            report=lambda _: None)  # fmt: skip
    assert f"database.dump.age: is {size - 1000} bytes, the manifest says {size}" in str(
        refused.value
    )
    assert "(truncated)" in str(refused.value)


def test_a_truncated_backup_with_a_matching_manifest_fails_in_decryption(
    backed_up, age_key, postgres_server
):
    """Even when the manifest was rewritten to match, age's authentication catches it."""
    db, set_dir = backed_up
    dump = set_dir / "database.dump.age"
    cut = dump.read_bytes()[: dump.stat().st_size - 1000]
    dump.write_bytes(cut)
    m = manifest.read(set_dir)
    forged = manifest.FileEntry(dump.name, len(cut), hashlib.sha256(cut).hexdigest())
    files = tuple(forged if f.name == dump.name else f for f in m.files)
    (set_dir / "MANIFEST.txt").write_text(
        manifest.Manifest(**{**m.__dict__, "files": files}).render()
    )
    with pytest.raises(restore.RestoreFailed) as failed:
        restore.run_restore(set_dir, restore_spec(db, age_key), verify_only=True,
                            report=lambda _: None)  # fmt: skip
    message = str(failed.value)
    assert message.startswith("database.dump.age: ") and "truncated" in message
    assert "scratch database" in message and f"{db.name} is untouched" in message
    assert databases(postgres_server, db.name) == [db.name]
    # and the standard tool refuses it too
    plain = subprocess.run(["age", "-d", "-i", str(age_key.identity_file), str(dump)],
                           capture_output=True)  # fmt: skip
    assert plain.returncode != 0


def test_the_wrong_key_is_refused_before_anything_is_created(backed_up, tmp_path, postgres_server):
    db, set_dir = backed_up
    other = age_keygen(tmp_path)
    with pytest.raises(restore.RestoreRefused) as refused:
        restore.run_restore(set_dir, restore_spec(db, other), verify_only=True,
                            report=lambda _: None)  # fmt: skip
    message = str(refused.value)
    assert message.startswith("database.dump.age: wrong key")
    assert other.identity_file.name in message
    assert databases(postgres_server, db.name) == [db.name]


def test_production_from_a_staging_backup_needs_force(backup_db, age_key, tmp_path):
    staging = pipeline.run_backup(
        backup_db.spec(tmp_path / "backups", age_key.recipient, environment="staging"),
        report=lambda _: None,
    )
    assert staging.path.name.startswith("db_staging_")
    spec = restore_spec(backup_db, age_key)
    with pytest.raises(restore.RestoreRefused, match="is a staging backup .* needs --force"):
        restore.run_restore(staging.path, spec, verify_only=True, report=lambda _: None)
    result = restore.run_restore(staging.path, spec, verify_only=True, force=True,
                                 report=lambda _: None)  # fmt: skip
    assert result.tables == 3


def test_a_path_that_is_no_set(tmp_path, backup_db, age_key):
    with pytest.raises(restore.RestoreRefused, match="no such backup set"):
        restore.run_restore(tmp_path / "backups" / "db_prod_x" / "database.dump",
                            restore_spec(backup_db, age_key), report=lambda _: None)  # fmt: skip
