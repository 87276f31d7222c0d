"""What `fab setup` reads from a server, and what it decides from it: pure functions.

Each step asks the server one small shell script whose output is split into `## name`
sections (`sections`), and a parser here turns a section into data. Every function is
tested on saved output under tests/fixtures/provision/; none runs anything.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SUPPORTED = {("debian", "12"): "Debian 12", ("ubuntu", "24.04"): "Ubuntu 24.04"}
# a "512 MB" plan reports a little less than 512 MiB: the kernel keeps some for itself
MIN_RAM_MB = 480
MIN_DISK_GB = 10


class StateError(ValueError):
    """Output that is not what the step expected to read."""


def sections(text: str) -> dict[str, str]:
    """`## name` headed sections of a probe script's output."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## ") and len(line.split()) == 2:
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in out.items()}


def probe_script(parts: Mapping[str, str]) -> str:
    """One shell script printing each part's output under its `## name` header."""
    return "".join(f"echo '## {name}'; {{ {cmd}; }} 2>&1; " for name, cmd in parts.items())


# ----------------------------------------------------------------------------- host


@dataclass(frozen=True)
class Host:
    os_id: str
    os_version: str
    os_name: str
    ram_bytes: int
    disk_free_bytes: int
    arch: str

    @property
    def ram_mb(self) -> int:
        return self.ram_bytes // 2**20

    @property
    def disk_free_gb(self) -> float:
        return self.disk_free_bytes / 10**9


def parse_os_release(text: str) -> tuple[str, str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values.get("ID", ""), values.get("VERSION_ID", ""), values.get("PRETTY_NAME", "")


def parse_meminfo_total(text: str) -> int:
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    if not m:
        raise StateError("no MemTotal in /proc/meminfo")
    return int(m.group(1)) * 1024


def parse_cgroup_limit(text: str) -> int | None:
    """The smallest memory limit on PID 1's cgroup path (v1 bytes, v2 bytes or `max`).

    None when nothing is limited (v1 reports "no limit" as a huge page-aligned number).
    """
    limits = [int(w) for w in text.split() if w.isdigit() and int(w) < 2**62]
    return min(limits) if limits else None


def parse_df_avail(text: str) -> int:
    numbers = [w for w in text.split() if w.isdigit()]
    if not numbers:
        raise StateError(f"df printed no number: {text[:80]!r}")
    return int(numbers[-1])


HOST_PROBE = probe_script(
    {
        "os": "cat /etc/os-release",
        "meminfo": "cat /proc/meminfo",
        # the memory limits on the way from PID 1's cgroup to the root: a container or a VM
        # slice may hold less than the kernel has (systemd itself sits in init.scope)
        "cgroup": (
            'p=$(awk -F: \'$2=="memory"||$1=="0"{print $3; exit}\' /proc/1/cgroup); '
            'while :; do for f in "/sys/fs/cgroup/memory$p/memory.limit_in_bytes" '
            '"/sys/fs/cgroup$p/memory.max"; do [ -r "$f" ] && cat "$f"; done; '
            '[ -z "$p" ] || [ "$p" = / ] && break; p=$(dirname "$p"); done'
        ),
        "df": "df -B1 --output=avail /",
        "arch": "uname -m",
        "uid": "id -u",
    }
)


def parse_host(text: str) -> Host:
    s = sections(text)
    os_id, version, name = parse_os_release(s.get("os", ""))
    ram = parse_meminfo_total(s.get("meminfo", ""))
    limit = parse_cgroup_limit(s.get("cgroup", ""))
    if limit is not None:
        ram = min(ram, limit)
    return Host(os_id, version, name or f"{os_id} {version}", ram, parse_df_avail(s.get("df", "")),
                s.get("arch", "").strip())  # fmt: skip


def refusal(host: Host) -> str | None:
    """Why setup will not touch this server, or None."""
    if (host.os_id, host.os_version) in SUPPORTED:
        return None
    wanted = " or ".join(SUPPORTED.values())
    return (
        f"{host.os_name} is not supported: setup knows {wanted} (their packages, paths and "
        "services); install one of those on the server"
    )


def size_warnings(host: Host) -> list[str]:
    out = []
    if host.ram_mb < MIN_RAM_MB:
        out.append(
            f"the server has {host.ram_mb} MB of RAM; the stack is sized for 512 MB "
            f"(less than {MIN_RAM_MB} MB usable will not hold both environments)"
        )
    if host.disk_free_gb < MIN_DISK_GB:
        out.append(
            f"{host.disk_free_gb:.1f} GB free on /; images, backups and logs need {MIN_DISK_GB} GB"
        )
    return out


# ----------------------------------------------------------------------------- packages


def parse_dpkg_installed(text: str) -> set[str]:
    """Packages `dpkg-query -W -f '${Package} ${Status}\\n'` reports as installed."""
    found = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 4 and words[-3:] == ["install", "ok", "installed"]:
            found.add(words[0].split(":")[0])
    return found


def missing_packages(wanted: Iterable[str], installed: set[str]) -> list[str]:
    return [p for p in wanted if p not in installed]


def parse_compose_version(text: str) -> str | None:
    """`docker compose version` -> "2.40.3"; None when Compose v2 is not there."""
    m = re.search(r"Docker Compose version v?(2\.\d+\.\d+)", text)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------- daemon.json

DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "userland-proxy": False,
    "live-restore": True,
}


def merge_daemon_json(current: str, wanted: Mapping = DAEMON_JSON) -> tuple[dict, list[str]]:
    """The existing daemon.json with our keys merged in; (merged, keys that changed).

    Keys of the existing file are kept (a provider's `cgroup-parent`, a registry mirror);
    `log-opts` is merged key by key.
    """
    text = current.strip()
    try:
        data = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise StateError(
            f"/etc/docker/daemon.json is not valid JSON ({exc.msg} at line {exc.lineno}); "
            "fix it by hand (setup merges into it and never replaces it)"
        ) from None
    if not isinstance(data, dict):
        raise StateError("/etc/docker/daemon.json is not a JSON object; fix it by hand")
    merged = dict(data)
    changed = []
    for key, value in wanted.items():
        if isinstance(value, dict):
            inner = dict(merged.get(key) or {})
            for k, v in value.items():
                if inner.get(k) != v:
                    inner[k] = v
                    changed.append(f"{key}.{k}")
            merged[key] = inner
        elif merged.get(key) != value:
            merged[key] = value
            changed.append(key)
    return merged, changed


# ----------------------------------------------------------------------------- engine's Go runtime

# dockerd, containerd and the containerd-shim-runc-v2 beside each running container are Go
# programs; containerd starts the shims with its own environment (seen in their
# /proc/PID/environ in the 512 MB VPS), so one drop-in on containerd.service reaches them.
# GOGC=25 (default 100), measured in the 512 MB VPS: bench/vps_levers.py (engine and every
# container restarted in both states, two rounds) dockerd's PSS 49.1 -> 41.4 MiB, containerd's
# 21.7 -> 20.6, the shims' under 1 MiB in all (GOGC=50: dockerd 46.4 -> 44.3, nothing else);
# bench/vps_memory.py, two runs each on one server: the daemons' PSS 99-121 -> 84-107 MiB in
# every phase. The machine's figure, mostly page cache, moved inside its noise (+-10-30 MiB).
ENGINE_GOGC = "25"
ENGINE_GOGC_MEASURED = "dockerd 49.1 -> 41.4 MiB PSS, the daemons 99-121 -> 84-107"
ENGINE_UNITS = ("containerd", "docker")  # containerd first: dockerd reconnects to it
ENGINE_DROPIN = "50-aiia-memory.conf"


def engine_dropin_path(unit: str) -> str:
    return f"/etc/systemd/system/{unit}.service.d/{ENGINE_DROPIN}"


def engine_dropin(unit: str) -> str:
    """The drop-in `fab setup` writes for docker.service or containerd.service."""
    reach = " and the container shims it starts" if unit == "containerd" else ""
    return (
        f"# fab setup: the Go collector of {unit}{reach} runs at GOGC={ENGINE_GOGC} "
        f"(default 100), for the 512 MB server ({ENGINE_GOGC_MEASURED})\n"
        f"[Service]\nEnvironment=GOGC={ENGINE_GOGC}\n"
    )


def engine_changes(found: Mapping[str, str]) -> list[tuple[str, bool]]:
    """(unit, write its drop-in?) for each unit to restart, from the engine probe's sections:
    `<unit>-load` (systemctl show -p LoadState --value), `<unit>` (the drop-in's text) and
    `<unit>-gogc` (GOGC in its running process's environment; `-` when it does not run).

    A unit whose drop-in is right but whose process runs without its GOGC (a run cut short
    between the write and the restart) is restarted only. Without a containerd.service of its
    own (docker-ce before containerd.io), dockerd starts containerd as its child, with its
    own environment: docker.service's drop-in reaches it. Before Docker is installed (a dry
    run on a bare server), both are planned.
    """
    docker_known = found.get("docker-load", "").strip() == "loaded"
    out = []
    for unit in ENGINE_UNITS:
        if docker_known and found.get(f"{unit}-load", "").strip() != "loaded":
            continue
        if found.get(unit, "").strip() != engine_dropin(unit).strip():
            out.append((unit, True))
        elif found.get(f"{unit}-gogc", "-").strip() not in ("-", ENGINE_GOGC):
            out.append((unit, False))
    return out


# ----------------------------------------------------------------------------- memory

# Debian's unattended-upgrades.service is no upgrade: it is a python3 that stays resident
# only to hold a shutdown back while an upgrade runs. Measured inside the 512 MB VPS
# (bench/vps_levers.py, lever no-uu-shutdown-helper): its cgroup held 12.5 MiB at idle.
# The upgrades themselves still run daily from apt-daily-upgrade.timer.
UU_HELPER = "unattended-upgrades.service"
UPGRADE_TIMER = "apt-daily-upgrade.timer"


# ----------------------------------------------------------------------------- users, keys


@dataclass(frozen=True)
class User:
    exists: bool
    groups: frozenset[str]
    authorized_keys: str


def parse_user(s: Mapping[str, str]) -> User:
    exists = bool(s.get("passwd", "").strip())
    groups = frozenset(s.get("groups", "").split()) if exists else frozenset()
    return User(exists, groups, s.get("keys", ""))


def key_id(line: str) -> tuple[str, str] | None:
    """(type, base64 blob) of an authorized_keys line: what makes two lines the same key."""
    words = line.split()
    for i, word in enumerate(words):
        if word.startswith(("ssh-", "ecdsa-", "sk-")) and i + 1 < len(words):
            return word, words[i + 1]
    return None


def missing_keys(current: str, keys: Sequence[str]) -> list[str]:
    have = {key_id(line) for line in current.splitlines()}
    out, seen = [], set()
    for key in keys:
        kid = key_id(key)
        if kid is None:
            raise StateError(f"not an SSH public key: {key[:40]!r}")
        if kid not in have and kid not in seen:
            out.append(key.strip())
            seen.add(kid)
    return out


# ----------------------------------------------------------------------------- sshd

SSHD_DROPIN = "/etc/ssh/sshd_config.d/60-aiia.conf"
SSHD_SETTINGS = (
    ("PasswordAuthentication", "no"),
    ("KbdInteractiveAuthentication", "no"),
    ("PermitRootLogin", "prohibit-password"),
)


def sshd_dropin_text() -> str:
    lines = ["# fab setup: keys only (the deploy user's and root's); no passwords"]
    lines += [f"{k} {v}" for k, v in SSHD_SETTINGS]
    return "\n".join(lines) + "\n"


def parse_sshd_effective(text: str) -> dict[str, str]:
    """`sshd -T` output: lowercase keyword -> value."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), value.strip())
    return out


# `sshd -T` prints the older spelling of some values
SSHD_ALIASES = {"without-password": "prohibit-password"}


def sshd_differences(effective: Mapping[str, str]) -> list[str]:
    out = []
    for key, want in SSHD_SETTINGS:
        have = effective.get(key.lower(), "").lower()
        if SSHD_ALIASES.get(have, have) != want.lower():
            out.append(f"{key} {want}")
    return out


# ----------------------------------------------------------------------------- swap

SWAPFILE = "/swapfile"
SWAP_MB = 2048
SWAPPINESS = 10
SWAP_SYSCTL = "/etc/sysctl.d/60-aiia-swap.conf"
FSTAB_LINE = f"{SWAPFILE} none swap sw 0 0"
# filesystems a swap file cannot live on (the kernel answers EINVAL)
NO_SWAPFILE_FS = ("overlay", "tmpfs", "nfs", "nfs4", "fuse")


@dataclass(frozen=True)
class Swap:
    active: tuple[str, ...]
    fstab_has_line: bool
    root_fs: str
    swappiness: int | None
    sysctl_file: bool


def parse_swap(s: Mapping[str, str]) -> Swap:
    active = tuple(line.split()[0] for line in s.get("swaps", "").splitlines()[1:] if line.split())
    fstab = any(
        line.split()[:3] == [SWAPFILE, "none", "swap"] for line in s.get("fstab", "").splitlines()
    )
    sw = s.get("swappiness", "").strip()
    return Swap(active, fstab, s.get("rootfs", "").strip(), int(sw) if sw.isdigit() else None,
                s.get("sysctl", "").strip() == "yes")  # fmt: skip


def swap_plan(swap: Swap) -> tuple[list[str], list[str]]:
    """(changes, warnings) for the guide's 2 GB swap file and swappiness 10."""
    if swap.active:
        changes = []
        if SWAPFILE in swap.active and not swap.fstab_has_line:
            changes.append(f"add {SWAPFILE} to /etc/fstab")
        if swap.swappiness != SWAPPINESS or not swap.sysctl_file:
            changes.append(f"vm.swappiness={SWAPPINESS} ({SWAP_SYSCTL})")
        return changes, []
    if swap.root_fs in NO_SWAPFILE_FS:
        return [], [
            f"no swap: a swap file cannot be enabled on this server's root filesystem "
            f"({swap.root_fs}, as in a container); the stack runs without its safety net, "
            "so watch memory (fab monitor) or give the machine swap from its host"
        ]
    return [f"a {SWAP_MB // 1024} GB swap file at {SWAPFILE}, swappiness {SWAPPINESS}"], []


# ----------------------------------------------------------------------------- firewall

FIREWALL_FILE = "/etc/aiia/firewall.nft"
FIREWALL_UNIT = "aiia-firewall.service"
OPEN_PORTS = (22, 80, 443)


def firewall_rules(ports: Sequence[int] = OPEN_PORTS) -> str:
    """An nftables table of our own: Docker's iptables rules are left alone.

    Only the input hook is filtered: published ports reach containers through
    forwarding (Docker's DNAT and FORWARD chains), so Docker keeps working and
    ip_forward stays 1.
    """
    allowed = ", ".join(str(p) for p in ports)
    return (
        "# fab setup: default-deny inbound except SSH, HTTP and HTTPS\n"
        "table inet aiia_filter\n"
        "delete table inet aiia_filter\n"
        "table inet aiia_filter {\n"
        "  chain input {\n"
        "    type filter hook input priority 0; policy drop;\n"
        "    iif lo accept\n"
        "    ct state established,related accept\n"
        "    ct state invalid drop\n"
        "    meta l4proto { icmp, ipv6-icmp } accept\n"
        f"    tcp dport {{ {allowed} }} accept\n"
        "  }\n"
        "}\n"
    )


def firewall_unit() -> str:
    return (
        "[Unit]\n"
        "Description=aiia firewall: default-deny inbound except 22, 80, 443 (fab setup)\n"
        "Before=network-pre.target docker.service\n"
        "Wants=network-pre.target\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/usr/sbin/nft -f {FIREWALL_FILE}\n"
        "ExecStop=/usr/sbin/nft delete table inet aiia_filter\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


# ----------------------------------------------------------------------------- cron


@dataclass(frozen=True)
class CronJob:
    """One line of the deploy user's crontab, recognised by its trailing `# aiia:<id>`."""

    id: str
    schedule: str
    command: Sequence[str]
    # the job's former commands: a line running one of them is replaced too
    replaces: Sequence[Sequence[str]] = ()

    @property
    def mark(self) -> str:
        return f"# aiia:{self.id}"

    def line(self) -> str:
        return f"{self.schedule} {shlex.join(self.command)} {self.mark}"


def merge_crontab(current: str, jobs: Sequence[CronJob]) -> tuple[str, list[str]]:
    """The crontab with each job's line exactly once; (text, ids added or changed).

    A line of ours is found by its mark, or (lines made by hand or by `fab install-cron`)
    by the same command: it is replaced, never doubled. Other lines are kept as they are.
    """
    lines = current.splitlines()
    changed = []
    for job in jobs:
        want = job.line()
        cmds = {shlex.join(job.command), *(shlex.join(c) for c in job.replaces)}
        hits = [
            i
            for i, line in enumerate(lines)
            if line.rstrip().endswith(job.mark)
            or (not line.lstrip().startswith("#") and _cron_command(line) in cmds)
        ]
        if len(hits) == 1:
            if lines[hits[0]] != want:
                lines[hits[0]] = want
                changed.append(job.id)
            continue
        for i in reversed(hits):
            del lines[i]
        lines.append(want)
        changed.append(job.id)
    text = "\n".join(lines) + "\n" if lines else ""
    return text, changed


def _cron_command(line: str) -> str:
    words = line.split()
    if len(words) < 6:
        return ""
    rest = " ".join(words[5:])
    return rest.split(" # ")[0].strip()


# ----------------------------------------------------------------------------- compose


@dataclass(frozen=True)
class Container:
    service: str
    state: str
    health: str


def parse_compose_ps(text: str) -> list[Container]:
    """`docker compose ps --all --format json`: one JSON object per line (or one array)."""
    text = text.strip()
    if not text:
        return []
    try:
        rows = (
            json.loads(text)
            if text.startswith("[")
            else [json.loads(x) for x in text.splitlines() if x.strip()]
        )
    except json.JSONDecodeError as exc:
        raise StateError(f"docker compose ps printed no JSON: {text[:120]!r}") from exc
    return [Container(r.get("Service", ""), r.get("State", ""), r.get("Health", "")) for r in rows]


def not_running(containers: Sequence[Container], services: Iterable[str]) -> list[str]:
    by = {c.service: c for c in containers}
    return [s for s in services if s not in by or by[s].state != "running"]


def unhealthy(containers: Sequence[Container], services: Iterable[str]) -> list[str]:
    """Services that are not running and healthy (a service without a check: running)."""
    by = {c.service: c for c in containers}
    out = []
    for s in services:
        c = by.get(s)
        if c is None or c.state != "running" or c.health not in ("", "healthy"):
            out.append(s)
    return out


# ----------------------------------------------------------------------------- migrations


def parse_showmigrations(text: str) -> list[str]:
    """Unapplied migrations in `manage.py showmigrations --plan` output ("[ ]  app.0002_x")."""
    if "[X]" not in text and "[ ]" not in text:
        raise StateError(f"showmigrations printed no plan: {text[:120]!r}")
    return [line[3:].strip() for line in text.splitlines() if line.startswith("[ ]")]
