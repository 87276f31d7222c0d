"""fab setup's checks: parsers on output saved from a real VPS, plans as pure functions."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from opskit import age
from opskit.provision import envfiles, state, steps
from opskit.provision.cron import cron_jobs
from opskit.remote import backup as backup_tasks
from opskit.runner import LocalRunner, Result, Runner

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "provision"
PROD = "/home/ubuntu/main/ai-ia-backend"
STAGING = "/home/ubuntu/staging/ai-ia-backend"
ROOT = Path(__file__).resolve().parents[2]


def fixture(name: str) -> str:
    return (FIX / name).read_text()


# ----------------------------------------------------------------------------- host


def test_host_of_the_vps_reads_the_cgroup_limit_not_the_kernel_total():
    host = state.parse_host(fixture("host-vps-debian12.txt"))
    assert (host.os_id, host.os_version) == ("debian", "12")
    # /proc/meminfo says the machine's 24 GB; the VPS's cgroup holds it to 512 MiB
    assert host.ram_mb == 512
    assert host.disk_free_gb > 1
    assert host.arch == "x86_64"
    assert state.refusal(host) is None
    assert state.size_warnings(host) == []


@pytest.mark.parametrize(
    "release, refused",
    [("os-release-ubuntu-24.04.txt", False), ("os-release-ubuntu-22.04.txt", True)],
    ids=["ubuntu-24.04-accepted", "ubuntu-22.04-refused"],
)
def test_only_debian_12_and_ubuntu_24_04_are_accepted(release, refused):
    os_id, version, name = state.parse_os_release(fixture(release))
    host = state.Host(os_id, version, name, 2**30, 20 * 10**9, "x86_64")
    reason = state.refusal(host)
    if refused:
        assert reason is not None
        assert "Ubuntu 22.04.4 LTS is not supported" in reason
        assert "Debian 12 or Ubuntu 24.04" in reason
    else:
        assert reason is None


def test_a_small_server_is_warned_with_its_numbers():
    host = state.Host("debian", "12", "Debian 12", 256 * 2**20, 4 * 10**9, "x86_64")
    ram, disk = state.size_warnings(host)
    assert "256 MB of RAM" in ram and "512 MB" in ram
    assert "4.0 GB free" in disk and "10 GB" in disk


def test_cgroup_limits_take_the_smallest_and_ignore_unlimited():
    assert state.parse_cgroup_limit("9223372036854771712\n536870912\nmax\n") == 536870912
    assert state.parse_cgroup_limit("max\n9223372036854771712\n") is None
    assert state.parse_cgroup_limit("") is None


def test_sections_split_a_probe_output():
    text = "## a\none\ntwo\n## b\n\n## c\nthree"
    assert state.sections(text) == {"a": "one\ntwo", "b": "", "c": "three"}
    assert "echo '## os'; { cat /etc/os-release; } 2>&1; " in state.probe_script(
        {"os": "cat /etc/os-release"}
    )


# ----------------------------------------------------------------------------- packages


def test_installed_packages_from_dpkg_query():
    installed = state.parse_dpkg_installed(fixture("dpkg-query.txt"))
    assert state.missing_packages(steps.PACKAGES, installed) == []
    partial = "git install ok installed\ndocker.io deinstall ok config-files\n"
    assert state.missing_packages(
        ["git", "docker.io", "cron"], state.parse_dpkg_installed(partial)
    ) == [
        "docker.io",
        "cron",
    ]


def test_compose_version():
    assert state.parse_compose_version(fixture("compose-version.txt")) == "2.40.3"
    assert state.parse_compose_version("docker: 'compose' is not a docker command.") is None
    assert state.parse_compose_version("docker-compose version 1.29.2, build unknown") is None


# ----------------------------------------------------------------------------- daemon.json


def test_daemon_json_merges_into_the_vendor_file_and_then_changes_nothing():
    vendor = '{"cgroup-parent": "/docker/abc", "log-opts": {"labels": "x"}}'
    merged, changed = state.merge_daemon_json(vendor)
    assert merged["cgroup-parent"] == "/docker/abc"
    assert merged["log-opts"] == {"labels": "x", "max-size": "10m", "max-file": "3"}
    assert set(changed) == {"log-driver", "log-opts.max-size", "log-opts.max-file",
                            "userland-proxy", "live-restore"}  # fmt: skip
    assert state.merge_daemon_json(json.dumps(merged)) == (merged, [])
    # the file as setup left it on the VPS
    assert state.merge_daemon_json(fixture("daemon.json"))[1] == []


def test_daemon_json_that_is_not_json_is_refused_not_replaced():
    with pytest.raises(state.StateError, match="not valid JSON.*never replaces"):
        state.merge_daemon_json("{nope")
    assert state.merge_daemon_json("")[0]["live-restore"] is True


# ----------------------------------------------------------------------------- engine's Go runtime


class EngineHost(Runner):
    """A server's systemd as far as the engine-go step sees it: drop-in files, which units
    exist, and the GOGC each unit's process started with (read from its drop-in at restart)."""

    where = "engine host"

    def __init__(self, units=("containerd", "docker"), files=None, fail_restart=(), env=None):
        self.units = set(units)
        self.files: dict[str, str] = dict(files or {})
        self.fail_restart = set(fail_restart)
        self.env: dict[str, str] = dict(env or {})
        self.restarts: list[str] = []

    def run(self, argv, *, stdin=None, timeout=None):
        argv = tuple(argv)
        if argv == ("systemctl", "daemon-reload"):
            return Result(argv, 0)
        if argv[:2] == ("systemctl", "restart"):
            unit = argv[2]
            if unit in self.fail_restart:
                return Result(argv, 1, "", f"Job for {unit}.service failed.\n")
            self.restarts.append(unit)
            text = self.files.get(state.engine_dropin_path(unit), "")
            self.env[unit] = text.split("GOGC=")[-1].strip() if "GOGC=" in text else ""
            return Result(argv, 0)
        assert argv[:2] == ("sh", "-c"), argv
        script = argv[2]
        if script == state.HOST_PROBE:
            return Result(argv, 0, fixture("host-vps-debian12.txt"))
        if script.startswith("echo '## "):  # the probe
            out = []
            for unit in state.ENGINE_UNITS:
                load = "loaded" if unit in self.units else "not-found"
                out += [f"## {unit}-load", load, f"## {unit}"]
                out += [self.files.get(state.engine_dropin_path(unit), "")]
                running = unit in self.units and unit in self.env
                out += [f"## {unit}-gogc", self.env[unit] if running else "-"]
            return Result(argv, 0, "\n".join(out) + "\n")
        if "install -d" in script:  # writing a drop-in
            self.files[argv[4]] = stdin
            return Result(argv, 0)
        if "docker info" in script:
            return Result(argv, 0)
        if "environ" in script:
            return Result(argv, 0, self.env.get(argv[4], "") + "\n")
        raise AssertionError(argv)


def engine_step() -> list[steps.Step]:
    # right after daemon.json: the engine restarts before any container runs
    names = steps.STEP_NAMES
    assert names.index("engine-go") == names.index("daemon-json") + 1
    return [s for s in steps.STEPS if s.name == "engine-go"]


def test_engine_drop_ins_are_planned_where_missing_or_different():
    dropin, gogc = state.engine_dropin, state.ENGINE_GOGC
    both = {"containerd-load": "loaded", "docker-load": "loaded"}
    assert state.engine_changes(both) == [("containerd", True), ("docker", True)]
    done = {**both, "containerd": dropin("containerd"), "docker": dropin("docker") + "\n",
            "containerd-gogc": gogc, "docker-gogc": gogc}  # fmt: skip
    assert state.engine_changes(done) == []
    other = {**done, "docker": "[Service]\nEnvironment=GOGC=200\n"}
    assert state.engine_changes(other) == [("docker", True)]
    # written, then the run was cut before the restart: restarted, not written again
    cut = {**done, "docker-gogc": ""}
    assert state.engine_changes(cut) == [("docker", False)]
    assert state.engine_changes({**done, "docker-gogc": "-"}) == []  # not running: nothing to do
    # Docker without a containerd unit of its own: dockerd's child has dockerd's environment
    alone = {"containerd-load": "not-found", "docker-load": "loaded"}
    assert state.engine_changes(alone) == [("docker", True)]
    # a bare server in a dry run: both, once the packages step installs them
    bare = {"containerd-load": "not-found", "docker-load": "not-found"}
    assert state.engine_changes(bare) == [("containerd", True), ("docker", True)]


def test_engine_drop_ins_say_their_reason_and_reach_the_shims():
    text = state.engine_dropin("containerd")
    comment, *rest = text.splitlines()
    assert comment.startswith("# ") and "shims" in comment and "512 MB" in comment
    assert rest == ["[Service]", f"Environment=GOGC={state.ENGINE_GOGC}"]
    assert "shims" not in state.engine_dropin("docker")


def test_engine_step_writes_restarts_once_and_then_changes_nothing():
    server = EngineHost()
    said: list[str] = []
    ctx = steps.Context(server, steps.Options(), say=said.append)

    dry = steps.run(ctx, dry_run=True, steps=engine_step())
    assert dry.planned == [("engine-go", [
        f"/etc/systemd/system/containerd.service.d/50-aiia-memory.conf: GOGC={state.ENGINE_GOGC}, "
        "restart containerd",
        f"/etc/systemd/system/docker.service.d/50-aiia-memory.conf: GOGC={state.ENGINE_GOGC}, "
        "restart docker",
    ])]  # fmt: skip
    assert server.files == {} and server.restarts == []

    done = steps.run(ctx, steps=engine_step())
    assert done.changes == 2 and server.restarts == ["containerd", "docker"]
    for unit in ("containerd", "docker"):
        assert server.files[state.engine_dropin_path(unit)] == state.engine_dropin(unit)
        assert server.env[unit] == state.ENGINE_GOGC

    again = steps.run(ctx, steps=engine_step())
    assert again.changes == 0 and server.restarts == ["containerd", "docker"]

    # an edited drop-in: only its unit is written and restarted
    server.files[state.engine_dropin_path("docker")] = "[Service]\nEnvironment=GOGC=200\n"
    steps.run(ctx, steps=engine_step())
    assert server.restarts == ["containerd", "docker", "docker"]
    assert server.files[state.engine_dropin_path("docker")] == state.engine_dropin("docker")

    # a run cut after the write, before the restart: the next run restarts, writes nothing
    server.env["containerd"] = ""
    said.clear()
    steps.run(ctx, steps=engine_step())
    assert server.restarts == ["containerd", "docker", "docker", "containerd"]
    assert "change: restart containerd: it runs with GOGC=(unset), " in "\n".join(said)
    assert steps.run(ctx, steps=engine_step()).changes == 0


def test_engine_restart_that_fails_names_the_unit_and_the_way_back():
    server = EngineHost(fail_restart={"docker"})
    ctx = steps.Context(server, steps.Options(), say=lambda _: None)
    path = state.engine_dropin_path("docker")
    with pytest.raises(steps.SetupError) as err:
        steps.run(ctx, steps=engine_step())
    msg = str(err.value)
    assert msg.startswith("step engine-go: systemctl restart docker failed")
    assert "journalctl -u docker" in msg
    assert f"rm {path} && systemctl daemon-reload && systemctl restart docker" in msg


def test_engine_unit_that_does_not_take_the_setting_stops_the_step():
    class Overridden(EngineHost):
        def run(self, argv, *, stdin=None, timeout=None):
            res = super().run(argv, stdin=stdin, timeout=timeout)
            if tuple(argv[:2]) == ("systemctl", "restart"):
                self.env[argv[2]] = "200"  # a later drop-in of someone else's wins
            return res

    ctx = steps.Context(Overridden(), steps.Options(), say=lambda _: None)
    with pytest.raises(steps.SetupError, match=r"containerd runs with GOGC=200, not .* overrides"):
        steps.run(ctx, steps=engine_step())


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "found, changes",
    [
        # systemctl's answers on the VPS right after apt-get install unattended-upgrades
        pytest.param({"helper": "enabled", "active": "active", "timer": "enabled"}, 1, id="fresh"),
        pytest.param(
            {"helper": "disabled", "active": "inactive", "timer": "enabled"}, 0, id="done"
        ),  # fmt: skip
        # a bare server before the packages step (a dry run): nothing to disable yet
        pytest.param(
            {
                "helper": "Failed to get unit file state for unattended-upgrades.service: "
                "No such file or directory",
                "active": "inactive",
                "timer": "enabled",
            },
            0,
            id="not-installed",
        ),  # fmt: skip
    ],
)
def test_the_resident_upgrade_helper_is_disabled_once(found, changes):
    plan = steps.plan_memory(found, steps.Options())
    assert len(plan.changes) == changes and plan.warnings == []
    if changes:
        assert "unattended-upgrades.service" in plan.changes[0]


def test_upgrades_that_no_longer_run_are_warned_about():
    found = {"helper": "disabled", "active": "inactive", "timer": "disabled"}
    plan = steps.plan_memory(found, steps.Options())
    assert plan.changes == []
    assert "systemctl enable --now apt-daily-upgrade.timer" in plan.warnings[0]


# ----------------------------------------------------------------------------- keys, sshd

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0nQ9 operator@laptop"


def test_authorized_keys_only_what_is_missing_once():
    assert state.missing_keys("", [KEY, KEY]) == [KEY]
    # the same key with another comment or options is the same key
    assert state.missing_keys('from="10.0.0.1" ' + KEY.replace("operator@laptop", "x"), [KEY]) == []
    with pytest.raises(state.StateError, match="not an SSH public key"):
        state.missing_keys("", ["hello"])


def test_sshd_effective_settings_from_sshd_T():
    effective = state.parse_sshd_effective(fixture("sshd-T.txt"))
    # sshd -T spells prohibit-password the old way
    assert effective["permitrootlogin"] == "without-password"
    assert state.sshd_differences(effective) == []
    assert state.sshd_differences({"passwordauthentication": "yes"}) == [
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
    ]


# ----------------------------------------------------------------------------- swap


def test_swap_on_overlay_warns_and_changes_nothing():
    swap = state.parse_swap({"swaps": "Filename Type Size Used Priority", "fstab": "",
                             "rootfs": "overlay", "swappiness": "60", "sysctl": "no"})  # fmt: skip
    changes, warnings = state.swap_plan(swap)
    assert changes == []
    assert "cannot be enabled" in warnings[0] and "overlay" in warnings[0]


def test_swap_missing_on_ext4_is_made_and_an_active_one_is_completed():
    bare = state.parse_swap({"swaps": "Filename", "fstab": "", "rootfs": "ext4",
                             "swappiness": "60", "sysctl": "no"})  # fmt: skip
    assert state.swap_plan(bare) == (["a 2 GB swap file at /swapfile, swappiness 10"], [])
    active = state.parse_swap({"swaps": fixture("proc-swaps-active.txt"), "fstab": "",
                               "rootfs": "ext4", "swappiness": "10", "sysctl": "yes"})  # fmt: skip
    assert state.swap_plan(active) == (["add /swapfile to /etc/fstab"], [])
    done = state.parse_swap({"swaps": fixture("proc-swaps-active.txt"),
                             "fstab": "/swapfile none swap sw 0 0", "rootfs": "ext4",
                             "swappiness": "10", "sysctl": "yes"})  # fmt: skip
    assert state.swap_plan(done) == ([], [])


# ----------------------------------------------------------------------------- firewall


def test_firewall_is_a_table_of_our_own_with_default_deny_inbound():
    rules = state.firewall_rules()
    assert "policy drop" in rules and "tcp dport { 22, 80, 443 } accept" in rules
    assert "ct state established,related accept" in rules
    # never flushes the ruleset: Docker's iptables rules stay
    assert "flush ruleset" not in rules
    assert "hook forward" not in rules
    assert steps.plan_firewall({}, steps.Options()).changes
    same = {"rules": rules.rstrip("\n"), "unit": state.firewall_unit().rstrip("\n"),
            "enabled": "enabled", "table": "present"}  # fmt: skip
    assert steps.plan_firewall(same, steps.Options()).changes == []


# ----------------------------------------------------------------------------- cron


def test_cron_jobs_as_the_guide_writes_them_and_each_once():
    jobs = cron_jobs(PROD, STAGING)
    text, changed = state.merge_crontab("", jobs)
    assert text == fixture("crontab-ubuntu.txt")
    assert changed == ["backup-production", "backup-staging", "renew-certs", "status",
                       "drill-production"]  # fmt: skip
    assert state.merge_crontab(text, jobs) == (text, [])


def test_cron_replaces_the_lines_install_cron_made_and_keeps_the_rest():
    theirs = "MAILTO=ops@eduaiia.com\n5 * * * * /usr/bin/true\n"
    current = theirs + "".join(f"{line}\n" for line in backup_tasks.cron_lines(PROD))
    text, changed = state.merge_crontab(current, cron_jobs(PROD, STAGING))
    assert text.startswith(theirs)
    for command in ("scripts/backup.sh production", "scripts/status.sh start",
                    "scripts/drill.sh production"):  # fmt: skip
        assert text.count(command) == 1, text
    assert {"backup-production", "status", "drill-production"} <= set(changed)
    # taken over in place, marked: the same lines as on a server setup made alone
    assert sorted(text.splitlines()) == sorted(
        theirs.splitlines() + fixture("crontab-ubuntu.txt").splitlines()
    )


def test_cron_replaces_the_former_per_minute_collector_line():
    """A server set up (or given `fab install-cron`) before the collector kept its own
    container has `* * * * * status.sh run`: it becomes the hourly `start`, not a second
    collector."""
    former = f"* * * * * {PROD}/scripts/status.sh run"
    for line in (f"{former} # aiia:status", former):
        text, changed = state.merge_crontab(line + "\n", cron_jobs(PROD, STAGING))
        assert "status.sh run" not in text and text.count("status.sh start") == 1
        assert "status" in changed
        merged, one = backup_tasks.merge_crontab(line + "\n", backup_tasks.cron_lines(PROD)[1])
        assert one and "status.sh run" not in merged and merged.count("status.sh start") == 1


def test_install_cron_after_setup_changes_nothing():
    """`fab install-cron` on a server `fab setup` made: setup's marked lines are its own."""
    text = fixture("crontab-ubuntu.txt")
    for line in backup_tasks.cron_lines(PROD):
        merged, changed = backup_tasks.merge_crontab(text, line)
        assert (merged, changed) == (text, False), line
    # another schedule by hand is still replaced, not doubled
    moved = text.replace("0 2 * * * ", "0 4 * * * ")
    merged, changed = backup_tasks.merge_crontab(moved, backup_tasks.cron_line(PROD))
    assert changed and merged.count("scripts/backup.sh production") == 1
    assert f"0 2 * * * {PROD}/scripts/backup.sh production\n" in merged


def test_cron_takes_another_job_as_data():
    extra = state.CronJob("prune", "45 4 * * *", [f"{PROD}/scripts/prune.sh"])
    text, changed = state.merge_crontab(
        fixture("crontab-ubuntu.txt"), [*cron_jobs(PROD, STAGING), extra]
    )
    assert changed == ["prune"]
    assert text.endswith(f"45 4 * * * {PROD}/scripts/prune.sh # aiia:prune\n")


# ----------------------------------------------------------------------------- compose


def test_compose_ps_of_the_running_stack():
    containers = state.parse_compose_ps(fixture("compose-ps.json"))
    assert state.unhealthy(containers, steps.SERVICES) == []
    assert state.unhealthy(containers[:2], steps.SERVICES)
    assert steps.plan_stack(containers, steps.Options()).changes == []
    sick = [state.Container(c.service, c.state, "starting") for c in containers]
    plan = steps.plan_stack(sick, steps.Options())
    assert plan.changes == [] and "not healthy" in plan.warnings[0]
    assert steps.plan_stack(containers[:5], steps.Options()).changes
    assert state.parse_compose_ps("") == []


# ----------------------------------------------------------------------------- env files


def test_env_files_get_fresh_secrets_and_the_answers():
    example = (ROOT / "config" / "prod.env.example").read_text()
    from opskit.age import X25519Identity

    recipient = str(X25519Identity.generate().recipient)
    answers = {"BACKUP_AGE_RECIPIENT": recipient, "LETSENCRYPT_EMAIL": "ops@example.org"}
    text, made = envfiles.fill(example, answers)
    assert "=CHANGE_ME" not in text
    assert len(made) == 7 and len(set(made)) == 7
    assert all(len(m) >= 50 for m in made)
    assert "LETSENCRYPT_EMAIL=ops@example.org" in text
    assert envfiles.problems(text, "production", "x/.env") == []


def test_env_file_problems_are_all_listed():
    example = (ROOT / "config" / "prod.env.example").read_text()
    found = envfiles.problems(example, "production", "/srv/.env")
    assert len(found) >= 6
    assert all(p.startswith("/srv/.env") for p in found)
    assert any("DJANGO_SECRET_KEY" in p for p in found)
    assert any("BACKUP_AGE_RECIPIENT" in p for p in found)


def test_answers_file_refuses_unknown_keys_and_the_age_recipient_is_asked_for():
    assert envfiles.parse_answers("S3_BUCKET=b\n") == {"S3_BUCKET": "b"}
    with pytest.raises(envfiles.AnswersError, match="DJANGO_SECRET_KEY"):
        envfiles.parse_answers("DJANGO_SECRET_KEY=x\n")
    example = (ROOT / "config" / "prod.env.example").read_text()
    assert "age-keygen" in envfiles.missing_answers(example, {})[0]


def test_existing_env_file_with_problems_stops_the_step_and_lists_them():
    opts = steps.Options()
    files = {"production": ("DJANGO_SECRET_KEY=short\n", "644"), "staging": (None, ""),
             "link": ("", "")}  # fmt: skip
    with pytest.raises(steps.SetupError) as err:
        steps.plan_env_files(files, opts)
    assert "never overwrites" in str(err.value)
    assert f"{PROD}/.env: DJANGO_SECRET_KEY" in str(err.value)


def test_checkouts_plan_clones_only_what_is_missing():
    plan = steps.plan_checkouts({"production": "main", "staging": ""}, steps.Options())
    assert plan.changes == [f"clone {STAGING} on staging"]
    other = steps.plan_checkouts({"production": "feature", "staging": "staging"}, steps.Options())
    assert other.changes == [] and "left as it is" in other.warnings[0]


def test_pending_migrations_from_showmigrations_plan():
    text = "[X]  contenttypes.0001_initial\n[X]  core.0001_initial\n[ ]  core.0002_notes\n"
    assert state.parse_showmigrations(text) == ["core.0002_notes"]
    assert state.parse_showmigrations("[X]  core.0001_initial\n") == []
    with pytest.raises(state.StateError):
        state.parse_showmigrations("Traceback (most recent call last):")
    plan = steps.plan_migrations(
        {"production": [], "staging": ["core.0002_notes"]}, steps.Options()
    )
    assert plan.changes == ["migrate staging (1 pending)"] and plan.data == ["staging"]


def test_app_env_files_are_rendered_when_missing_or_older_than_the_env_file():
    from opskit import appenv

    opts = steps.Options(user="ubuntu")
    prod = "ENVIRONMENT=production\nDJANGO_SECRET_KEY=k\nS3_SECRET_ACCESS_KEY=s3\n"
    staging = "ENVIRONMENT=staging\nDJANGO_SECRET_KEY=k2\n"
    fresh = appenv.render(appenv.parse(staging), source=f"{STAGING}/.env")
    plan = steps.plan_app_env(
        {"django_prod": (prod, None), "django_staging": (staging, fresh)}, opts
    )
    assert plan.data == ["django_prod"]
    assert plan.changes == [
        f"render {PROD}/.env.app/django_prod.env: only the keys Django reads, mode 0600"
    ]
    # an env file not written yet (a dry run of a first setup): rendered after it
    plan = steps.plan_app_env({"django_prod": (None, None), "django_staging": (staging, "x")}, opts)
    assert plan.data == ["django_prod", "django_staging"]
    assert steps.STEP_NAMES.index("app-env") == steps.STEP_NAMES.index("env-files") + 1
    assert steps.STEP_NAMES.index("app-env") < steps.STEP_NAMES.index("images")
    with pytest.raises(steps.SetupError, match=r"/\.env: DJANGO_SECRET_KEY: a value with a line"):
        steps.plan_app_env({"django_prod": ('DJANGO_SECRET_KEY="a\nb"\n', None)}, opts)


# ----------------------------------------------------------------------------- drill key


class ThisMachine(LocalRunner):
    """The server's commands run here: `runuser -u ubuntu -- env -C HOME argv` runs argv with
    HOME set to a temporary home; the crontab is a string; every argv and stdin is kept."""

    def __init__(self, home: Path, crontab: str = "") -> None:
        super().__init__()
        self.home = home
        self.crontab = crontab
        self.sent: list[tuple[tuple[str, ...], str]] = []

    def run(self, argv, *, stdin=None, timeout=None):
        argv = tuple(argv)
        self.sent.append((argv, stdin or ""))
        if argv[:2] == ("sh", "-c") and argv[2] == state.HOST_PROBE:
            return Result(argv, 0, fixture("host-vps-debian12.txt"))
        if argv == ("crontab", "-l", "-u", "ubuntu"):
            if not self.crontab:
                return Result(argv, 1, "", "no crontab for ubuntu\n")
            return Result(argv, 0, self.crontab)
        if argv == ("crontab", "-u", "ubuntu", "-"):
            self.crontab = stdin or ""
            return Result(argv, 0)
        assert argv[:7] == ("runuser", "-u", "ubuntu", "--", "env", "-C", "/home/ubuntu"), argv
        proc = subprocess.run(argv[7:], input=stdin or "", capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(self.home)})  # fmt: skip
        return Result(argv, proc.returncode, proc.stdout, proc.stderr)


def watching_steps() -> list[steps.Step]:
    names = ("drill-key", "cron")
    # setup ends with them, then starts the status collector (scripts/status.sh start:
    # the vps tier runs it, against the server's own Docker)
    assert steps.STEP_NAMES[-3:] == (*names, "status")
    return [s for s in steps.STEPS if s.name in names]


def test_setup_ends_with_the_drill_key_and_every_cron_entry_each_once(tmp_path):
    server = ThisMachine(tmp_path, crontab="MAILTO=ops@eduaiia.com\n")
    said: list[str] = []
    ctx = steps.Context(server, steps.Options(), say=said.append)
    key = tmp_path / ".config" / "aiia" / "drill.key"

    dry = steps.run(ctx, dry_run=True, steps=watching_steps())
    assert [name for name, _ in dry.planned] == ["drill-key", "cron"]
    shown = "\n".join(said)
    assert f"would change: the restore drill's key {key} (0600, as ubuntu)" in shown
    assert ("would change: crontab of ubuntu: backup-production, backup-staging, renew-certs, "
            "status, drill-production") in shown  # fmt: skip
    assert not key.exists() and server.crontab == "MAILTO=ops@eduaiia.com\n"

    said.clear()
    done = steps.run(ctx, steps=watching_steps())
    assert done.changes == 2
    assert server.crontab == "MAILTO=ops@eduaiia.com\n" + fixture("crontab-ubuntu.txt")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    (secret,) = age.parse_identity_file(key.read_text())
    public = key.with_name("drill.key.pub").read_text().strip()
    assert age.recipient_from_identity(secret) == public
    assert ctx.notes == [f"restore drill: its key is {key}; from the night's backup on, each "
                         f"database dump is encrypted to {public} as well"]  # fmt: skip
    # the secret went on stdin only, and was never said
    assert not any(secret in word for argv, _ in server.sent for word in argv)
    assert [stdin for _, stdin in server.sent if secret in stdin] != []
    assert secret not in "\n".join(said)

    again = steps.run(ctx, steps=watching_steps())
    assert again.changes == 0 and again.planned == []
    assert key.read_text().count(secret) == 1


def test_a_drill_key_without_its_public_key_stops_the_step_with_the_fix(tmp_path):
    key = tmp_path / ".config" / "aiia" / "drill.key"
    key.parent.mkdir(parents=True)
    key.write_text(age.generate_identity()[0] + "\n")
    ctx = steps.Context(ThisMachine(tmp_path), steps.Options(), say=lambda _: None)
    with pytest.raises(steps.SetupError, match=r"step drill-key: .*move .* away and run"):
        steps.run(ctx, steps=watching_steps())
