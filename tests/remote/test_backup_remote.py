"""fab install-cron and fab restore over real SSH to the loopback host.

install-cron edits the crontab of a throwaway OS user made for the test (never root's) and
makes the drill's key of "the server" (this machine; put back as it was afterwards);
restore downloads a set over SSH, decrypts it here and streams it over SSH into
PostgreSQL on "the server" (the native server, reached over its socket by peer auth).
"""

from __future__ import annotations

import subprocess

import pytest

from opskit import age
from opskit.backup import pipeline, restore
from opskit.backup.commands import PgConn
from opskit.remote import backup as rb
from tests.harness.backup import PG_BIN, fingerprint
from tests.remote.conftest import crontab_of

pytest_plugins = ["tests.harness.backup"]


def test_install_cron_twice_leaves_one_entry(ssh_host, cron_user, drill_key, capsys):
    c = ssh_host.connection()
    subprocess.run(["crontab", "-u", cron_user, "-"], input="MAILTO=ops@eduaiia.com\n",
                   text=True, check=True)  # fmt: skip
    rb.install_cron(c, env="production", user=cron_user)
    first = crontab_of(cron_user)
    out = capsys.readouterr().out
    assert "install-cron: installed:" in out
    assert f"made the drill's key {drill_key} (0600)" in out
    made = drill_key.read_bytes()
    rb.install_cron(c, env="production", user=cron_user)
    out = capsys.readouterr().out
    assert "already installed" in out and f"the drill's key is already there: {drill_key}" in out
    assert crontab_of(cron_user) == first and drill_key.read_bytes() == made
    assert first.splitlines() == [
        "MAILTO=ops@eduaiia.com",
        "0 2 * * * /home/ubuntu/main/ai-ia-backend/scripts/backup.sh production",
        "7 * * * * /home/ubuntu/main/ai-ia-backend/scripts/status.sh start",
        "30 3 * * 0 /home/ubuntu/main/ai-ia-backend/scripts/drill.sh production",
    ]


def test_restore_over_ssh_keeps_the_key_here(ssh_host, backup_db, age_key, tmp_path,
                                             postgres_server):  # fmt: skip
    result = pipeline.run_backup(backup_db.spec(tmp_path / "backups", age_key.recipient),
                                 report=lambda _: None)  # fmt: skip
    prefix = rb.ssh_prefix(ssh_host.host, port=ssh_host.port, user=ssh_host.user,
                           key_files=[ssh_host.key_filename],
                           known_hosts=ssh_host.known_hosts)  # fmt: skip
    # on "the server": PostgreSQL's own client over its socket, peer auth (root -> postgres)
    server_side = PgConn(user="postgres", host=str(postgres_server.socket_dir),
                         port=postgres_server.port, bin_dir=PG_BIN)  # fmt: skip
    target = f"{backup_db.name}_fromssh"
    spec = restore.RestoreSpec(
        environment="production",
        database=target,
        owner=backup_db.name,
        conn=rb.ssh_conn(prefix, server_side),
        identities=age.parse_identity_file(age_key.identity_file.read_text()),
        identity_source=age_key.identity_file.name,
    )
    remote_dir = rb.remote_set_dir(str(tmp_path), f"backups/{result.path.name}/database.dump")
    lines: list[str] = []
    restored = rb.restore_over_ssh(prefix, remote_dir, spec, verify_only=False, force=False,
                                   yes=True, report=lines.append)  # fmt: skip
    assert restored.swapped and restored.tables == 3
    assert fingerprint(postgres_server, target) == fingerprint(postgres_server, backup_db.name)
    assert any(f"downloaded {remote_dir}" in line for line in lines)

    # the drill, and a wrong key refused before anything is created on the server
    drill = rb.restore_over_ssh(prefix, remote_dir, spec, verify_only=True, force=False, yes=False,
                                report=lines.append)  # fmt: skip
    assert not drill.swapped
    other_identity, _ = age.generate_identity()
    wrong = restore.RestoreSpec(**{**spec.__dict__, "identities": [other_identity]})
    with pytest.raises(restore.RestoreRefused, match="wrong key"):
        rb.restore_over_ssh(prefix, remote_dir, wrong, verify_only=True, force=False, yes=False,
                            report=lines.append)  # fmt: skip
