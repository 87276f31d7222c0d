"""MANIFEST.txt: what a backup set holds, how to check it, and how to restore it by hand.

The file is for people first (an operator in a disaster reads it top to bottom) and is
parsed back by the toolkit: `[section]` headers, `key = value` lines, and in `[sha256]`
lines in `sha256sum` format, so `grep -E '^[0-9a-f]{64}  ' MANIFEST.txt | sha256sum -c -`
checks every file with coreutils alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from opskit.backup import commands

FORMAT = "aiia-backup/1"
MANIFEST_FILE = "MANIFEST.txt"
DUMP_FILE = "database.dump.age"
CONFIG_FILE = "config.tar.gz.age"
MEDIA_FILE = "media.tar.gz.age"
# The guide's names, before encryption: `db-restore .../database.dump` still finds the set.
PLAIN_NAMES = {"database.dump": DUMP_FILE, "config.tar.gz": CONFIG_FILE,
               "media.tar.gz": MEDIA_FILE}  # fmt: skip
HASH_BLOCK = 1 << 20
CHECK_COMMAND = "grep -E '^[0-9a-f]{64}  ' MANIFEST.txt | sha256sum -c -"

_SHA_LINE = re.compile(r"^(?P<sha>[0-9a-f]{64})  (?P<name>[A-Za-z0-9._-]+)$")
_KV_LINE = re.compile(r"^(?P<key>[a-z0-9_.-]+)\s*=\s*(?P<value>.*)$")


class ManifestError(ValueError):
    """MANIFEST.txt is missing, unreadable or incomplete: the set is not a good backup."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    environment: str
    database: str
    owner: str
    created: dt.datetime
    recipient: str
    dump_bytes: int
    toc_entries: int
    tables: int
    migrations_table: bool
    files: tuple[FileEntry, ...]
    tools: Mapping[str, str] = field(default_factory=dict)
    format: str = FORMAT
    # the server's restore-drill key: the database dump (only it) is encrypted to it too
    drill_recipient: str | None = None

    def file(self, name: str) -> FileEntry:
        for entry in self.files:
            if entry.name == name:
                return entry
        raise ManifestError(f"{MANIFEST_FILE} lists no {name}")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def render(self) -> str:
        created = self.created.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        backup = {
            "format": self.format,
            "name": self.name,
            "environment": self.environment,
            "database": self.database,
            "owner": self.owner,
            "created": created,
            "recipient": self.recipient,
            "encryption": "age v1, X25519 recipient (public key above)",
            **({"drill_recipient": self.drill_recipient} if self.drill_recipient else {}),
            "dump_format": "pg_dump --format=custom (pg_restore reads it)",
            "dump_bytes": str(self.dump_bytes),
            "toc_entries": str(self.toc_entries),
            "tables": str(self.tables),
            "migrations_table": "yes" if self.migrations_table else "no",
            "verified": "every stage exited 0; pg_restore --list read the dump; "
            "checksums read back from disk",
        }
        lines = [
            f"# Backup set {self.name}: {self.environment} database {self.database}, {created}.",
            "# Encrypted with age to the public key below; the secret key (AGE-SECRET-KEY-1...)",
            "# is kept off the server. Everything here opens with the standard `age` tool and",
            "# PostgreSQL 15's pg_restore; see [restore] at the end.",
            "",
            "[backup]",
            *_kv(backup),
            "",
            "[tools]",
            *_kv(self.tools),
            "",
            "[sizes]",
            *_kv({f.name: str(f.size) for f in self.files}),
            "",
            "[sha256]",
            f"# check every file: {CHECK_COMMAND}",
            *(f"{f.sha256}  {f.name}" for f in self.files),
            "",
            "[restore]",
            *(f"# {line}" if line else "#" for line in self.restore_text()),
            "",
        ]
        return "\n".join(lines)

    def restore_text(self) -> list[str]:
        names = {f.name for f in self.files}
        plain = commands.plain_restore_commands(
            db=self.database, owner=self.owner, dump_file=DUMP_FILE
        )
        text = [
            "With standard tools only, from this directory, with the secret key in backup.key",
            "and PGHOST/PGPORT/PGUSER pointing at a PostgreSQL 15 server (as a superuser):",
            "",
            f"  {CHECK_COMMAND}",
            *(f"  {line}" for line in plain),
            "",
            "then point the application at the restored database, or rename it into place.",
            "On the server, the same through the PostgreSQL container:",
            "",
            f"  age -d -i backup.key {DUMP_FILE} | docker exec -i {commands.POSTGRES_CONTAINER} "
            f"pg_restore -U postgres --exit-on-error --single-transaction "
            f"--dbname={self.database}_restored",
            "",
            "With this toolkit (checks, scratch database, drill, swap into place):",
            "",
            f"  inv db-restore backups/{self.name} --verify-only --identity backup.key",
            f"  inv db-restore backups/{self.name} --yes --identity backup.key",
        ]
        extra = []
        if CONFIG_FILE in names:
            extra.append(f"  age -d -i backup.key {CONFIG_FILE} | tar -xzf -    # the env file")
        if MEDIA_FILE in names:
            extra.append(f"  age -d -i backup.key {MEDIA_FILE} | tar -xzf -    # user uploads")
            volume = {"production": "aiia_media_prod", "staging": "aiia_media_staging"}.get(
                self.environment, "aiia_media_prod"
            )
            extra += [
                "",
                "The uploads back into the server's media volume (files of the same name are",
                "replaced, others stay), or with the toolkit: inv db-restore ... --media",
                "",
                f"  age -d -i backup.key {MEDIA_FILE} | docker run --rm -i --network none "
                f"--user 10001:10001 --mount type=volume,source={volume},target=/restore/media,"
                f"volume-nocopy "
                f"--entrypoint tar aiia/app:{self.environment} -xzf - -C /restore --no-same-owner",
            ]
        if extra:
            text += ["", "Configuration and media:", "", *extra]
        return text

    def plain_restore(self) -> list[str]:
        """The standard-tools restore lines exactly as written in [restore]."""
        return commands.plain_restore_commands(
            db=self.database, owner=self.owner, dump_file=DUMP_FILE
        )


def _kv(values: Mapping[str, str]) -> list[str]:
    for key, value in values.items():
        if "\n" in str(value):
            raise ManifestError(f"{key}: a manifest value must be one line")
    return [f"{key} = {value}" for key, value in values.items()]


def parse(text: str) -> Manifest:
    """Read MANIFEST.txt back; ManifestError names what is missing or malformed."""
    sections: dict[str, dict[str, str]] = {}
    shas: list[tuple[str, str]] = []
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, {})
            continue
        if section == "sha256":
            match = _SHA_LINE.match(line)
            if not match:
                raise ManifestError(f"{MANIFEST_FILE} line {number}: not '<sha256>  <name>'")
            shas.append((match["sha"], match["name"]))
            continue
        match = _KV_LINE.match(line)
        if not match:
            raise ManifestError(f"{MANIFEST_FILE} line {number}: not 'key = value'")
        sections.setdefault(section, {})[match["key"]] = match["value"].strip()

    backup = sections.get("backup", {})
    sizes = sections.get("sizes", {})

    def need(key: str) -> str:
        if not backup.get(key):
            raise ManifestError(f"{MANIFEST_FILE}: [backup] has no {key}")
        return backup[key]

    def number(key: str, value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ManifestError(f"{MANIFEST_FILE}: {key} = {value!r} is not a number") from None

    if need("format") != FORMAT:
        raise ManifestError(f"{MANIFEST_FILE}: format {backup['format']!r}, expected {FORMAT}")
    try:
        created = dt.datetime.strptime(need("created"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise ManifestError(f"{MANIFEST_FILE}: created is not YYYY-mm-ddTHH:MM:SSZ") from None
    if not shas:
        raise ManifestError(f"{MANIFEST_FILE}: [sha256] lists no files")
    files = []
    for sha, name in shas:
        if name not in sizes:
            raise ManifestError(f"{MANIFEST_FILE}: [sizes] has no size for {name}")
        files.append(FileEntry(name, number(name, sizes[name]), sha))
    if DUMP_FILE not in {f.name for f in files}:
        raise ManifestError(f"{MANIFEST_FILE}: lists no {DUMP_FILE}")
    return Manifest(
        name=need("name"),
        environment=need("environment"),
        database=need("database"),
        owner=need("owner"),
        created=created,
        recipient=need("recipient"),
        dump_bytes=number("dump_bytes", need("dump_bytes")),
        toc_entries=number("toc_entries", need("toc_entries")),
        tables=number("tables", need("tables")),
        migrations_table=need("migrations_table") == "yes",
        files=tuple(files),
        tools=dict(sections.get("tools", {})),
        drill_recipient=backup.get("drill_recipient") or None,
    )


def read(set_dir: Path) -> Manifest:
    path = Path(set_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: missing; this set was never completed") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from None
    try:
        return parse(text)
    except ManifestError as exc:
        raise ManifestError(f"{Path(set_dir).name}/{exc}") from None


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


@dataclass(frozen=True)
class FileProblem:
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


def check_files(
    set_dir: Path, entries: Iterable[FileEntry], *, hashes: bool = True
) -> list[FileProblem]:
    """Every listed file present, of its size and (with `hashes`) of its SHA-256."""
    problems = []
    for entry in entries:
        path = Path(set_dir) / entry.name
        try:
            actual_size = path.stat().st_size
        except FileNotFoundError:
            problems.append(FileProblem(entry.name, "missing"))
            continue
        if actual_size != entry.size:
            problems.append(
                FileProblem(
                    entry.name,
                    f"is {actual_size} bytes, the manifest says {entry.size} "
                    f"({'truncated' if actual_size < entry.size else 'grown'})",
                )
            )
            continue
        if hashes:
            sha, _ = sha256_file(path)
            if sha != entry.sha256:
                problems.append(
                    FileProblem(
                        entry.name,
                        f"SHA-256 mismatch: the file is corrupted (expected "
                        f"{entry.sha256[:16]}..., got {sha[:16]}...)",
                    )
                )
    return problems
