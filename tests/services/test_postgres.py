"""PostgreSQL started natively with postgres/postgresql.conf, pg_hba.conf and the init step."""

from __future__ import annotations


def test_fixture_smoke(postgres_server, app_databases, pgbouncer_server):
    prod = app_databases["production"]
    assert postgres_server.psql("select current_database()", db=prod.db, user=prod.user,
                                password=prod.password) == "aiia_prod"
    print(pgbouncer_server.admin("SHOW POOLS"))
