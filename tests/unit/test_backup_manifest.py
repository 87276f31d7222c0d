"""opskit.backup.manifest: MANIFEST.txt renders, parses back, and checks files."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess

import pytest

from opskit.backup import manifest
from opskit.backup.manifest import FileEntry, Manifest

RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def sample(files=None) -> Manifest:
    return Manifest(
        name="db_prod_20240101_120000",
        environment="production",
        database="aiia_prod",
        owner="aiia_prod",
        created=dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC),
        recipient=RECIPIENT,
        dump_bytes=123456,
        toc_entries=42,
        tables=7,
        migrations_table=True,
        files=tuple(
            files
            or [
                FileEntry("database.dump.age", 1000, "a" * 64),
                FileEntry("config.tar.gz.age", 300, "b" * 64),
            ]
        ),
        tools={"pg_dump": "pg_dump (PostgreSQL) 15.14", "python": "3.11.2"},
    )


def test_render_parse_round_trip():
    m = sample()
    assert manifest.parse(m.render()) == m


def test_render_reads_for_people_and_carries_the_plain_restore():
    text = sample().render()
    assert "[sha256]" in text and "[restore]" in text
    assert f"{'a' * 64}  database.dump.age" in text.splitlines()
    for line in sample().plain_restore():
        assert f"#   {line}" in text
    assert "config.tar.gz.age | tar -xzf -" in text
    assert "media.tar.gz.age" not in text  # only what the set holds


def test_sha256sum_checks_the_files_from_the_manifest_alone(tmp_path):
    data = {"database.dump.age": b"dump" * 1000, "config.tar.gz.age": b"conf"}
    files = [
        FileEntry(name, len(body), hashlib.sha256(body).hexdigest()) for name, body in data.items()
    ]
    for name, body in data.items():
        (tmp_path / name).write_bytes(body)
    (tmp_path / manifest.MANIFEST_FILE).write_text(sample(files).render())
    ok = subprocess.run(["bash", "-o", "pipefail", "-c", manifest.CHECK_COMMAND], cwd=tmp_path,
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "database.dump.age: OK" in ok.stdout
    (tmp_path / "config.tar.gz.age").write_bytes(b"cOnf")
    bad = subprocess.run(["bash", "-o", "pipefail", "-c", manifest.CHECK_COMMAND], cwd=tmp_path,
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0
    assert "config.tar.gz.age: FAILED" in bad.stdout


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("format = aiia-backup/1", "format = other/9"), "format"),
        (lambda t: t.replace("database = aiia_prod\n", ""), "has no database"),
        (lambda t: t.replace("created = 2024-01-01T12:00:00Z", "created = yesterday"),
         "created"),
        (lambda t: t.replace("database.dump.age = 1000", "database.dump.age = big"),
         "not a number"),
        (lambda t: t.replace("config.tar.gz.age = 300\n", ""), "no size for config"),
        (lambda t: t.replace("a" * 64, "a" * 63), "not '<sha256>  <name>'"),
        (lambda t: t.replace(f"{'a' * 64}  database.dump.age\n", ""), "lists no database.dump"),
    ],
    ids=["format", "missing-key", "bad-date", "bad-size", "missing-size", "bad-sha",
         "no-dump"],
)  # fmt: skip
def test_parse_names_what_is_wrong(edit, message):
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.parse(edit(sample().render()))


def test_read_a_missing_manifest(tmp_path):
    with pytest.raises(manifest.ManifestError, match="never completed"):
        manifest.read(tmp_path)


def test_check_files_names_each_bad_file(tmp_path):
    body = b"x" * 5000
    entry = FileEntry("database.dump.age", len(body), hashlib.sha256(body).hexdigest())
    path = tmp_path / entry.name
    path.write_bytes(body)
    assert manifest.check_files(tmp_path, [entry]) == []

    flipped = bytearray(body)
    flipped[2500] ^= 0x01
    path.write_bytes(flipped)
    [problem] = manifest.check_files(tmp_path, [entry])
    assert str(problem).startswith("database.dump.age: SHA-256 mismatch")
    assert manifest.check_files(tmp_path, [entry], hashes=False) == []  # same size

    path.write_bytes(body[:4000])
    [problem] = manifest.check_files(tmp_path, [entry], hashes=False)
    assert "4000 bytes, the manifest says 5000 (truncated)" in str(problem)

    path.unlink()
    [problem] = manifest.check_files(tmp_path, [entry])
    assert str(problem) == "database.dump.age: missing"


def test_sha256_file_matches_hashlib(tmp_path):
    body = bytes(range(256)) * 9000  # a few blocks
    (tmp_path / "f").write_bytes(body)
    assert manifest.sha256_file(tmp_path / "f") == (hashlib.sha256(body).hexdigest(), len(body))
