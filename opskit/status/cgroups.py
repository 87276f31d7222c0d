"""A container's memory and CPU time from the host's cgroup files.

The Docker API's stats are the first choice; some engines answer them empty (an engine
that runs nested, whose own cgroup view differs from the host's), and reading the
files is cheaper than the API anyway. scripts/status.sh mounts the host's
/sys/fs/cgroup read-only; v1 (cgroupfs) and v2 (cgroupfs or systemd driver) layouts
are tried in turn.
"""

from __future__ import annotations

from pathlib import Path


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat(path: Path) -> dict[str, int]:
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                values[key] = int(value)
    except OSError:
        pass
    return values


def usage(root: Path, cid: str, parent: str = "") -> tuple[int | None, int | None]:
    """(memory in use less inactive page cache, CPU time in ns) of container `cid`."""
    parent = parent.strip("/")
    # cgroup v1, cgroupfs driver: /sys/fs/cgroup/memory/docker/<id>
    v1 = parent or "docker"
    mem_dir = root / "memory" / v1 / cid
    if mem_dir.is_dir():
        used = _read_int(mem_dir / "memory.usage_in_bytes")
        inactive = _stat(mem_dir / "memory.stat").get("total_inactive_file", 0)
        cpu = None
        for ctrl in ("cpuacct", "cpu,cpuacct"):
            cpu = _read_int(root / ctrl / v1 / cid / "cpuacct.usage")
            if cpu is not None:
                break
        return (None if used is None else max(used - inactive, 0)), cpu
    # cgroup v2: systemd driver, then cgroupfs
    for d in (
        root / (parent or "system.slice") / f"docker-{cid}.scope",
        root / (parent or "docker") / cid,
    ):
        if d.is_dir():
            used = _read_int(d / "memory.current")
            inactive = _stat(d / "memory.stat").get("inactive_file", 0)
            usec = _stat(d / "cpu.stat").get("usage_usec")
            return (None if used is None else max(used - inactive, 0)), (
                None if usec is None else usec * 1000
            )
    return None, None
