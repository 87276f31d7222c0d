"""The VPS itself: what the tier's claims rest on (512 MB held, daemons nested, SSH, DNS)."""

from __future__ import annotations

import json

from tests.harness.vps import BASE


def test_a_vps_is_a_fresh_debian_12_with_systemd_and_ssh(vps_cluster):
    vps = vps_cluster.boot("bare")
    with vps.connection() as c:
        release = c.run("cat /etc/os-release", hide=True).stdout
        assert "VERSION_CODENAME=bookworm" in release
        assert (
            c.run("systemctl is-system-running", hide=True, warn=True).stdout.strip() == "running"
        )
        # nothing but the OS: installing Docker is the setup's job
        assert not c.run("command -v docker", hide=True, warn=True).ok
    mem = vps.memory()
    assert mem.limit_bytes == 512 * 2**20
    # no swap for the VPS: memory+swap is held to the same 512 MiB
    memsw = vps.cgroup_dir() / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        assert int(memsw.read_text()) == 512 * 2**20
    assert vps.daemon_json()["cgroup-parent"] == f"/docker/{vps.id}"


def test_vps_on_one_network_reach_each_other_by_name(vps_cluster):
    vps = vps_cluster.boot("bare")
    other = vps_cluster.boot("peer")
    assert other.ip != vps.ip
    assert vps.exec("bash", "-c", "exec 3<>/dev/tcp/peer/22 && head -c 4 <&3").stdout == "SSH-"
    assert other.exec("getent", "hosts", "bare").stdout.split()[0] == vps.ip


def test_inner_containers_pull_from_the_registry_and_are_held_to_the_vps_512_mb(vps_cluster):
    box = vps_cluster.boot("engine", docker_installed=True)
    image = vps_cluster.registry.push(BASE)
    assert image == f"registry:5000/{BASE}"
    box.exec("docker", "pull", "-q", image, timeout=300)
    before = box.memory().oom_kills
    # a 700 MB process in an inner container without a limit of its own: only the VPS's
    # 512 MiB can stop it
    proc = box.exec("docker", "run", "--rm", image, "sh", "-c", "head -c 700m /dev/zero | tail",
                    check=False, timeout=300)  # fmt: skip
    assert proc.returncode == 137, (proc.returncode, proc.stderr)
    assert box.memory().oom_kills > before
    # the engine survived and still answers
    info = json.loads(box.exec("docker", "info", "--format", "{{json .}}").stdout)
    assert info["CgroupDriver"] == "cgroupfs"
