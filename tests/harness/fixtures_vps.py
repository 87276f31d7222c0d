"""Session fixtures of the vps tier (see tests/harness/vps.py for what a VPS offers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.vps import VPS, Cluster


@pytest.fixture(scope="session")
def vps_cluster(docker_engine, tmp_path_factory) -> Iterator[Cluster]:
    """One network of VPS for the session: `vps_cluster.boot(name)`, `.registry`."""
    cluster = Cluster(tmp_path_factory.mktemp("vps")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def vps(vps_cluster: Cluster) -> VPS:
    """A bare VPS (systemd, sshd, root's key): what `fab setup` provisions."""
    return vps_cluster.boot("server")
