"""Fabric reaches the loopback host over real SSH and reads a command's output."""

import os
import uuid


def test_fabric_runs_a_command_over_ssh(ssh_host, tmp_path):
    marker = tmp_path / f"marker-{uuid.uuid4().hex}"
    marker.write_text("written locally\n")
    with ssh_host.connection() as c:
        result = c.run(f"cat {marker} && echo pid=$$", hide=True, warn=True)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "written locally"
    # the shell ran in a process of its own, spawned by sshd, not by this test
    assert lines[1].startswith("pid=") and int(lines[1][4:]) != os.getpid()


def test_fabric_reports_remote_failure(ssh_host):
    with ssh_host.connection() as c:
        result = c.run("echo to-stderr >&2; exit 3", hide=True, warn=True)
    assert result.exited == 3
    assert result.stderr.strip() == "to-stderr"
