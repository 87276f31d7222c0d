"""opskit.remote.backup: the cron line, crontab merging, and the restore's SSH commands."""

from __future__ import annotations

import json

import pytest
from invoke import Exit

from opskit.backup import commands
from opskit.remote import backup as rb

GUIDE_LINE = "0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production"


def test_the_guides_cron_line():
    assert rb.cron_line() == GUIDE_LINE
    assert rb.cron_line(rb.GUIDE_PATHS["staging"], "staging") == (
        "0 2 * * * /home/ubuntu/staging/ai-ia-backend/scripts/backup.sh staging"
    )


def test_merge_into_an_empty_crontab_then_again_changes_nothing():
    once, changed = rb.merge_crontab("", GUIDE_LINE)
    assert changed and once == GUIDE_LINE + "\n"
    twice, changed = rb.merge_crontab(once, GUIDE_LINE)
    assert not changed and twice == once


def test_merge_keeps_other_lines_and_replaces_an_old_schedule():
    current = (
        "MAILTO=ops@eduaiia.com\n"
        "# 0 3 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production\n"
        "30 4 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production\n"
        "15 1 * * * /usr/local/bin/other-job\n"
        "30 5 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production\n"
    )
    text, changed = rb.merge_crontab(current, GUIDE_LINE)
    assert changed
    assert text.splitlines() == [
        "MAILTO=ops@eduaiia.com",
        "# 0 3 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production",
        GUIDE_LINE,
        "15 1 * * * /usr/local/bin/other-job",
    ]


def test_merge_keeps_the_staging_entry_next_to_production():
    staging = "0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh staging"
    text, changed = rb.merge_crontab(staging + "\n", GUIDE_LINE)
    assert changed and text.splitlines() == [staging, GUIDE_LINE]


@pytest.mark.parametrize(
    ("user", "write", "argv"),
    [(None, False, ["crontab", "-l"]), ("ubuntu", True, ["crontab", "-u", "ubuntu", "-"])],
)
def test_crontab_argv(user, write, argv):
    assert rb.crontab_argv(user, write=write) == argv


@pytest.mark.parametrize(
    "given",
    [
        "backups/db_prod_20240101_120000/database.dump",
        "backups/db_prod_20240101_120000/database.dump.age",
        "backups/db_prod_20240101_120000/",
        "/home/ubuntu/main/ai-ia-backend/backups/db_prod_20240101_120000/MANIFEST.txt",
    ],
)
def test_remote_set_dir_from_the_guides_paths(given):
    assert rb.remote_set_dir("/home/ubuntu/main/ai-ia-backend", given) == (
        "/home/ubuntu/main/ai-ia-backend/backups/db_prod_20240101_120000"
    )


def test_remote_set_dir_refuses_what_is_no_set():
    with pytest.raises(Exit, match="not a backup set"):
        rb.remote_set_dir("/srv", "backups/../../etc")


def test_restore_commands_over_ssh_are_plain_words():
    prefix = rb.ssh_prefix("203.0.113.9", port=2222, user="ubuntu", key_files=["/k/id"])
    assert prefix == ["ssh", "-o", "BatchMode=yes", "-p", "2222", "-i", "/k/id", "-l", "ubuntu",
                      "203.0.113.9", "--"]  # fmt: skip
    conn = rb.ssh_conn(prefix, commands.docker_conn())
    remote = lambda argv: argv[argv.index("--") + 1 :]  # noqa: E731
    for argv in (
        commands.pg_restore(conn, "aiia_prod_restore_20240101_120000"),
        commands.psql(conn, "postgres", {"scratch": "aiia_prod_restore_20240101_120000",
                                         "target": "aiia_prod", "owner": "aiia_prod"}),
    ):  # fmt: skip
        assert remote(argv)[:4] == ["docker", "exec", "-i", "aiia_postgresql"]
        assert rb.safe(remote(argv)), argv


def test_checkout_paths():
    assert rb.checkout("staging", None) == "/home/ubuntu/staging/ai-ia-backend"
    with pytest.raises(Exit, match="absolute path"):
        rb.checkout("production", "relative/path")
    with pytest.raises(Exit, match="use production or staging"):
        rb.checkout("prod", None)


def test_cron_lines_backup_the_status_collector_and_the_drill():
    assert rb.cron_lines() == [
        GUIDE_LINE,
        "7 * * * * /home/ubuntu/main/ai-ia-backend/scripts/status.sh start",
        "30 3 * * 0 /home/ubuntu/main/ai-ia-backend/scripts/drill.sh production",
    ]
    staging = rb.cron_lines(rb.GUIDE_PATHS["staging"], "staging")
    assert staging == [rb.cron_line(rb.GUIDE_PATHS["staging"], "staging")]
    text = ""
    for line in rb.cron_lines():
        text, _ = rb.merge_crontab(text, line)
    for line in rb.cron_lines():
        text, changed = rb.merge_crontab(text, line)
        assert not changed


def test_drill_record_writes_logs_drill_json_atomically():
    argv, doc = rb.drill_record("/srv/app", "production", "db_prod_20260101_020000", True,
                                "12 tables", "2026-01-04T03:30:00+00:00")  # fmt: skip
    assert argv == ["sh", "-c", rb.DRILL_WRITE, "sh", "/srv/app/logs"]
    assert '"$1/drill.json"' in rb.DRILL_WRITE and "mv -f" in rb.DRILL_WRITE
    assert json.loads(doc) == {"when": "2026-01-04T03:30:00+00:00", "env": "production",
                               "set": "db_prod_20260101_020000", "ok": True,
                               "detail": "12 tables"}  # fmt: skip


def test_merge_crontab_replaces_the_former_collector_line_and_nothing_else_of_its_script():
    script = "/home/ubuntu/main/ai-ia-backend/scripts/status.sh"
    start = next(line for line in rb.cron_lines() if line.endswith(" start"))
    own = f"*/5 * * * * {script} show"
    current = f"* * * * * {script} run\n{own}\n"
    text, changed = rb.merge_crontab(current, start)
    assert changed and text.splitlines() == [start, own]
