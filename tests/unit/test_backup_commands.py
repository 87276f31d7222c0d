"""opskit.backup.commands: the exact argv of every PostgreSQL client command."""

from __future__ import annotations

import pytest

from opskit.backup import commands
from opskit.backup.commands import PgConn

TCP = PgConn(user="aiia_prod", host="postgresql", port=5432)
DOCKER = commands.docker_conn()


@pytest.mark.parametrize(
    ("conn", "expected"),
    [
        pytest.param(
            TCP,
            ["pg_dump", "--format=custom", "--compress=1", "--host", "postgresql",
             "--port", "5432", "--username", "aiia_prod", "--no-password", "--dbname", "aiia_prod"],
            id="tcp",
        ),
        pytest.param(
            DOCKER,
            ["docker", "exec", "-i", "aiia_postgresql", "pg_dump", "--format=custom",
             "--compress=1", "--username", "postgres", "--no-password", "--dbname", "aiia_prod"],
            id="docker-exec-socket",
        ),
        pytest.param(
            PgConn(user="aiia_prod", host="127.0.0.1", port=6543,
                   bin_dir="/usr/lib/postgresql/15/bin/"),
            ["/usr/lib/postgresql/15/bin/pg_dump", "--format=custom", "--compress=1",
             "--host", "127.0.0.1", "--port", "6543", "--username", "aiia_prod", "--no-password",
             "--dbname", "aiia_prod"],
            id="bin-dir",
        ),
    ],
)  # fmt: skip
def test_pg_dump(conn, expected):
    assert commands.pg_dump(conn, "aiia_prod") == expected


def test_docker_conn_with_password_copies_it_from_the_environment_not_argv():
    conn = commands.docker_conn("aiia_prod", password=True)
    argv = commands.pg_dump(conn, "aiia_prod")
    assert argv[:6] == ["docker", "exec", "-i", "-e", "PGPASSWORD", "aiia_postgresql"]
    assert not any("=" in a and a.startswith("PGPASSWORD") for a in argv)


def test_pg_restore_is_all_or_nothing():
    assert commands.pg_restore(TCP, "aiia_prod_restore_1") == [
        "pg_restore", "--exit-on-error", "--single-transaction", "--host", "postgresql",
        "--port", "5432", "--username", "aiia_prod", "--no-password",
        "--dbname", "aiia_prod_restore_1",
    ]  # fmt: skip


def test_pg_restore_list_reads_stdin_and_needs_no_connection():
    assert commands.pg_restore_list(DOCKER) == [
        "docker", "exec", "-i", "aiia_postgresql", "pg_restore", "--list",
    ]  # fmt: skip


def test_psql_variables_and_options():
    argv = commands.psql(TCP, "postgres", {"scratch": "aiia_prod_restore_1"})
    assert argv == [
        "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-v", "scratch=aiia_prod_restore_1",
        "--host", "postgresql", "--port", "5432", "--username", "aiia_prod", "--no-password",
        "--dbname", "postgres",
    ]  # fmt: skip


@pytest.mark.parametrize("bad", ["aiia prod", "Aiia", "x;drop", "", "a" * 64, "1abc", "--help"])
def test_names_that_need_quoting_are_refused(bad):
    with pytest.raises(commands.CommandError, match="plain PostgreSQL name"):
        commands.pg_dump(TCP, bad)


@pytest.mark.parametrize(
    ("env", "name"),
    [("production", "db_prod_20240101_120000"), ("staging", "db_staging_20240101_120000"),
     ("local", "db_dev_20240101_120000")],
)  # fmt: skip
def test_set_names_follow_the_guide(env, name):
    assert commands.set_name(env, "20240101_120000") == name
    assert commands.SET_NAME_RE.match(name)


def test_unknown_environment():
    with pytest.raises(commands.CommandError, match="unknown environment 'prod'"):
        commands.set_name("prod", "20240101_120000")


def test_plain_restore_commands_use_standard_tools_only():
    lines = commands.plain_restore_commands(
        db="aiia_prod", owner="aiia_prod", dump_file="database.dump.age"
    )
    assert lines == [
        "createdb --owner=aiia_prod --template=template0 aiia_prod_restored",
        "age -d -i backup.key database.dump.age | pg_restore --exit-on-error "
        "--single-transaction --dbname=aiia_prod_restored",
    ]
