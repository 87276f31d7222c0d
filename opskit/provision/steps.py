"""`fab setup`'s ordered steps: each reads the server, plans (pure), applies only what is missing.

A step is three functions: `read` asks the server (one probe script, output in `## name`
sections), `plan` turns that into the list of changes and warnings (pure, tested on saved
output), `apply` makes exactly those changes. The engine (`run`) reads, plans and, unless
it is a dry run, applies, step after step; a second run finds nothing to change. A run
cut short anywhere (the SSH connection dropped) is completed by running it again: every
apply writes whole files or appends only what its plan found missing.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from opskit import age, appenv, certs
from opskit import environments as envs
from opskit.backup import drill
from opskit.commands import deploy as deploy_cmd
from opskit.provision import envfiles, state
from opskit.provision.cron import cron_jobs
from opskit.provision.state import CronJob, StateError
from opskit.runner import CommandFailed, Result, Runner

# the guide's checkouts, under the deploy user's home
PRODUCTION = envs.SERVERS["production"].path.replace("/home/ubuntu/", "/home/{user}/")
STAGING = envs.SERVERS["staging"].path.replace("/home/ubuntu/", "/home/{user}/")
BRANCHES = {name: envs.SERVERS[name].branch for name in envs.SERVER_NAMES}
EXAMPLES = {"production": "config/prod.env.example", "staging": "config/staging.env.example"}
PACKAGES = (
    "docker.io", "git", "cron", "unattended-upgrades", "systemd-timesyncd", "nftables",
    "ca-certificates", "curl",
)  # fmt: skip
COMPOSE_PLUGIN = "/usr/local/lib/docker/cli-plugins/docker-compose"
DOCKER_REPO = "https://download.docker.com/linux"
UP_TIMEOUT_S = 300
SERVICES = ("postgresql", "pgbouncer", "redis", "django_prod", "django_staging", "nginx")
APP_SERVICES = {name: envs.SERVERS[name].service for name in envs.SERVER_NAMES}
# app service -> the environment whose checkout's .env its rendered env file comes from
APP_ENV_SOURCES = {service: env for env, service in APP_SERVICES.items()}


class SetupError(RuntimeError):
    """A step could not do its work: what failed, and what to do."""


@dataclass(frozen=True)
class Options:
    user: str = "ubuntu"
    pubkeys: tuple[str, ...] = ()
    repo: str | None = None
    answers: dict = field(default_factory=dict)
    compose_from: str = "auto"  # auto | docker-repo | upload
    images_from: str | None = None  # a registry prefix to pull the stack's images from
    acme_server: str | None = None
    acme_ca: str | None = None  # PEM text of the ACME server's CA (a test CA)
    extra_jobs: tuple[CronJob, ...] = ()

    def path(self, env: str) -> str:
        return (PRODUCTION if env == "production" else STAGING).format(user=self.user)


@dataclass
class Plan:
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data: object = None


@dataclass
class Context:
    """What steps work with: the server (as root), the options, and the operator's side."""

    r: Runner
    opts: Options
    say: Callable[[str], None] = print
    # operator's side, given by the fab task
    upload: Callable[[str, str], None] | None = None  # local path -> remote path
    compose_binary: Callable[[str], str] | None = None  # server arch -> local plugin path
    bundle: Callable[[], str] | None = None  # a git bundle of main and staging (local path)
    origin_url: str | None = None
    new_login_works: Callable[[], bool] | None = None
    generated: list[str] = field(default_factory=list)
    host: state.Host | None = None
    notes: list[str] = field(default_factory=list)

    def sh(self, script: str, *args: str, stdin: str | None = None, timeout: float = 600) -> Result:
        return self.r.run(["sh", "-c", script, "sh", *args], stdin=stdin, timeout=timeout)

    def check(self, argv: Sequence[str], what: str = "", **kw) -> Result:
        return self.r.check(argv, what=what, **kw)

    def as_user(self, argv: Sequence[str], cwd: str | None = None) -> list[str]:
        """argv as the deploy user, in its home (root's working directory is not its to read)."""
        where = cwd or f"/home/{self.opts.user}"
        return ["runuser", "-u", self.opts.user, "--", "env", "-C", where, *argv]

    def compose(self, *args: str) -> list[str]:
        """docker compose in the production checkout, as the deploy user."""
        path = self.opts.path("production")
        return self.as_user(
            ["docker", "compose", "--project-directory", path, "-f", f"{path}/docker-compose.yml",
             *args], cwd=path,
        )  # fmt: skip


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    read: Callable[[Context], object]
    plan: Callable[[object, Options], Plan]
    apply: Callable[[Context, Plan], None]


# ============================================================================ host


def read_host(ctx: Context) -> state.Host:
    return state.parse_host(ctx.check(["sh", "-c", state.HOST_PROBE], "reading the server").stdout)


# ============================================================================ packages


def read_packages(ctx: Context) -> set[str]:
    fmt = "${Package} ${Status}\\n"
    res = ctx.r.run(["dpkg-query", "-W", "-f", fmt, *PACKAGES])
    return state.parse_dpkg_installed(res.stdout)


def plan_packages(installed: set[str], opts: Options) -> Plan:
    missing = state.missing_packages(PACKAGES, installed)
    return Plan([f"apt-get install {' '.join(missing)}"] if missing else [], data=missing)


def apply_packages(ctx: Context, plan: Plan) -> None:
    ctx.check(["apt-get", "update", "-q"], "apt-get update", timeout=600)
    ctx.check(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
               "--no-install-recommends", *plan.data], "apt-get install", timeout=1200)  # fmt: skip
    ctx.check(["systemctl", "enable", "--now", "docker"], "starting Docker")


# ============================================================================ compose


def read_compose(ctx: Context) -> str | None:
    return state.parse_compose_version(ctx.r.run(["docker", "compose", "version"]).stdout)


def plan_compose(version: str | None, opts: Options) -> Plan:
    if version:
        return Plan()
    return Plan([f"Compose v2 ({opts.compose_from})"])


def apply_compose(ctx: Context, plan: Plan) -> None:
    how = ctx.opts.compose_from
    if how == "auto":
        reach = ctx.r.run(["curl", "-fsS", "-o", "/dev/null", "--max-time", "10",
                           f"{DOCKER_REPO}/gpg"], timeout=30)  # fmt: skip
        how = "docker-repo" if reach.ok else "upload"
        if not reach.ok:
            ctx.say(f"    {DOCKER_REPO} is out of reach from the server: uploading the plugin")
    if how == "docker-repo":
        os_id = ctx.host.os_id if ctx.host else "debian"
        script = (
            "set -e; install -d -m 0755 /etc/apt/keyrings; "
            f'curl -fsSL "{DOCKER_REPO}/$1/gpg" -o /etc/apt/keyrings/docker.asc; '
            ". /etc/os-release; "
            'echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] '
            f'{DOCKER_REPO}/$1 $VERSION_CODENAME stable" > /etc/apt/sources.list.d/docker.list; '
            "apt-get update -q; DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            "docker-compose-plugin"
        )
        res = ctx.sh(script, os_id, timeout=900)
        if not res.ok:
            raise SetupError(f"Compose v2 from Docker's apt repository failed: {res.tail(5)}")
        ctx.notes.append("Compose v2: docker-compose-plugin from Docker's apt repository")
        ctx.say(f"    {ctx.notes[-1]}")
    else:
        if ctx.upload is None or ctx.compose_binary is None:
            raise SetupError("no Compose v2 plugin to upload from this machine")
        arch = ctx.host.arch if ctx.host else ""
        local = ctx.compose_binary(arch)
        tmp = f"/tmp/aiia-compose-{secrets.token_hex(8)}"  # noqa: S108 - unique, removed below
        ctx.upload(local, tmp)
        ctx.check(["install", "-D", "-m", "0755", tmp, COMPOSE_PLUGIN], "installing Compose")
        ctx.r.run(["rm", "-f", tmp])
        ctx.notes.append(f"Compose v2: uploaded from this machine ({local}) to {COMPOSE_PLUGIN}")
        ctx.say(f"    {ctx.notes[-1]}")
    version = read_compose(ctx)
    if not version:
        raise SetupError("docker compose version still fails after installing Compose v2")
    ctx.say(f"    docker compose {version}")


# ============================================================================ daemon.json


def read_daemon_json(ctx: Context) -> str:
    return ctx.r.run(["cat", "/etc/docker/daemon.json"]).stdout


def plan_daemon_json(current: str, opts: Options) -> Plan:
    merged, changed = state.merge_daemon_json(current)
    return Plan([f"/etc/docker/daemon.json: {', '.join(changed)}"] if changed else [], data=merged)


def apply_daemon_json(ctx: Context, plan: Plan) -> None:
    text = json.dumps(plan.data, indent=2) + "\n"
    ctx.check(["sh", "-c", "set -e; install -d /etc/docker; "
               "[ ! -e /etc/docker/daemon.json ] || cp -n /etc/docker/daemon.json "
               "/etc/docker/daemon.json.before-setup; "
               "cat > /etc/docker/daemon.json.new; mv /etc/docker/daemon.json.new "
               "/etc/docker/daemon.json"], "writing daemon.json", stdin=text)  # fmt: skip
    ctx.check(["systemctl", "restart", "docker"], "restarting Docker", timeout=180)
    ctx.check(["sh", "-c", "for i in $(seq 60); do docker info >/dev/null 2>&1 && exit 0; "
               "sleep 1; done; exit 1"], "waiting for Docker", timeout=90)  # fmt: skip


# ============================================================================ engine's Go runtime


def _gogc_script(unit: str) -> str:
    """Shell: GOGC in the environment of `unit`'s main process ("" when unset, "-" when it
    does not run). `unit` may be "$1"."""
    return (
        f'pid=$(systemctl show -p MainPID --value "{unit}.service"); '
        'if [ "${pid:-0}" = 0 ]; then echo -; else '
        "tr '\\0' '\\n' < /proc/$pid/environ | sed -n 's/^GOGC=//p'; fi"
    )


def read_engine_go(ctx: Context) -> dict[str, str]:
    parts = {}
    for unit in state.ENGINE_UNITS:
        path = state.engine_dropin_path(unit)
        parts[f"{unit}-load"] = f"systemctl show -p LoadState --value {unit}.service"
        parts[unit] = f"[ ! -e {path} ] || cat {path}"
        parts[f"{unit}-gogc"] = _gogc_script(unit)
    return state.sections(ctx.r.run(["sh", "-c", state.probe_script(parts)]).stdout)


def plan_engine_go(found: dict[str, str], opts: Options) -> Plan:
    changes = []
    planned = state.engine_changes(found)
    for unit, write in planned:
        path = state.engine_dropin_path(unit)
        if write:
            changes.append(f"{path}: GOGC={state.ENGINE_GOGC}, restart {unit}")
        else:
            got = found.get(f"{unit}-gogc", "").strip() or "(unset)"
            changes.append(f"restart {unit}: it runs with GOGC={got}, {path} says "
                           f"{state.ENGINE_GOGC}")  # fmt: skip
    return Plan(changes, data=planned)


def _engine_gogc(ctx: Context, unit: str) -> str:
    """GOGC in the environment of the unit's main process ("" when unset or not running)."""
    return ctx.r.run(["sh", "-c", _gogc_script("$1"), "sh", unit]).stdout.strip().strip("-")


def apply_engine_go(ctx: Context, plan: Plan) -> None:
    for unit, write in plan.data:
        if not write:
            continue
        path = state.engine_dropin_path(unit)
        ctx.check(["sh", "-c", 'set -e; install -d "${1%/*}"; cat > "$1.new"; mv "$1.new" "$1"',
                   "sh", path], f"writing {path}", stdin=state.engine_dropin(unit))  # fmt: skip
    ctx.check(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    for unit, _ in plan.data:  # containerd first: dockerd reconnects to it
        path = state.engine_dropin_path(unit)
        back = (
            f"see journalctl -u {unit} -n 50; to go back: rm {path} && "
            f"systemctl daemon-reload && systemctl restart {unit}"
        )
        res = ctx.r.run(["systemctl", "restart", unit], timeout=180)
        if not res.ok:
            raise SetupError(f"systemctl restart {unit} failed with {path}: {res.tail(3)}; {back}")
        if unit == "docker":
            wait = ctx.r.run(["sh", "-c", "for i in $(seq 60); do docker info >/dev/null 2>&1 "
                              "&& exit 0; sleep 1; done; exit 1"], timeout=90)  # fmt: skip
            if not wait.ok:
                raise SetupError(f"Docker does not answer after its restart with {path}; {back}")
        got = _engine_gogc(ctx, unit)
        if got != state.ENGINE_GOGC:
            raise SetupError(
                f"{unit} runs with GOGC={got or '(unset)'}, not {state.ENGINE_GOGC} as {path} "
                f"says: a later drop-in overrides it? (systemctl cat {unit}; "
                f"systemctl show -p Environment {unit})"
            )
    if "containerd" in [unit for unit, _ in plan.data]:
        ctx.say("    containers already running keep their shims' former GOGC until they are "
                "recreated")  # fmt: skip


# ============================================================================ memory


def read_memory(ctx: Context) -> dict[str, str]:
    probe = state.probe_script({
        "helper": f"systemctl is-enabled {state.UU_HELPER}",
        "active": f"systemctl is-active {state.UU_HELPER}",
        "timer": f"systemctl is-enabled {state.UPGRADE_TIMER}",
    })  # fmt: skip
    return state.sections(ctx.r.run(["sh", "-c", probe]).stdout)


def plan_memory(found: dict[str, str], opts: Options) -> Plan:
    changes, warnings = [], []
    if found.get("helper", "").strip() == "enabled" or found.get("active", "").strip() == "active":
        changes.append(f"disable {state.UU_HELPER} (the resident shutdown helper, 12.5 MiB)")
    if found.get("timer", "").strip() not in ("enabled", "static"):
        warnings.append(
            f"{state.UPGRADE_TIMER} is {found.get('timer', '').strip() or 'missing'}: security "
            f"updates do not install themselves (systemctl enable --now {state.UPGRADE_TIMER})"
        )
    return Plan(changes, warnings)


def apply_memory(ctx: Context, plan: Plan) -> None:
    ctx.check(["systemctl", "disable", "--now", state.UU_HELPER], f"disabling {state.UU_HELPER}")


# ============================================================================ deploy user


def read_user(ctx: Context) -> state.User:
    u = shlex.quote(ctx.opts.user)
    probe = state.probe_script({
        "passwd": f"getent passwd {u}",
        "groups": f"id -nG {u} 2>/dev/null",
        "keys": f"cat ~{u}/.ssh/authorized_keys 2>/dev/null",
    })  # fmt: skip
    return state.parse_user(state.sections(ctx.r.run(["sh", "-c", probe]).stdout))


def plan_user(user: state.User, opts: Options) -> Plan:
    changes = []
    if not user.exists:
        changes.append(f"create user {opts.user} (group docker)")
    elif "docker" not in user.groups:
        changes.append(f"add {opts.user} to group docker")
    keys = state.missing_keys(user.authorized_keys, opts.pubkeys)
    if keys:
        changes.append(f"{len(keys)} key(s) into ~{opts.user}/.ssh/authorized_keys")
    return Plan(changes, data=(user, keys))


def apply_user(ctx: Context, plan: Plan) -> None:
    user, keys = plan.data
    name = ctx.opts.user
    if not user.exists:
        ctx.check(["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "docker", name])
    elif "docker" not in user.groups:
        ctx.check(["usermod", "-aG", "docker", name])
    if keys:
        script = (
            'set -e; h=$(getent passwd "$1" | cut -d: -f6); '
            'install -d -m 700 -o "$1" -g "$1" "$h/.ssh"; '
            'cat >> "$h/.ssh/authorized_keys"; '
            'chown "$1:$1" "$h/.ssh/authorized_keys"; chmod 600 "$h/.ssh/authorized_keys"'
        )
        res = ctx.sh(script, name, stdin="\n".join(keys) + "\n")
        if not res.ok:
            raise SetupError(f"authorized_keys of {name}: {res.tail(3)}")


# ============================================================================ sshd


def read_sshd(ctx: Context) -> tuple[str, dict[str, str]]:
    dropin = ctx.r.run(["cat", state.SSHD_DROPIN]).stdout
    return dropin, state.parse_sshd_effective(ctx.r.run(["sshd", "-T"]).stdout)


def plan_sshd(current: tuple[str, dict[str, str]], opts: Options) -> Plan:
    dropin, effective = current
    if dropin == state.sshd_dropin_text() and not state.sshd_differences(effective):
        return Plan()
    diffs = state.sshd_differences(effective) or ["the drop-in file"]
    return Plan([f"{state.SSHD_DROPIN}: {', '.join(diffs)}"])


def apply_sshd(ctx: Context, plan: Plan) -> None:
    ctx.check(["sh", "-c", f"install -d /etc/ssh/sshd_config.d && cat > {state.SSHD_DROPIN}"],
              stdin=state.sshd_dropin_text())  # fmt: skip
    tested = ctx.r.run(["sshd", "-t"])
    if not tested.ok:
        ctx.r.run(["rm", "-f", state.SSHD_DROPIN])
        raise SetupError(f"sshd -t refused the drop-in (removed again): {tested.tail(3)}")
    # a reload keeps this session; a fresh login proves nobody is locked out
    ctx.check(["systemctl", "reload-or-restart", "ssh"], "reloading sshd")
    if ctx.new_login_works is not None and not _login_within(ctx.new_login_works, 10):
        ctx.r.run(["rm", "-f", state.SSHD_DROPIN])
        ctx.r.run(["systemctl", "reload-or-restart", "ssh"])
        raise SetupError(
            "a new SSH login failed after the sshd change: the drop-in was removed and sshd "
            "reloaded, as it was"
        )


def _login_within(login: Callable[[], bool], seconds: float) -> bool:
    """sshd re-executes itself on a reload: a login can fail for a moment after it."""
    deadline = time.monotonic() + seconds
    while True:
        if login():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


# ============================================================================ swap


def read_swap(ctx: Context) -> state.Swap:
    probe = state.probe_script({
        "swaps": "cat /proc/swaps",
        "fstab": "cat /etc/fstab",
        "rootfs": "findmnt -n -o FSTYPE /",
        "swappiness": "cat /proc/sys/vm/swappiness",
        "sysctl": f"test -f {state.SWAP_SYSCTL} && echo yes || echo no",
    })  # fmt: skip
    return state.parse_swap(state.sections(ctx.r.run(["sh", "-c", probe]).stdout))


def plan_swap(swap: state.Swap, opts: Options) -> Plan:
    changes, warnings = state.swap_plan(swap)
    return Plan(changes, warnings, data=swap)


def apply_swap(ctx: Context, plan: Plan) -> None:
    swap: state.Swap = plan.data
    if not swap.active:
        f = state.SWAPFILE
        made = ctx.sh(
            f"set -e; [ -e {f} ] || fallocate -l {state.SWAP_MB}M {f} || "
            f"dd if=/dev/zero of={f} bs=1M count={state.SWAP_MB} status=none; "
            f"chmod 600 {f}; mkswap {f} >/dev/null; swapon {f}",
            timeout=600,
        )
        if not made.ok:
            ctx.r.run(["sh", "-c", f"swapoff {f} 2>/dev/null; rm -f {f}"])
            raise SetupError(f"swap file: {made.tail(2)}")
    ctx.check(["sh", "-c", f"grep -qxF '{state.FSTAB_LINE}' /etc/fstab || "
               f"echo '{state.FSTAB_LINE}' >> /etc/fstab"])  # fmt: skip
    ctx.check(["sh", "-c", f"echo 'vm.swappiness={state.SWAPPINESS}' > {state.SWAP_SYSCTL} "
               f"&& sysctl -q -p {state.SWAP_SYSCTL}"])  # fmt: skip


# ============================================================================ firewall


def read_firewall(ctx: Context) -> dict[str, str]:
    probe = state.probe_script({
        "rules": f"cat {state.FIREWALL_FILE}",
        "unit": f"cat /etc/systemd/system/{state.FIREWALL_UNIT}",
        "enabled": f"systemctl is-enabled {state.FIREWALL_UNIT}",
        "table": "nft list table inet aiia_filter >/dev/null 2>&1 && echo present || echo absent",
        "forward": "cat /proc/sys/net/ipv4/ip_forward",
    })  # fmt: skip
    return state.sections(ctx.r.run(["sh", "-c", probe]).stdout)


def plan_firewall(s: dict[str, str], opts: Options) -> Plan:
    changes = []
    if s.get("rules", "") != state.firewall_rules().rstrip("\n"):
        changes.append(
            f"{state.FIREWALL_FILE}: inbound only {', '.join(map(str, state.OPEN_PORTS))}"
        )
    if s.get("unit", "") != state.firewall_unit().rstrip("\n"):
        changes.append(f"{state.FIREWALL_UNIT}")
    if s.get("enabled", "").strip() != "enabled" or s.get("table", "").strip() != "present":
        changes.append("load and enable the firewall")
    return Plan(changes)


def apply_firewall(ctx: Context, plan: Plan) -> None:
    ctx.check(["sh", "-c", f"install -d /etc/aiia && cat > {state.FIREWALL_FILE}"],
              stdin=state.firewall_rules())  # fmt: skip
    ctx.check(["sh", "-c", f"cat > /etc/systemd/system/{state.FIREWALL_UNIT}"],
              stdin=state.firewall_unit())  # fmt: skip
    ctx.check(["nft", "-c", "-f", state.FIREWALL_FILE], "nft -c (checking the rules)")
    ctx.check(["systemctl", "daemon-reload"])
    ctx.check(["systemctl", "enable", state.FIREWALL_UNIT], "enabling the firewall")
    ctx.check(["systemctl", "restart", state.FIREWALL_UNIT], "loading the firewall")
    fwd = ctx.r.run(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
    if fwd != "1":
        raise SetupError(f"net.ipv4.ip_forward is {fwd} after the firewall: Docker needs 1")


# ============================================================================ checkouts


def read_checkouts(ctx: Context) -> dict[str, str]:
    out = {}
    for env in BRANCHES:
        # as its owner: git refuses a repository of another user (safe.directory)
        res = ctx.r.run(ctx.as_user(["git", "-C", ctx.opts.path(env), "rev-parse",
                                     "--abbrev-ref", "HEAD"]))  # fmt: skip
        out[env] = res.stdout.strip() if res.ok else ""
    return out


def plan_checkouts(heads: dict[str, str], opts: Options) -> Plan:
    changes, warnings, missing = [], [], []
    for env, branch in BRANCHES.items():
        if not heads.get(env):
            missing.append(env)
            changes.append(f"clone {opts.path(env)} on {branch}")
        elif heads[env] not in (branch, "HEAD"):
            warnings.append(f"{opts.path(env)} is on {heads[env]}, not {branch}: left as it is")
    return Plan(changes, warnings, data=missing)


def apply_checkouts(ctx: Context, plan: Plan) -> None:
    source = ctx.opts.repo
    bundle = None
    if not source:
        if ctx.bundle is None or ctx.upload is None:
            raise SetupError("no --repo and no local clone to push from")
        local = ctx.bundle()
        bundle = f"/tmp/aiia-setup-{secrets.token_hex(8)}.bundle"  # noqa: S108 - unique, removed below
        ctx.upload(local, bundle)
        ctx.check(["chmod", "644", bundle])
        source = bundle
        ctx.notes.append("checkouts: pushed from this machine's clone (git bundle)")
    else:
        ctx.notes.append(f"checkouts: cloned from {source}")
    try:
        for env in plan.data:
            path = ctx.opts.path(env)
            parent = path.rsplit("/", 1)[0]
            ctx.check(["install", "-d", "-o", ctx.opts.user, "-g", ctx.opts.user, parent])
            tmp = f"{path}.partial"
            ctx.r.run(["rm", "-rf", tmp])
            cloned = ctx.r.run(ctx.as_user(["git", "clone", "-q", "-b", BRANCHES[env], source,
                                            tmp]), timeout=900)  # fmt: skip
            if not cloned.ok:
                raise SetupError(f"git clone of {BRANCHES[env]} failed: {cloned.tail(3)}")
            if bundle and ctx.origin_url:
                ctx.r.run(ctx.as_user(["git", "-C", tmp, "remote", "set-url", "origin",
                                       ctx.origin_url]))  # fmt: skip
            # whole or nothing: an interrupted clone never looks like a checkout
            ctx.check(["mv", "-T", tmp, path])
    finally:
        if bundle:
            ctx.r.run(["rm", "-f", bundle])


# ============================================================================ env files


def read_env_files(ctx: Context) -> dict[str, tuple[str | None, str]]:
    out = {}
    for env in BRANCHES:
        path = f"{ctx.opts.path(env)}/.env"
        res = ctx.r.run(["sh", "-c", 'stat -c %a "$1" && cat "$1"', "sh", path])
        if res.ok:
            mode, _, text = res.stdout.partition("\n")
            out[env] = (text, mode.strip())
        else:
            out[env] = (None, "")
    link = f"{ctx.opts.path('production')}/.env.staging"
    out["link"] = (ctx.r.run(["readlink", link]).stdout.strip(), "")
    return out


def plan_env_files(files: dict, opts: Options) -> Plan:
    changes, problems = [], []
    for env in BRANCHES:
        text, mode = files[env]
        path = f"{opts.path(env)}/.env"
        if text is None:
            changes.append(f"write {path} (fresh secrets, mode 0600)")
            continue
        problems += envfiles.problems(text, env, path)
        if mode != "600":
            changes.append(f"chmod 600 {path} (mode {mode})")
    want_link = f"{opts.path('staging')}/.env"
    if files["link"][0] != want_link:
        changes.append(f"link {opts.path('production')}/.env.staging -> {want_link}")
    if problems:
        raise SetupError(
            "the existing env file(s) have problems; setup never overwrites them, so fix "
            "each by hand (then run setup again):\n  " + "\n  ".join(problems)
        )
    return Plan(changes, data=files)


def apply_env_files(ctx: Context, plan: Plan) -> None:
    files = plan.data
    for env in BRANCHES:
        text, mode = files[env]
        path = f"{ctx.opts.path(env)}/.env"
        if text is None:
            example = ctx.check(["cat", f"{ctx.opts.path(env)}/{EXAMPLES[env]}"]).stdout
            need = envfiles.missing_answers(example, ctx.opts.answers)
            if need:
                raise SetupError("an answer is missing:\n  " + "\n  ".join(need))
            body, made = envfiles.fill(example, ctx.opts.answers)
            ctx.generated.extend(made)
            # noclobber: a file that appeared meanwhile is never overwritten
            res = ctx.r.run(ctx.as_user(["sh", "-c", 'umask 077; set -C; cat > "$1"', "sh", path]),
                            stdin=body)  # fmt: skip
            if not res.ok:
                raise SetupError(f"writing {path} failed: {res.tail(2)}")
            ctx.say(f"    {path}: {len(made)} fresh secrets, mode 0600")
        elif mode != "600":
            ctx.check(["chmod", "600", path])
    link = f"{ctx.opts.path('production')}/.env.staging"
    want = f"{ctx.opts.path('staging')}/.env"
    if files["link"][0] != want:
        ctx.check(ctx.as_user(["ln", "-sfn", want, link]))


# ============================================================================ app env files


def read_app_env(ctx: Context) -> dict[str, tuple[str | None, str | None]]:
    """Each app service: its env file's text and its rendered file's (None: missing)."""
    out = {}
    for service, env in APP_ENV_SOURCES.items():
        source = ctx.r.run(["cat", f"{ctx.opts.path(env)}/.env"])
        have = ctx.r.run(["cat", _app_env_path(ctx.opts, service)])
        out[service] = (source.stdout if source.ok else None, have.stdout if have.ok else None)
    return out


def plan_app_env(files: dict, opts: Options) -> Plan:
    """Render what is missing or older than its env file (opskit/appenv.py)."""
    todo = []
    for service, (source, have) in files.items():
        path = f"{opts.path(APP_ENV_SOURCES[service])}/.env"
        try:
            if source is None or have != appenv.render(appenv.parse(source), source=path):
                todo.append(service)
        except appenv.AppEnvError as exc:
            raise SetupError(f"{exc} (then run setup again)") from None
    changes = [
        f"render {_app_env_path(opts, s)}: only the keys Django reads, mode 0600" for s in todo
    ]
    return Plan(changes, data=todo)


def apply_app_env(ctx: Context, plan: Plan) -> None:
    for service in plan.data:
        source = f"{ctx.opts.path(APP_ENV_SOURCES[service])}/.env"
        text = appenv.render(appenv.parse(ctx.check(["cat", source]).stdout), source=source)
        path = _app_env_path(ctx.opts, service)
        res = ctx.r.run(ctx.as_user(deploy_cmd.write_private(path)), stdin=text)
        if not res.ok:
            raise SetupError(f"writing {path} failed: {res.tail(2)}")


def _app_env_path(opts: Options, service: str) -> str:
    # compose's project directory is the production checkout (docker-compose.yml there)
    return f"{opts.path('production')}/{appenv.rendered_path(service)}"


# ============================================================================ images


def read_images(ctx: Context) -> tuple[list[str], list[str]]:
    listed = ctx.r.run(ctx.compose("--profile", "tools", "config", "--images"))
    if not listed.ok:
        raise SetupError(f"docker compose config failed: {listed.tail(5)}")
    wanted = sorted({_full(i) for i in listed.stdout.split()})
    have = []
    for image in wanted:
        if ctx.r.run(["docker", "image", "inspect", "--format", "{{.Id}}", image]).ok:
            have.append(image)
    return wanted, have


def _full(image: str) -> str:
    return image if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest"


def plan_images(found: tuple[list[str], list[str]], opts: Options) -> Plan:
    wanted, have = found
    missing = [i for i in wanted if i not in have]
    if not missing:
        return Plan()
    how = f"pull from {opts.images_from}" if opts.images_from else "build on the server"
    return Plan([f"{how}: {' '.join(missing)}"], data=missing)


def apply_images(ctx: Context, plan: Plan) -> None:
    prefix = ctx.opts.images_from
    if prefix:
        for image in plan.data:
            remote = f"{prefix.rstrip('/')}/{image}"
            pulled = ctx.r.run(["docker", "pull", "-q", remote], timeout=1800)
            if not pulled.ok:
                raise SetupError(f"docker pull {remote} failed: {pulled.tail(3)}")
            ctx.check(["docker", "tag", remote, image])
            ctx.r.run(["docker", "image", "rm", remote])
        ctx.notes.append(f"images: pulled from {prefix}")
        return
    for args in (("build",), ("build", "backup")):
        res = ctx.r.run(ctx.compose("--profile", "tools", *args), timeout=3600)
        if not res.ok:
            raise SetupError(f"docker compose {' '.join(args)} failed: {res.tail(8)}")
    ctx.notes.append("images: built on the server")


# ============================================================================ first up


def read_stack(ctx: Context) -> list[state.Container]:
    res = ctx.r.run(ctx.compose("ps", "--all", "--format", "json"))
    return state.parse_compose_ps(res.stdout) if res.ok else []


def plan_stack(containers: list[state.Container], opts: Options) -> Plan:
    down = state.not_running(containers, SERVICES)
    sick = [s for s in state.unhealthy(containers, SERVICES) if s not in down]
    # `up` starts what is not running; a running container that is not (yet) healthy is
    # reported, not restarted: another `up` would not make it healthy
    warnings = [f"{', '.join(sick)} running but not healthy (docker compose ps)"] if sick else []
    return Plan([f"docker compose up -d --wait ({', '.join(down)})"] if down else [], warnings)


def apply_stack(ctx: Context, plan: Plan) -> None:
    res = ctx.r.run(ctx.compose("up", "-d", "--wait", "--wait-timeout", str(UP_TIMEOUT_S)),
                    timeout=UP_TIMEOUT_S + 120)  # fmt: skip
    if not res.ok:
        logs = ctx.r.run(ctx.compose("logs", "--no-color", "--tail", "20")).stdout
        raise SetupError(f"the stack did not become healthy: {res.tail(5)}\n{logs[-3000:]}")


# ============================================================================ migrations


def _manage(ctx: Context, env: str, *args: str) -> list[str]:
    return ctx.compose("run", "--rm", "--no-deps", "-T", APP_SERVICES[env], "python",
                       "manage.py", *args)  # fmt: skip


def read_migrations(ctx: Context) -> dict[str, list[str]]:
    """Unapplied migrations per environment, from `showmigrations --plan`."""
    out = {}
    for env in APP_SERVICES:
        res = ctx.r.run(_manage(ctx, env, "showmigrations", "--plan"), timeout=300)
        if not res.ok:
            raise SetupError(f"showmigrations for {env} failed (exit {res.exited}): {res.tail(5)}")
        out[env] = state.parse_showmigrations(res.stdout)
    return out


def plan_migrations(pending: dict[str, list[str]], opts: Options) -> Plan:
    todo = [env for env, names in pending.items() if names]
    return Plan([f"migrate {env} ({len(pending[env])} pending)" for env in todo], data=todo)


def apply_migrations(ctx: Context, plan: Plan) -> None:
    for env in plan.data:
        res = ctx.r.run(_manage(ctx, env, "migrate", "--noinput"), timeout=900)
        if not res.ok:
            raise SetupError(f"migrate {env} failed: {res.tail(8)}")


# ============================================================================ certificates


def read_certs(ctx: Context) -> tuple[certs.CertInfo | None, certs.CertInfo | None]:
    res = ctx.r.run(certs.read_cert())
    try:
        file = certs.parse_cert(res.stdout) if res.ok else None
    except certs.CertError:
        file = None
    served = None
    sres = ctx.r.run(certs.served_cert(certs.CERT_NAME), timeout=30)
    try:
        served = certs.parse_cert(sres.stdout)
    except certs.CertError:
        served = None
    return file, served


def plan_certs(found, opts: Options) -> Plan:
    file, served = found
    if file is None or not set(certs.DOMAINS) <= set(file.names):
        return Plan([f"certificate for {', '.join(certs.DOMAINS)} (webroot), nginx restarted"],
                    data="issue")  # fmt: skip
    if served is None or served.serial != file.serial:
        return Plan(["restart nginx to serve the certificate"], data="restart")
    return Plan()


def apply_certs(ctx: Context, plan: Plan) -> None:
    if plan.data == "issue":
        email = ctx.opts.answers.get("LETSENCRYPT_EMAIL") or None
        argv = certs.certonly(email=email, server=ctx.opts.acme_server)
        env_flags: list[str] = []
        if ctx.opts.acme_ca:
            ctx.check(["docker", "exec", "-i", certs.CONTAINER, "sh", "-c",
                       "cat > /tmp/acme-ca.pem"], stdin=ctx.opts.acme_ca)  # fmt: skip
            env_flags = ["-e", "REQUESTS_CA_BUNDLE=/tmp/acme-ca.pem"]
        res = ctx.r.run(["docker", "exec", *env_flags, certs.CONTAINER, *argv], timeout=600)
        if not res.ok:
            raise SetupError(
                f"certbot certonly failed: {res.tail(8)}\nThe self-signed stand-in still "
                "serves; check that the four names point at this server and port 80 is open"
            )
    res = ctx.r.run(["docker", "restart", certs.CONTAINER], timeout=120)
    if not res.ok:
        raise SetupError(f"docker restart aiia_nginx failed: {res.tail(3)}")
    ctx.check(["sh", "-c", "for i in $(seq 60); do [ \"$(docker inspect -f "
               "'{{.State.Health.Status}}' aiia_nginx)\" = healthy ] && exit 0; sleep 1; done; "
               "exit 1"], "waiting for nginx to be healthy", timeout=90)  # fmt: skip


# ============================================================================ drill key


def read_drill_key(ctx: Context) -> tuple[str, str, str]:
    """(present|absent, recipient, path) of the deploy user's restore-drill key."""
    res = ctx.r.run(ctx.as_user(drill.key_argv(dry_run=True)), stdin="")
    if res.ok:
        try:
            return drill.parse_key(res.stdout)
        except ValueError:
            pass
    raise SetupError(f"the restore drill's key of {ctx.opts.user}: {res.tail(2)}")


def plan_drill_key(found: tuple[str, str, str], opts: Options) -> Plan:
    kind, _recipient, where = found
    if kind == "present":
        return Plan()
    return Plan([f"the restore drill's key {where} (0600, as {opts.user}), its public key "
                 "beside it"])  # fmt: skip


def apply_drill_key(ctx: Context, plan: Plan) -> None:
    # made here, in memory, and sent on stdin (never in argv); an existing key is kept
    secret, public = age.generate_identity()
    res = ctx.check(ctx.as_user(drill.key_argv()), "making the restore drill's key",
                    stdin=f"{secret}\n{public}\n")  # fmt: skip
    _kind, recipient, where = drill.parse_key(res.stdout)
    ctx.notes.append(f"restore drill: its key is {where}; from the night's backup on, each "
                     f"database dump is encrypted to {recipient} as well")  # fmt: skip


# ============================================================================ cron


def _jobs(opts: Options) -> list[CronJob]:
    return [*cron_jobs(opts.path("production"), opts.path("staging")), *opts.extra_jobs]


def read_cron(ctx: Context) -> str:
    res = ctx.r.run(["crontab", "-l", "-u", ctx.opts.user])
    if not res.ok and "no crontab" not in res.stderr:
        raise SetupError(f"crontab -l -u {ctx.opts.user} failed: {res.tail(2)}")
    return res.stdout if res.ok else ""


def plan_cron(current: str, opts: Options) -> Plan:
    text, changed = state.merge_crontab(current, _jobs(opts))
    return Plan([f"crontab of {opts.user}: {', '.join(changed)}"] if changed else [], data=text)


def apply_cron(ctx: Context, plan: Plan) -> None:
    ctx.check(["crontab", "-u", ctx.opts.user, "-"], "installing the crontab", stdin=plan.data)


# ============================================================================ status collector


def _status_script(opts: Options) -> str:
    return f"{opts.path('production')}/scripts/status.sh"


def read_status(ctx: Context) -> bool:
    """Whether the collector's container runs with the checkout's settings
    (`scripts/status.sh start --check`: 0 yes, 3 no)."""
    res = ctx.r.run(ctx.as_user(["bash", _status_script(ctx.opts), "start", "--check"]))
    if res.exited not in (0, 3):
        raise SetupError(f"scripts/status.sh start --check failed: {res.tail(2)}")
    return res.exited == 0


def plan_status(running: bool, opts: Options) -> Plan:
    if running:
        return Plan()
    return Plan([f"the status collector's container, every minute (scripts/status.sh start, "
                 f"as {opts.user})"])  # fmt: skip


def apply_status(ctx: Context, plan: Plan) -> None:
    ctx.check(ctx.as_user(["bash", _status_script(ctx.opts), "start"]),
              "starting the status collector", timeout=120)  # fmt: skip


# ============================================================================ the table


def _step(name, title, read, plan, apply) -> Step:
    return Step(name, title, read, plan, apply)


STEPS: tuple[Step, ...] = (
    _step("packages", "Debian packages", read_packages, plan_packages, apply_packages),
    _step("compose", "Compose v2", read_compose, plan_compose, apply_compose),
    _step("daemon-json", "/etc/docker/daemon.json", read_daemon_json, plan_daemon_json,
          apply_daemon_json),
    _step("engine-go", "the engine's Go runtime", read_engine_go, plan_engine_go,
          apply_engine_go),
    _step("memory", "memory: no idle helpers", read_memory, plan_memory, apply_memory),
    _step("user", "deploy user", read_user, plan_user, apply_user),
    _step("sshd", "sshd: keys only", read_sshd, plan_sshd, apply_sshd),
    _step("swap", "swap", read_swap, plan_swap, apply_swap),
    _step("firewall", "firewall", read_firewall, plan_firewall, apply_firewall),
    _step("checkouts", "checkouts", read_checkouts, plan_checkouts, apply_checkouts),
    _step("env-files", "env files", read_env_files, plan_env_files, apply_env_files),
    _step("app-env", "the app's env files", read_app_env, plan_app_env, apply_app_env),
    _step("images", "images", read_images, plan_images, apply_images),
    _step("up", "first up, health-gated", read_stack, plan_stack, apply_stack),
    _step("migrations", "migrations", read_migrations, plan_migrations, apply_migrations),
    _step("certificates", "certificates", read_certs, plan_certs, apply_certs),
    _step("drill-key", "the restore drill's key", read_drill_key, plan_drill_key,
          apply_drill_key),
    _step("cron", "cron", read_cron, plan_cron, apply_cron),
    _step("status", "status collector", read_status, plan_status, apply_status),
)  # fmt: skip
STEP_NAMES = tuple(s.name for s in STEPS)


@dataclass
class Report:
    changes: int = 0
    warnings: list[str] = field(default_factory=list)
    planned: list[tuple[str, list[str]]] = field(default_factory=list)


def run(ctx: Context, *, dry_run: bool = False, steps: Sequence[Step] = STEPS) -> Report:
    """Every step in order; raises SetupError naming the step that failed."""
    report = Report()
    ctx.host = read_host(ctx)
    refused = state.refusal(ctx.host)
    if refused:
        raise SetupError(refused)
    ctx.say(f"server: {ctx.host.os_name}, {ctx.host.ram_mb} MB RAM, "
            f"{ctx.host.disk_free_gb:.1f} GB free on /, {ctx.host.arch}")  # fmt: skip
    for w in state.size_warnings(ctx.host):
        report.warnings.append(w)
        ctx.say(f"  warning: {w}")
    total = len(steps)
    for n, step in enumerate(steps, start=1):
        started = time.monotonic()
        ctx.say(f"[{n}/{total}] {step.title} ...")
        try:
            try:
                plan = step.plan(step.read(ctx), ctx.opts)
            except (CommandFailed, StateError, SetupError, certs.CertError) as exc:
                if not (dry_run and report.changes):
                    raise
                # what this step would find depends on changes a dry run does not make
                ctx.say(f"    not checked: depends on the changes above ({str(exc)[:80]})")
                continue
            for w in plan.warnings:
                report.warnings.append(w)
                ctx.say(f"    warning: {w}")
            if plan.changes:
                report.planned.append((step.name, plan.changes))
                for change in plan.changes:
                    ctx.say(f"    {'would change' if dry_run else 'change'}: {change}")
                if not dry_run:
                    step.apply(ctx, plan)
                report.changes += len(plan.changes)
        except (CommandFailed, StateError, envfiles.AnswersError, certs.CertError) as exc:
            raise SetupError(f"step {step.name}: {exc}") from None
        except SetupError as exc:
            raise SetupError(f"step {step.name}: {exc}") from None
        done = "nothing to do" if not plan.changes else ("planned" if dry_run else "done")
        ctx.say(f"    {done} ({time.monotonic() - started:.1f} s)")
    return report
