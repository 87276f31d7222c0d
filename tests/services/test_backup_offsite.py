"""Offsite copies against a real S3 endpoint (moto server on loopback): upload, listing,
multipart, retention by date, and an unreachable endpoint that leaves uploads pending.
"""

from __future__ import annotations

import datetime as dt
import secrets

import pytest

from opskit.backup import manifest, offsite, pipeline, rotation
from opskit.backup.offsite import PENDING_MARKER, S3Target
from opskit.shell import Secret
from tests.harness.backup import add_rows
from tests.harness.core import free_port

pytest_plugins = ["tests.harness.backup"]

NOW = dt.datetime(2024, 3, 1, 2, 0, 0, tzinfo=dt.UTC)


def target_for(s3_server, **kwargs) -> S3Target:
    bucket = f"backups-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    kwargs.setdefault("prefix", "aiia/prod")
    return S3Target(
        bucket=bucket,
        access_key_id=s3_server.access_key,
        secret_access_key=Secret(s3_server.secret_key),
        endpoint_url=s3_server.url,
        **kwargs,
    )


def backup_at(db, backups, key, when: dt.datetime, **kwargs):
    spec = db.spec(backups, key.recipient, mark_pending_upload=True, keep=10, **kwargs)
    return pipeline.run_backup(spec, report=lambda _: None, clock=lambda: when)


def keys(s3_server, target) -> list[str]:
    return [o.key for o in offsite.list_objects(s3_server.client(), target)]


def test_upload_and_listing(backup_db, age_key, tmp_path, s3_server):
    target = target_for(s3_server)
    backups = tmp_path / "backups"
    env_file = tmp_path / ".env"
    env_file.write_text("S3_SECRET_ACCESS_KEY=x\n")
    result = backup_at(backup_db, backups, age_key, NOW, env_file=env_file)
    assert (result.path / PENDING_MARKER).exists()
    lines: list[str] = []
    synced = offsite.sync(backups, "prod", target, lines.append)
    assert synced.uploaded == (result.path.name,) and synced.pending == () and not synced.error
    assert not (result.path / PENDING_MARKER).exists()
    name = result.path.name
    assert keys(s3_server, target) == [
        f"aiia/prod/{name}/MANIFEST.txt",
        f"aiia/prod/{name}/config.tar.gz.age",
        f"aiia/prod/{name}/database.dump.age",
    ]
    client = s3_server.client()
    m = manifest.read(result.path)
    for entry in m.files:
        obj = client.get_object(Bucket=target.bucket, Key=f"aiia/prod/{name}/{entry.name}")
        assert obj["Metadata"]["sha256"] == entry.sha256
        assert obj["Body"].read() == (result.path / entry.name).read_bytes()
    assert any(f"uploaded {name}" in line for line in lines)
    # nothing left to do: a second sync uploads nothing
    assert offsite.sync(backups, "prod", target, lines.append) == offsite.SyncResult((), ())


def test_big_files_go_up_in_parts(postgres_server, age_key, tmp_path, s3_server, backup_db):
    add_rows(backup_db, noise_kb=12 * 1024)
    target = target_for(s3_server, part_size_mb=5)
    backups = tmp_path / "backups"
    result = backup_at(backup_db, backups, age_key, NOW)
    assert offsite.sync(backups, "prod", target, print).uploaded == (result.path.name,)
    head = s3_server.client().head_object(
        Bucket=target.bucket, Key=f"aiia/prod/{result.path.name}/database.dump.age"
    )
    size = (result.path / "database.dump.age").stat().st_size
    parts = -(-size // (5 << 20))
    assert size > 10 << 20 and head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart upload's ETag


def test_retention_removes_only_what_is_older_than_30_days(backup_db, age_key, tmp_path, s3_server):
    target = target_for(s3_server, retention_days=30)
    backups = tmp_path / "backups"
    ages = [45, 31, 29, 1]
    names = [backup_at(backup_db, backups, age_key, NOW - dt.timedelta(days=d)).path.name
             for d in ages]  # fmt: skip
    assert offsite.sync(backups, "prod", target, print).uploaded == tuple(names)
    client = s3_server.client()
    client.put_object(Bucket=target.bucket, Key="aiia/prod/README.txt", Body=b"kept: new")
    client.put_object(Bucket=target.bucket, Key="aiia/staging/db_staging_20200101_000000/x",
                      Body=b"another prefix: never looked at")  # fmt: skip
    lines: list[str] = []
    removed = offsite.apply_retention(target, NOW, lines.append)
    assert sorted({k.split("/")[2] for k in removed}) == sorted(names[:2])
    remaining = keys(s3_server, target)
    assert {k.split("/")[2] for k in remaining} == {names[2], names[3], "README.txt"}
    assert len([k for k in remaining if names[2] in k]) == 2  # dump + manifest, all there
    assert any("older than 30 days" in line for line in lines)
    all_keys = [o["Key"] for o in client.list_objects_v2(Bucket=target.bucket)["Contents"]]
    assert "aiia/staging/db_staging_20200101_000000/x" in all_keys


def test_retention_never_removes_the_newest_remote_set(backup_db, age_key, tmp_path, s3_server):
    target = target_for(s3_server)
    backups = tmp_path / "backups"
    old = [backup_at(backup_db, backups, age_key, NOW - dt.timedelta(days=d)).path.name
           for d in (90, 60)]  # fmt: skip
    offsite.sync(backups, "prod", target, print)
    offsite.apply_retention(target, NOW, print)
    assert {k.split("/")[2] for k in keys(s3_server, target)} == {old[1]}


def test_unreachable_storage_keeps_the_backup_and_retries_next_run(
    backup_db, age_key, tmp_path, s3_server
):
    good = target_for(s3_server)
    dead = S3Target(**{**good.__dict__, "endpoint_url": f"http://127.0.0.1:{free_port()}",
                       "connect_timeout_s": 1, "max_attempts": 1})  # fmt: skip
    backups = tmp_path / "backups"
    first = backup_at(backup_db, backups, age_key, NOW - dt.timedelta(days=1))
    lines: list[str] = []
    result = offsite.sync(backups, "prod", dead, lines.append)
    assert result.uploaded == () and result.pending == (first.path.name,)
    assert "Could not connect to the endpoint URL" in result.error
    assert "the local backup is good" in result.error and "retried on the next run" in lines[0]
    assert (first.path / PENDING_MARKER).exists()
    assert rotation.good_sets(backups, "prod") == [first.path.name]

    second = backup_at(backup_db, backups, age_key, NOW)
    result = offsite.sync(backups, "prod", good, lines.append)
    assert result.uploaded == (first.path.name, second.path.name)
    assert not list(backups.glob(f"*/{PENDING_MARKER}"))
    assert {k.split("/")[2] for k in keys(s3_server, good)} == {
        first.path.name, second.path.name,
    }  # fmt: skip


@pytest.mark.parametrize("prefix", ["", "/a/b/"])
def test_prefixes(prefix, s3_server, backup_db, age_key, tmp_path):
    target = target_for(s3_server, prefix=prefix)
    result = backup_at(backup_db, tmp_path / "b", age_key, NOW)
    offsite.sync(tmp_path / "b", "prod", target, print)
    base = prefix.strip("/")
    expected = f"{base}/{result.path.name}/MANIFEST.txt" if base else (
        f"{result.path.name}/MANIFEST.txt")  # fmt: skip
    assert expected in keys(s3_server, target)
    assert offsite.apply_retention(target, NOW + dt.timedelta(days=400), print) == []
