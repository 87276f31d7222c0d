"""Helpers and fixtures for the backup tests: keys from the real age tool, a database of
one's own on the native PostgreSQL, a fingerprint of every table, a small tmpfs, and a
real S3 endpoint (moto server) on a loopback port.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.backup.commands import PgConn
from opskit.backup.pipeline import BackupSpec
from opskit.shell import Secret
from tests.harness.core import (
    PrerequisiteError,
    Service,
    free_port,
    require_binary,
    venv_tool,
    wait_until,
)

PG_BIN = "/usr/lib/postgresql/15/bin"


@dataclass(frozen=True)
class AgeKey:
    identity_file: Path
    recipient: str


def age_keygen(directory: Path) -> AgeKey:
    """A key pair made by Debian's age-keygen (the real tool, not ours)."""
    keygen = require_binary("age-keygen", "packages")
    path = directory / f"backup-{secrets.token_hex(4)}.key"
    proc = subprocess.run([keygen, "-o", str(path)], capture_output=True, text=True, check=True)
    recipient = proc.stderr.strip().rsplit(" ", 1)[-1]
    assert recipient.startswith("age1"), proc.stderr
    return AgeKey(path, recipient)


@dataclass
class Database:
    """A database owned by a role of the same name (pg_hba's `samerole`), made for one test."""

    server: object  # tests.harness.native.PostgresServer
    name: str
    password: str

    def psql(self, sql: str, db: str | None = None) -> str:
        return self.server.psql(sql, db=db or self.name, user=self.name, password=self.password)

    def admin(self, sql: str, db: str = "postgres") -> str:
        return self.server.psql(sql, db=db)

    def conn(self) -> PgConn:
        return PgConn(user=self.name, host=self.server.host, port=self.server.port, bin_dir=PG_BIN)

    def superuser_conn(self) -> PgConn:
        return PgConn(
            user=self.server.superuser, host=self.server.host, port=self.server.port,
            bin_dir=PG_BIN,
        )  # fmt: skip

    def spec(self, backup_dir: Path, recipient: str, **kwargs) -> BackupSpec:
        kwargs.setdefault("environment", "production")
        kwargs.setdefault("password", Secret(self.password))
        return BackupSpec(
            database=self.name,
            owner=self.name,
            conn=self.conn(),
            recipient=recipient,
            backup_dir=backup_dir,
            **kwargs,
        )

    def drop(self) -> None:
        like = f"{self.name}%"
        # names made by create_database: hex only
        names = self.admin(f"SELECT datname FROM pg_database WHERE datname LIKE '{like}'")  # noqa: S608
        for db in filter(None, names.splitlines()):
            self.admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.admin(f'DROP ROLE IF EXISTS "{self.name}"')


def create_database(server, prefix: str = "bk") -> Database:
    name = f"{prefix}_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    server.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    server.psql(f"CREATE DATABASE {name} OWNER {name} TEMPLATE template0")
    return Database(server, name, password)


# A schema like a small Django project's: the migrations table, text, json, bytes, numbers,
# a sequence, a foreign key, an index, a view.
SCHEMA_SQL = """
CREATE TABLE django_migrations (id bigserial PRIMARY KEY, app varchar(255) NOT NULL,
    name varchar(255) NOT NULL, applied timestamptz NOT NULL);
INSERT INTO django_migrations (app, name, applied)
    SELECT 'app' || (i % 7), 'migration_' || i, '2024-01-01'::timestamptz + i * interval '1 hour'
    FROM generate_series(1, 40) AS i;
CREATE TABLE accounts (id serial PRIMARY KEY, email text UNIQUE NOT NULL,
    profile jsonb NOT NULL, balance numeric(12, 2) NOT NULL);
CREATE TABLE events (id bigserial PRIMARY KEY, account_id int REFERENCES accounts(id),
    kind text NOT NULL, payload bytea, at timestamptz NOT NULL);
CREATE INDEX events_kind ON events (kind);
CREATE VIEW busy_accounts AS SELECT account_id, count(*) FROM events GROUP BY account_id;
"""


def seed(db: Database, *, accounts: int = 500, events: int = 5000, noise_kb: int = 0) -> None:
    """Fill the schema; `noise_kb` adds incompressible bytes (random) to grow the dump."""
    db.psql(SCHEMA_SQL)
    add_rows(db, accounts=accounts, events=events, noise_kb=noise_kb)


def add_rows(db: Database, *, accounts: int = 0, events: int = 0, noise_kb: int = 0) -> None:
    accounts, events, noise_kb = int(accounts), int(events), int(noise_kb)
    db.psql(
        f"""
        INSERT INTO accounts (email, profile, balance)
            SELECT 'user' || i || '-' || md5(random()::text) || '@example.com',
                   jsonb_build_object('n', i, 'tags', jsonb_build_array('a', i % 3)),
                   round((random() * 10000)::numeric, 2)
            FROM generate_series(1, {accounts}) AS i;
        INSERT INTO events (account_id, kind, payload, at)
            SELECT (SELECT min(id) FROM accounts) + (i % greatest({accounts}, 1)),
                   'kind' || (i % 13), decode(md5(i::text), 'hex'), now() - i * interval '1 min'
            FROM generate_series(1, {events}) AS i
            WHERE EXISTS (SELECT FROM accounts);
        """  # noqa: S608 - whole numbers only
    )
    if noise_kb:
        # random bytes do not compress: the dump grows by about noise_kb
        db.psql(
            f"""
            CREATE TABLE IF NOT EXISTS blobs (id serial PRIMARY KEY, body bytea);
            INSERT INTO blobs (body)
                SELECT decode(string_agg(lpad(to_hex((random() * 4294967295)::bigint), 8, '0'),
                                         ''), 'hex')
                FROM generate_series(1, {noise_kb} * 256) AS i
                GROUP BY i / 2560;
            """  # noqa: S608 - a whole number only
        )


def fingerprint(server, db: str) -> dict[str, tuple[int, str]]:
    """Row count and an md5 over the ordered text of every row, for every user table."""
    tables = server.psql(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
        db=db,
    ).splitlines()
    out = {}
    for table in tables:
        row = server.psql(
            f"SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, E'\\n' "  # noqa: S608
            f"ORDER BY t::text)), '-') FROM {table} AS t",  # noqa: S608 - quoted by format()
            db=db,
        )
        count, digest = row.split(" ")
        out[table] = (int(count), digest)
    return out


@pytest.fixture
def backup_db(postgres_server):
    """A fresh database with the sample schema and a few thousand rows."""
    db = create_database(postgres_server)
    try:
        seed(db)
        yield db
    finally:
        db.drop()


@pytest.fixture(scope="session")
def age_key(tmp_path_factory) -> AgeKey:
    return age_keygen(tmp_path_factory.mktemp("age-keys"))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs: the disk that fills up during the write."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise PrerequisiteError(f"cannot mount a tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str = "testing-access"
    secret_key: str = "testing-secret"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )


def _moto_server_binary() -> str:
    return venv_tool("moto_server")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Endpoint:
    """moto's S3 server on a free loopback port (a real HTTP endpoint boto3 talks to)."""
    port = free_port()
    base = tmp_path_factory.mktemp("moto")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    service = Service(
        [_moto_server_binary(), "-H", "127.0.0.1", "-p", str(port)], log=base / "moto.log", env=env
    ).start()
    endpoint = S3Endpoint(f"http://127.0.0.1:{port}")
    try:
        wait_until(
            lambda: (not service.running) or endpoint.client().list_buckets() is not None,
            timeout=60,
            what=f"moto_server on 127.0.0.1:{port}",
        )
        service.check_alive()
        yield endpoint
    finally:
        service.stop()
