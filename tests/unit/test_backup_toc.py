"""opskit.backup.pipeline.parse_toc on saved `pg_restore --list` output."""

from __future__ import annotations

from opskit.backup.pipeline import TocSummary, parse_toc
from tests.harness.core import ROOT

LISTING = (ROOT / "tests" / "fixtures" / "pg_restore_list.txt").read_text()


def test_a_django_database():
    assert parse_toc(LISTING) == TocSummary(entries=25, tables=3, migrations_table=True)


def test_table_data_views_and_sequences_are_not_tables():
    lines = [
        "215; 1259 16390 TABLE public django_migrations aiia_prod",
        "3368; 0 16390 TABLE DATA public django_migrations aiia_prod",
        "220; 1259 16424 VIEW public busy_accounts aiia_prod",
        "214; 1259 16389 SEQUENCE public django_migrations_id_seq aiia_prod",
        "; a comment",
        "",
    ]
    assert parse_toc("\n".join(lines)) == TocSummary(entries=4, tables=1, migrations_table=True)


def test_no_migrations_table_and_an_empty_listing():
    other = LISTING.replace("TABLE public django_migrations", "TABLE public other_table")
    assert parse_toc(other).migrations_table is False
    assert parse_toc(";\n; Selected TOC Entries:\n;\n") == TocSummary(0, 0, False)
