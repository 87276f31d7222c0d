"""Pure builders of the PostgreSQL client commands a backup and a restore run.

Nothing here runs anything: each function returns an argv list. The pipeline executes
them in one place (opskit.backup.process), through whichever transport the `PgConn`
describes: the client tools on this machine over TCP (tests, a laptop with a tunnel, the
backup container on aiia_network), or inside the server's PostgreSQL container with
`docker exec` over its socket. Passwords never appear in argv: they reach the client
through PGPASSWORD in the child's environment (and `docker exec -e PGPASSWORD`, which
copies the value from the docker client's environment, not from its arguments).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from opskit import environments

# The guide's set names: backups/db_prod_20240101_120000, backups/db_staging_...
ENV_SHORT = {"production": "prod", "staging": "staging", "local": "dev"}
ENV_LONG = {short: long for long, short in ENV_SHORT.items()}
SET_PREFIX = "db_"
SET_NAME_RE = re.compile(r"^db_(?P<env>prod|staging|dev)_(?P<ts>\d{8}_\d{6})$")
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"

# Plain PostgreSQL identifiers only: names reach SQL through psql variables (:"name"),
# but a name that needs quoting is a mistake in an env file, refused early.
IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

POSTGRES_CONTAINER = environments.POSTGRES


def backup_script(path: str, env: str) -> list[str]:
    """The server's scripts/backup.sh for one environment: what cron, `fab backup` and a
    deploy's pre-deploy backup run; it prints the new set's path last."""
    return ["bash", f"{path}/scripts/backup.sh", env]


class CommandError(ValueError):
    """A builder was given a value it will not put on a command line."""


def ident(name: str, what: str = "name") -> str:
    if not IDENT_RE.match(name):
        raise CommandError(
            f"{what} {name!r} is not a plain PostgreSQL name (lower-case letters, digits, '_')"
        )
    return name


@dataclass(frozen=True)
class PgConn:
    """How a PostgreSQL client reaches the server, minus the password.

    `host`/`port` None means libpq's default (the socket, or PGHOST/PGPORT). `prefix` is
    put in front of every tool, e.g. `docker exec -i aiia_postgresql`; `bin_dir` is
    where the tools live when not on PATH (PostgreSQL 15's own, so versions match).
    """

    user: str
    host: str | None = None
    port: int | None = None
    prefix: tuple[str, ...] = ()
    bin_dir: str | None = None

    def tool(self, name: str) -> list[str]:
        exe = f"{self.bin_dir.rstrip('/')}/{name}" if self.bin_dir else name
        return [*self.prefix, exe]

    def options(self) -> list[str]:
        out: list[str] = []
        if self.host:
            out += ["--host", self.host]
        if self.port:
            out += ["--port", str(self.port)]
        return [*out, "--username", ident(self.user, "user"), "--no-password"]


def docker_conn(
    user: str = "postgres", container: str = POSTGRES_CONTAINER, *, password: bool = False
) -> PgConn:
    """Tools run inside the PostgreSQL container, over its socket (peer auth, map=ops).

    With `password`, PGPASSWORD is copied from the docker client's environment.
    """
    prefix = ["docker", "exec", "-i"]
    if password:
        prefix += ["-e", "PGPASSWORD"]
    return PgConn(user=user, prefix=(*prefix, container))


# gzip level 1, not pg_dump's default 6: the dump is CPU-bound in pg_dump's compression,
# on the same two vCPUs as the site. Measured on a 611 MiB database: 5.0 CPU-seconds of
# pg_dump instead of 12.4, for a dump 11% larger (192 MiB instead of 173); pg_restore
# reads either the same way, and inflating level 1 costs no more than level 6.
DUMP_COMPRESSION = 1


def pg_dump(conn: PgConn, db: str) -> list[str]:
    """The custom-format dump of one database to stdout (pg_restore reads it)."""
    return [*conn.tool("pg_dump"), "--format=custom", f"--compress={DUMP_COMPRESSION}",
            *conn.options(), "--dbname", ident(db)]  # fmt: skip


def pg_restore_list(conn: PgConn) -> list[str]:
    """Read an archive from stdin and print its table of contents: the backup's check."""
    return [*conn.tool("pg_restore"), "--list"]


def pg_restore(conn: PgConn, db: str) -> list[str]:
    """Restore an archive read from stdin into `db`, all or nothing."""
    return [
        *conn.tool("pg_restore"),
        "--exit-on-error",
        "--single-transaction",
        *conn.options(),
        "--dbname",
        ident(db),
    ]


def psql(conn: PgConn, db: str, variables: dict[str, str] | None = None) -> list[str]:
    """psql reading SQL from stdin; unaligned, tuples only, stops at the first error.

    `variables` are names, never secrets (they are visible in argv).
    """
    argv = [*conn.tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    for key, value in (variables or {}).items():
        argv += ["-v", f"{key}={value}"]
    return [*argv, *conn.options(), "--dbname", ident(db)]


def version(conn: PgConn, tool: str) -> list[str]:
    return [*conn.tool(tool), "--version"]


def set_name(environment: str, timestamp: str) -> str:
    """`db_prod_20240101_120000` for production at that UTC time."""
    try:
        short = ENV_SHORT[environment]
    except KeyError:
        raise CommandError(
            f"unknown environment {environment!r}: use {', '.join(ENV_SHORT)}"
        ) from None
    return f"{SET_PREFIX}{short}_{timestamp}"


def display(argv: Sequence[str]) -> str:
    return shlex.join([str(a) for a in argv])


def plain_restore_commands(
    *, db: str, owner: str, dump_file: str, key_file: str = "backup.key"
) -> list[str]:
    """The restore of a set with standard tools only: age, createdb, pg_restore.

    Connection details come from libpq's environment (PGHOST, PGPORT, PGUSER), so the
    lines work against any server; run them from inside the set's directory.
    """
    scratch = f"{ident(db)}_restored"
    return [
        f"createdb --owner={ident(owner)} --template=template0 {scratch}",
        f"age -d -i {shlex.quote(key_file)} {shlex.quote(dump_file)}"
        f" | pg_restore --exit-on-error --single-transaction --dbname={scratch}",
    ]
