"""Offsite copies on S3-compatible storage (boto3), with a retention of N days.

Layout: `s3://BUCKET/PREFIX/db_prod_20240101_120000/{database.dump.age,...,MANIFEST.txt}`,
the set's files first and MANIFEST.txt last, so a remote set with a manifest is complete.
Everything uploaded is already age-encrypted; each object carries its SHA-256 as metadata
and its size is checked after the upload.

A set to upload carries a `.pending-upload` marker (written before the set got its final
name); the marker goes only when every file is up. When the storage cannot be reached the
local backup still counts, and every later run retries the sets still marked.

Retention removes remote sets older than S3_RETENTION_DAYS, by the time in the set's name
(objects outside the set layout by their LastModified), and never the newest remote set.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from opskit.backup import manifest, rotation
from opskit.shell import Secret

PENDING_MARKER = ".pending-upload"
MiB = 1 << 20

Report = Callable[[str], None]


class OffsiteError(RuntimeError):
    """The storage could not be reached or refused a request; the message says which."""


@dataclass(frozen=True)
class S3Target:
    bucket: str
    prefix: str
    access_key_id: str
    secret_access_key: Secret = field(repr=False)
    endpoint_url: str | None = None
    region: str = "us-east-1"
    retention_days: int = 30
    connect_timeout_s: float = 10
    read_timeout_s: float = 120
    max_attempts: int = 3
    part_size_mb: int = 16  # multipart above one part; S3 needs parts of 5 MiB or more

    @classmethod
    def from_settings(cls, settings) -> S3Target | None:
        """None when S3_BUCKET is empty: offsite copies are off."""
        bucket = str(settings.get("S3_BUCKET") or "")
        if not bucket:
            return None
        return cls(
            bucket=bucket,
            prefix=str(settings.get("S3_PREFIX") or ""),
            access_key_id=str(settings.get("S3_ACCESS_KEY_ID") or ""),
            secret_access_key=settings.get("S3_SECRET_ACCESS_KEY") or Secret(""),
            endpoint_url=str(settings.get("S3_ENDPOINT_URL") or "") or None,
            retention_days=int(settings.get("S3_RETENTION_DAYS") or 30),
        )

    def key(self, set_name: str, file_name: str = "") -> str:
        parts = [p for p in (self.prefix.strip("/"), set_name, file_name) if p]
        return "/".join(parts) + ("" if file_name else "/")

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"


def client(target: S3Target):
    """A boto3 S3 client with short timeouts and few retries: a dead endpoint fails fast."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=target.endpoint_url,
        aws_access_key_id=target.access_key_id,
        aws_secret_access_key=target.secret_access_key.reveal(),
        region_name=target.region,
        config=Config(
            connect_timeout=target.connect_timeout_s,
            read_timeout=target.read_timeout_s,
            retries={"max_attempts": target.max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"},
        ),
    )


def transfer_config(target: S3Target):
    """Multipart above one part (16 MiB), two parts at a time: bounded memory on a small box."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=target.part_size_mb * MiB,
        multipart_chunksize=target.part_size_mb * MiB,
        max_concurrency=2,
        use_threads=True,
    )


def _errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _describe(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def upload_set(s3, target: S3Target, set_dir: Path, report: Report) -> int:
    """Upload one good set (files, then MANIFEST.txt); returns bytes sent."""
    found = manifest.read(set_dir)
    config = transfer_config(target)
    sent = 0
    entries = [*found.files, None]
    for entry in entries:
        name = entry.name if entry else manifest.MANIFEST_FILE
        path = set_dir / name
        sha = entry.sha256 if entry else manifest.sha256_file(path)[0]
        key = target.key(set_dir.name, name)
        s3.upload_file(
            str(path), target.bucket, key,
            ExtraArgs={"Metadata": {"sha256": sha}}, Config=config,
        )  # fmt: skip
        head = s3.head_object(Bucket=target.bucket, Key=key)
        size = path.stat().st_size
        if head["ContentLength"] != size:
            raise OffsiteError(
                f"{key}: the storage holds {head['ContentLength']} bytes, the file has {size}"
            )
        sent += size
    report(f"offsite: uploaded {set_dir.name} ({sent} bytes) to {target.where}")
    return sent


@dataclass(frozen=True)
class SyncResult:
    uploaded: tuple[str, ...]
    pending: tuple[str, ...]
    error: str | None = None


def pending_sets(backup_dir: Path, env_short: str) -> list[Path]:
    """Good sets of one environment still marked for upload, oldest first."""
    good = reversed(rotation.good_sets(backup_dir, env_short))
    return [backup_dir / n for n in good if (backup_dir / n / PENDING_MARKER).exists()]


def sync(backup_dir: Path, env_short: str, target: S3Target, report: Report, s3=None) -> SyncResult:
    """Upload every pending set; stop at the first failure (the rest stay pending)."""
    todo = pending_sets(backup_dir, env_short)
    uploaded: list[str] = []
    if not todo:
        return SyncResult((), ())
    try:
        s3 = s3 or client(target)
        for set_dir in todo:
            upload_set(s3, target, set_dir, report)
            (set_dir / PENDING_MARKER).unlink()
            uploaded.append(set_dir.name)
    except (*_errors(), OffsiteError, OSError) as exc:
        left = tuple(p.name for p in todo if p.name not in uploaded)
        message = (
            f"offsite: upload to {target.where} failed: {_describe(exc)}; the local backup "
            f"is good; {len(left)} set(s) stay marked {PENDING_MARKER} and are retried on "
            "the next run"
        )
        report(message)
        return SyncResult(tuple(uploaded), left, message)
    return SyncResult(tuple(uploaded), ())


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    last_modified: dt.datetime


def list_objects(s3, target: S3Target) -> list[RemoteObject]:
    prefix = target.key("", "") if target.prefix.strip("/") else ""
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            out.append(RemoteObject(item["Key"], item["Size"], item["LastModified"]))
    return out


def remote_sets(objects: list[RemoteObject], target: S3Target) -> dict[str, list[RemoteObject]]:
    """Objects grouped by set name ('' for objects outside the set layout)."""
    base = target.prefix.strip("/")
    groups: dict[str, list[RemoteObject]] = {}
    for obj in objects:
        rest = obj.key[len(base) + 1 :] if base else obj.key
        name = rest.split("/", 1)[0] if "/" in rest else ""
        name = name if rotation.parse_name(name) else ""
        groups.setdefault(name, []).append(obj)
    return groups


def expired(objects: list[RemoteObject], target: S3Target, now: dt.datetime) -> list[RemoteObject]:
    """Objects older than the retention; the newest remote set is always kept."""
    cutoff = now - dt.timedelta(days=target.retention_days)
    groups = remote_sets(objects, target)
    dated = {name: rotation.parse_name(name)[1] for name in groups if name}
    newest = max(dated.values(), default=None)
    out = []
    for name, items in groups.items():
        if name:
            if dated[name] < cutoff and dated[name] != newest:
                out += items
        else:
            out += [o for o in items if o.last_modified < cutoff]
    return sorted(out, key=lambda o: o.key)


def apply_retention(target: S3Target, now: dt.datetime, report: Report, s3=None) -> list[str]:
    """Delete expired objects; returns their keys."""
    s3 = s3 or client(target)
    try:
        victims = expired(list_objects(s3, target), target, now)
        for start in range(0, len(victims), 1000):
            batch = victims[start : start + 1000]
            answer = s3.delete_objects(
                Bucket=target.bucket,
                Delete={"Objects": [{"Key": o.key} for o in batch], "Quiet": True},
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OffsiteError(f"delete refused for {first['Key']}: {first.get('Message')}")
    except _errors() as exc:
        raise OffsiteError(
            f"offsite retention on {target.where} failed: {_describe(exc)}"
        ) from None
    if victims:
        sets = sorted({o.key.rsplit("/", 1)[0] for o in victims})
        report(
            f"offsite: retention removed {len(victims)} object(s) older than "
            f"{target.retention_days} days: {', '.join(sets)}"
        )
    return [o.key for o in victims]
