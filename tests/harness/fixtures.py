"""Session fixtures for the engine and the SSH test host.

Both install what is missing through scripts/ensure.sh, wait on a readiness probe and
fail loudly when a prerequisite cannot be had; neither ever skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.core import PrerequisiteError, Service, ensure, free_port, wait_for_port


def _docker_ok() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """A running Docker engine with Compose v2 and the debian:bookworm-slim base image.

    The engine is shared with whatever else runs on this machine, so it is started when
    missing but never stopped here.
    """
    if not _docker_ok():
        ensure("docker")
    ensure("compose", "base-image")
    if not _docker_ok():
        raise PrerequisiteError("docker info still fails after scripts/ensure.sh docker")
    return "docker"


@dataclass(frozen=True)
class SSHHost:
    host: str
    port: int
    user: str
    key_filename: str
    known_hosts: str

    def connection(self, **kwargs):
        """A Fabric connection to the loopback host with the test client key."""
        from fabric import Config, Connection

        # tests have no terminal: never forward pytest's stdin to the remote side
        kwargs.setdefault("config", Config(overrides={"run": {"in_stream": False}}))
        return Connection(
            self.host,
            user=self.user,
            port=self.port,
            connect_kwargs={
                "key_filename": [self.key_filename],
                "look_for_keys": False,
                "allow_agent": False,
            },
            **kwargs,
        )


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, capture_output=True
    )


@pytest.fixture(scope="session")
def ssh_host(tmp_path_factory) -> SSHHost:
    """A real sshd on a loopback port: Fabric reaches this very machine as `root`."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.access(sshd, os.X_OK) or not shutil.which("ssh-keygen"):
        ensure("packages")
    if not os.access(sshd, os.X_OK):
        raise PrerequisiteError("sshd missing after scripts/ensure.sh packages (openssh-server)")
    base = tmp_path_factory.mktemp("sshd")
    host_key, client_key = base / "host_ed25519", base / "client_ed25519"
    _keygen(host_key)
    _keygen(client_key)
    authorized = base / "authorized_keys"
    authorized.write_text((base / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    # sshd refuses to start without its privilege separation directory
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    user = os.environ.get("USER") or "root"
    service = Service(
        [
            sshd,
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-p",
            str(port),
            "-o",
            "ListenAddress=127.0.0.1",
            "-o",
            f"HostKey={host_key}",
            "-o",
            f"AuthorizedKeysFile={authorized}",
            "-o",
            "StrictModes=no",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            f"PidFile={base / 'sshd.pid'}",
            "-o",
            "UsePAM=no",
            "-o",
            "MaxStartups=50",
            "-o",
            "MaxSessions=50",
        ],
        log=base / "sshd.log",
    ).start()
    try:
        wait_for_port("127.0.0.1", port, timeout=20, what="sshd")
        service.check_alive()
        known = base / "known_hosts"
        pub = (base / "host_ed25519.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        yield SSHHost("127.0.0.1", port, user, str(client_key), str(known))
    finally:
        service.stop()
