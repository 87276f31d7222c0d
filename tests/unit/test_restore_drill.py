"""The weekly restore drill's pieces that need no database: the cron line, the drill key made
once on the server, the dump encrypted to the drill's key too, which set the drill takes and
the failures it reports with their fix, the relay's side of the host protocol, and
scripts/drill.sh's own checks. The drill against the real server stack is in
tests/remote/test_drill_remote.py."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fabric import Connection

from opskit import age
from opskit.backup import __main__ as backup_main
from opskit.backup import drill, manifest, pipeline, relay, rotation
from opskit.backup.commands import PgConn
from opskit.remote import backup as rb
from tests.harness.core import ROOT, require_binary
from tests.stack.stackkit import env_from_example

pytestmark = pytest.mark.unit

SCRIPT = ROOT / "scripts" / "drill.sh"
DRILL_LINE = "30 3 * * 0 /home/ubuntu/main/ai-ia-backend/scripts/drill.sh production"


# --- cron ---------------------------------------------------------------------------------


def test_production_gets_the_weekly_drill_after_the_nights_backups():
    assert rb.cron_lines()[-1] == DRILL_LINE
    minute, hour, _, _, weekday = drill.SCHEDULE.split()
    assert (weekday, hour, minute) == ("0", "3", "30")  # Sunday 03:30, after 02:00 and 02:30
    assert not any(
        "drill.sh" in line for line in rb.cron_lines(rb.GUIDE_PATHS["staging"], "staging")
    )


def test_the_drill_line_is_kept_once_and_a_hand_made_schedule_is_replaced():
    by_hand = (
        "MAILTO=ops@eduaiia.com\n"
        "0 4 * * 6 /home/ubuntu/main/ai-ia-backend/scripts/drill.sh production\n"
    )
    text = by_hand
    for line in rb.cron_lines():
        text, _ = rb.merge_crontab(text, line)
    assert text.splitlines()[1] == DRILL_LINE
    assert text.count("drill.sh") == 1
    again = text
    for line in rb.cron_lines():
        again, changed = rb.merge_crontab(again, line)
        assert not changed
    assert again == text


# --- the drill's key on the server --------------------------------------------------------


def key_script(home: Path, stdin: str = "", *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    return subprocess.run(
        rb.drill_key_argv(dry_run="--dry-run" in args),
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
    )


def test_the_drill_key_is_made_once_0600_with_its_public_key_beside_it(tmp_path):
    secret, public = age.generate_identity()
    key = tmp_path / ".config" / "aiia" / "drill.key"
    dry = key_script(tmp_path, "", "--dry-run")
    assert rb.parse_drill_key(dry.stdout) == ("absent", "-", str(key)) and not key.exists()

    made = key_script(tmp_path, f"{secret}\n{public}\n")
    assert made.returncode == 0, made.stderr
    assert rb.parse_drill_key(made.stdout) == ("created", public, str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert age.parse_identity_file(key.read_text()) == [secret]
    assert Path(f"{key}.pub").read_text() == f"{public}\n"
    assert secret not in made.stdout + made.stderr
    assert not any(secret in word for word in rb.drill_key_argv())

    other, other_public = age.generate_identity()
    again = key_script(tmp_path, f"{other}\n{other_public}\n")
    assert rb.parse_drill_key(again.stdout) == ("present", public, str(key))
    assert age.parse_identity_file(key.read_text()) == [secret]  # never replaced
    assert sorted(p.name for p in key.parent.iterdir()) == ["drill.key", "drill.key.pub"]


def test_a_drill_key_without_its_public_key_says_what_to_do(tmp_path):
    key = tmp_path / ".config" / "aiia" / "drill.key"
    key.parent.mkdir(parents=True)
    key.write_text(age.generate_identity()[0] + "\n")
    done = key_script(tmp_path, "")
    assert done.returncode == 3
    assert (f"{key} has no {key}.pub beside it: move {key} away and run fab install-cron (or "
            "fab setup) again") in done.stderr  # fmt: skip


@pytest.mark.parametrize(
    "user", ["other", "ubuntu", None], ids=["another-user", "itself", "default"]
)
def test_install_cron_makes_the_key_of_the_user_whose_crontab_it_is(user, capsys):
    """`--user other` (root over SSH): the lines go into other's crontab and the key is
    made as other (runuser sets HOME), in the home cron runs the drill with; for the SSH
    user itself (ubuntu here) or by default, the key is made as the SSH user."""
    from fabric.testing.base import Command, MockRemote

    prod = "/home/ubuntu/main/ai-ia-backend"
    home = "/root" if user is None else f"/home/{user}"
    key = f"{home}/.config/aiia/drill.key"
    crontab = ["crontab", *(["-u", user] if user else [])]
    lines = "".join(f"{line}\n" for line in rb.cron_lines(prod))
    key_command = rb.drill_key_command("other" if user == "other" else None)
    assert key_command.startswith("runuser -u other -- sh -c ") == (user == "other")
    remote = MockRemote()
    remote.expect(commands=[
        Command(cmd=" ".join([*crontab, "-l"]), out=b"MAILTO=ops@eduaiia.com\n"),
        Command(cmd=key_command, out=f"created age1drill {key}\n".encode()),
        Command(cmd=" ".join([*crontab, "-"]), in_=f"MAILTO=ops@eduaiia.com\n{lines}".encode()),
        # the status collector's container, started as the crontab's user
        Command(cmd=" ".join([*(["runuser", "-u", "other", "--"] if user == "other" else []),
                             "bash", f"{prod}/scripts/status.sh", "start"])),
    ])  # fmt: skip
    try:
        rb.install_cron(Connection("server.example", user="ubuntu"), path=prod, user=user)
    finally:
        try:
            remote.safety()
        finally:
            remote.stop()
    out = capsys.readouterr().out
    assert f"made the drill's key {key} (0600), public key age1drill" in out
    assert out.count("install-cron: installed: ") == 3
    assert "install-cron: the status collector runs every minute" in out


# --- backups encrypted to the drill's key too ----------------------------------------------


def test_the_dump_alone_is_encrypted_to_the_drill_key_and_the_manifest_says_so(tmp_path):
    operator, operator_public = age.generate_identity()
    _, drill_public = age.generate_identity()
    spec = pipeline.BackupSpec(
        environment="production",
        database="aiia_prod",
        owner="aiia_prod",
        conn=PgConn(user="aiia_prod"),
        recipient=operator_public,
        backup_dir=tmp_path,
        drill_recipient=drill_public,
    )
    assert pipeline._dump_recipients(spec) == [operator_public, drill_public]
    assert f"age -r {operator_public} -r {drill_public}, sha256" in pipeline.plan(spec, tmp_path)[0]
    plain = pipeline.BackupSpec(**{**spec.__dict__, "drill_recipient": None})
    assert pipeline._dump_recipients(plain) == [operator_public]

    found = sample_manifest(drill_public)
    assert f"drill_recipient = {drill_public}" in found.render()
    assert manifest.parse(found.render()).drill_recipient == drill_public
    without = sample_manifest(None)
    assert "drill_recipient" not in without.render()
    assert manifest.parse(without.render()).drill_recipient is None


def sample_manifest(drill_recipient, files=(), name="db_prod_20260104_020000") -> manifest.Manifest:
    return manifest.Manifest(
        name=name,
        environment="production",
        database="aiia_prod",
        owner="aiia_prod",
        created=dt.datetime(2026, 1, 4, 2, 0, tzinfo=dt.UTC),
        recipient=age.generate_identity()[1],
        dump_bytes=10,
        toc_entries=3,
        tables=1,
        migrations_table=False,
        files=tuple(files) or (manifest.FileEntry(manifest.DUMP_FILE, 1, "a" * 64),),
        drill_recipient=drill_recipient,
    )


# --- which set, and the failures --------------------------------------------------------


def make_set(
    backup_dir: Path,
    name: str,
    recipients: list[str],
    *,
    drill_to: str | None,
    truncate: bool = False,
) -> Path:
    set_dir = backup_dir / name
    set_dir.mkdir(parents=True)
    out = io.BytesIO()
    with age.Encryptor(out, recipients) as enc:
        enc.write(b"PGDMP not really a dump")
    (set_dir / manifest.DUMP_FILE).write_bytes(out.getvalue())
    sha, size = manifest.sha256_file(set_dir / manifest.DUMP_FILE)
    found = sample_manifest(drill_to, [manifest.FileEntry(manifest.DUMP_FILE, size, sha)], name)
    (set_dir / manifest.MANIFEST_FILE).write_text(found.render())
    if truncate:
        with open(set_dir / manifest.DUMP_FILE, "r+b") as f:
            f.truncate(size // 2)
    return set_dir


NO_DB = PgConn(user="postgres", prefix=("false",))  # none of these failures reaches PostgreSQL


def drill_run(backup_dir: Path, identity: str) -> drill.Outcome:
    return drill.run(
        "production",
        backup_dir,
        database="aiia_prod",
        owner="aiia_prod",
        conn=NO_DB,
        identity_text=identity + "\n",
        identity_source="the drill's key",
        report=lambda _: None,
    )


def test_the_newest_completed_set_is_drilled_even_when_damaged(tmp_path):
    key, public = age.generate_identity()
    make_set(tmp_path, "db_prod_20260103_020000", [public], drill_to=public)
    make_set(tmp_path, "db_prod_20260104_020000", [public], drill_to=public, truncate=True)
    (tmp_path / "db_prod_20260105_020000.partial").mkdir()  # a backup still running
    make_set(tmp_path, "db_staging_20260106_020000", [public], drill_to=public)
    newest = drill.newest_set(tmp_path, "production")
    assert (newest.name, newest.state) == ("db_prod_20260104_020000", rotation.DAMAGED)

    outcome = drill_run(tmp_path, key)
    assert not outcome.ok and outcome.set_name == "db_prod_20260104_020000"
    assert outcome.detail.startswith(
        "REFUSED: db_prod_20260104_020000 is damaged, nothing was restored: "
    )
    assert "restore another set or its offsite copy" in outcome.detail


def test_no_set_says_how_to_take_one(tmp_path):
    outcome = drill_run(tmp_path, age.generate_identity()[0])
    assert outcome == drill.Outcome(
        False,
        "",
        f"no production backup set in {tmp_path.name}/: "
        "take one with `fab -H HOST backup --env production` (or "
        "scripts/backup.sh production on the server)",
    )


def test_a_set_taken_before_the_drill_key_says_to_take_a_backup(tmp_path):
    _, operator_public = age.generate_identity()
    key, _ = age.generate_identity()
    make_set(tmp_path, "db_prod_20260104_020000", [operator_public], drill_to=None)
    outcome = drill_run(tmp_path, key)
    assert not outcome.ok
    assert (
        "cannot be opened with the drill's key (it was taken before `fab install-cron` made"
        in outcome.detail
    )
    assert outcome.detail.endswith("take one now with `fab -H HOST backup --env production`")


def test_a_set_for_another_drill_key_names_it(tmp_path):
    key, _ = age.generate_identity()
    _, old_public = age.generate_identity()
    make_set(tmp_path, "db_prod_20260104_020000", [old_public], drill_to=old_public)
    outcome = drill_run(tmp_path, key)
    assert f"it was encrypted to another drill key, {old_public}" in outcome.detail


def test_the_document_is_what_the_collector_reads():
    doc = drill.document(
        drill.Outcome(False, "db_prod_x", "REFUSED: why"), "production", "2026-01-04T03:30:00+00:00"
    )
    assert json.loads(doc) == {
        "when": "2026-01-04T03:30:00+00:00",
        "env": "production",
        "set": "db_prod_x",
        "ok": False,
        "detail": "REFUSED: why",
    }


def test_the_drill_command_without_its_key_prints_a_failed_result(tmp_path, capsys):
    env_file = tmp_path / ".env"
    env_file.write_text(
        env_from_example(
            ROOT / "config" / "prod.env.example", BACKUP_AGE_RECIPIENT=age.generate_identity()[1]
        )
    )
    code = backup_main.main(
        [
            "drill",
            "--env",
            "production",
            "--env-file",
            str(env_file),
            "--backup-dir",
            str(tmp_path),
            "--identity",
            str(tmp_path / "drill.key"),
            "--relay",
            str(tmp_path),
        ]
    )
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False, err
    assert doc["detail"] == (
        f"the drill's key {tmp_path / 'drill.key'}: No such file or "
        "directory; make it with `fab -H HOST install-cron`"
    )
    assert f"drill FAILED: {doc['detail']}" in err


# --- the relay: a command run by "the host", streamed ---------------------------------------


class Host:
    """The host side of opskit.backup.relay, as scripts/drill.sh serves it (one at a time)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        os.mkfifo(directory / relay.REQUESTS)
        self.fd = os.open(directory / relay.REQUESTS, os.O_RDWR)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with os.fdopen(self.fd) as requests:
            for line in requests:
                word = line.strip()
                if word == "exit":
                    return
                base = self.dir / word
                argv = Path(f"{base}.argv").read_bytes().split(b"\0")[:-1]
                with (
                    open(f"{base}.in", "rb") as i,
                    open(f"{base}.out", "wb") as o,
                    open(f"{base}.err", "wb") as e,
                ):
                    rc = subprocess.run(
                        [a.decode() for a in argv], stdin=i, stdout=o, stderr=e
                    ).returncode
                Path(f"{base}.rc.tmp").write_text(f"{rc}\n")
                os.rename(f"{base}.rc.tmp", f"{base}.rc")

    def close(self) -> None:
        with open(self.dir / relay.REQUESTS, "w") as f:
            f.write("exit\n")
        self.thread.join(10)


def test_the_relay_streams_a_command_through_the_host_and_returns_its_status(tmp_path):
    host = Host(tmp_path)
    try:
        data = os.urandom(3 << 20)
        conn = relay.relayed(str(tmp_path), PgConn(user="postgres", prefix=("sh", "-c")))
        argv = [*conn.prefix, 'wc -c; echo "to stderr" >&2; exit 7']
        assert argv[:5] == [sys.executable, "-m", "opskit.backup.relay", str(tmp_path), "--"]
        done = subprocess.run(argv, input=data, capture_output=True)
        assert (done.returncode, done.stdout.strip(), done.stderr) == (
            7,
            b"3145728",
            b"to stderr\n",
        )
        # a command that reads nothing, then the next one: nothing is left behind
        done = subprocess.run([*conn.prefix, "exit 0"], input=data, capture_output=True)
        assert done.returncode == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == [relay.REQUESTS]
    finally:
        host.close()


# --- scripts/drill.sh ----------------------------------------------------------------------


def run_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_shellcheck_clean_and_the_cron_line_in_its_header():
    shellcheck = require_binary("shellcheck", "packages")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert DRILL_LINE in SCRIPT.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "expected one argument, production or staging (got 0)"),
        (("prod",), "unknown environment 'prod': use production or staging"),
    ],
)
def test_wrong_usage_exits_2_and_writes_no_result(tmp_path, args, message):
    proc = run_script(*args, env={"LOG_DIR": str(tmp_path)})
    assert proc.returncode == 2 and proc.stderr.rstrip().endswith(f"drill.sh: {message}")
    assert not (tmp_path / "drill.json").exists()


def test_a_missing_drill_key_is_a_failed_drill_with_its_fix(tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("")
    proc = run_script(
        "production",
        env={"LOG_DIR": str(tmp_path / "logs"), "ENV_FILE": str(env_file), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 1
    doc = json.loads((tmp_path / "logs" / "drill.json").read_text())
    key = tmp_path / ".config" / "aiia" / "drill.key"
    assert doc["ok"] is False and doc["env"] == "production" and doc["set"] == ""
    assert doc["detail"] == (
        f"no drill key at {key}: make it with `fab -H HOST install-cron` "
        "from the operator's machine (then take a backup: "
        "`fab -H HOST backup`)"
    )
    assert dt.datetime.fromisoformat(doc["when"]).tzinfo is not None
    assert stat.S_IMODE((tmp_path / "logs" / "drill.json").stat().st_mode) == 0o644
    assert doc["detail"] in proc.stderr
