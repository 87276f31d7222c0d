"""bench/vps_backup.py's pure parts: the watcher's output, the commands it sends to the
server, the goals beside the figures. The watcher itself runs here with sh, for real."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys

from tests.harness.core import ROOT


def _load():
    # bench/ is a folder of scripts, not a package: load the file itself
    spec = importlib.util.spec_from_file_location(
        "bench_vps_backup", ROOT / "bench" / "vps_backup.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vb = _load()
MIB = 2**20


def test_the_watch_output_gives_the_peaks_of_the_samples():
    text = "\n".join([
        f"sample {40 * MIB} {50 * MIB} {10 * MIB} {20 * MIB}",
        f"sample {64 * MIB} {64 * MIB} {30 * MIB} {25 * MIB}",  # page cache up to the limit
        f"sample {36 * MIB} {64 * MIB} {2 * MIB} {21 * MIB}",
        "rc 0",
        "seconds 41.25",
    ])  # fmt: skip
    w = vb.parse_watch(text)
    assert (w.rc, w.seconds, w.samples) == (0, 41.25, 3)
    assert w.working_mb == 34.0  # max(usage - inactive page cache): 30, 34, 34
    assert w.anon_mb == 25.0
    assert w.max_usage_mb == 64.0
    assert w.stderr == ""


def test_a_run_without_samples_has_no_peaks_and_keeps_what_failed_said():
    w = vb.parse_watch("rc 1\nseconds 0.5\nstderr backup.sh: no env file\nstderr second")
    assert (w.rc, w.seconds, w.samples) == (1, 0.5, 0)
    assert (w.working_mb, w.anon_mb, w.max_usage_mb) == (None, None, None)
    assert w.stderr == "backup.sh: no env file\nsecond"
    # nothing printed at all (the SSH command did not run): not a success
    assert vb.parse_watch("").rc != 0


def _sh(command: str, env: dict | None = None) -> str:
    # what the server's shell runs, run by this machine's sh
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                          timeout=60, env=env).stdout  # fmt: skip


def test_the_watcher_times_the_command_and_passes_its_status_and_stderr_through():
    out = _sh(vb.watch_command("-", "sleep 0.3; echo oops >&2; echo on-stdout; exit 3"))
    w = vb.parse_watch(out)
    assert w.rc == 3
    assert 0.3 <= w.seconds < 30
    assert w.stderr == "oops"
    assert "on-stdout" not in out  # the command's stdout (a set's path) is not the report's
    assert w.samples == 0


def test_the_watcher_ends_with_the_command_when_the_container_never_appears():
    name = "aiia_bench_watch_never_started_x"
    out = _sh(vb.watch_command(name, "true"))
    w = vb.parse_watch(out)
    assert (w.rc, w.samples, w.anon_mb) == (0, 0, None)


def _fake_docker(tmp_path, body: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\n" + body)
    docker.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_the_disk_floor_writes_the_whole_dump_to_a_file_syncs_it_and_removes_it(tmp_path):
    # a stand-in for `docker exec aiia_postgresql pg_dump -Fc ...`: 3 MiB on stdout, and
    # where the file stood when the dump ended (the size sync saw is checked below)
    env = _fake_docker(tmp_path, 'echo "$*" > "$ARGS"; head -c 3145728 /dev/zero\n')
    work = tmp_path / "work dir"
    work.mkdir()
    cmd = vb.disk_floor_command("aiia_prod", str(work))
    seen = tmp_path / "seen"
    # the size of the file at the moment sync runs: sync wrapped on PATH to look at it
    (tmp_path / "bin" / "sync").write_text(
        f'#!/bin/sh\nstat -c %s "$1" > {seen}\nexec /bin/sync "$@"\n'
    )
    (tmp_path / "bin" / "sync").chmod(0o755)
    done = subprocess.run(["sh", "-c", cmd], env={**env, "ARGS": str(tmp_path / "args")})
    assert done.returncode == 0
    assert (tmp_path / "args").read_text().split() == [
        "exec",
        "aiia_postgresql",
        "pg_dump",
        "-Fc",
        "-U",
        "postgres",
        "-d",
        "aiia_prod",
    ]
    assert seen.read_text().strip() == str(3 * MIB)
    assert list(work.iterdir()) == []  # nothing left behind


def test_a_failed_disk_floor_fails_and_leaves_nothing(tmp_path):
    env = _fake_docker(tmp_path, "head -c 1000 /dev/zero; echo broken >&2; exit 7\n")
    out = _sh(vb.watch_command("-", vb.disk_floor_command("aiia_prod", str(tmp_path))), env)
    w = vb.parse_watch(out)
    assert w.rc == 7 and w.stderr == "broken"
    assert not (tmp_path / "floor.dump").exists()


def test_the_scripts_run_as_cron_runs_them():
    cmd = vb.as_cron(
        "ubuntu",
        "/home/ubuntu/main/ai-ia-backend/scripts/backup.sh production",
        {"LOG_DIR": "/home/ubuntu/b/logs", "BACKUP_DIR": "/home/ubuntu/b/sets"},
    )
    argv = shlex.split(cmd)
    assert argv[:6] == ["runuser", "-u", "ubuntu", "--", "env", "-i"]
    env = [a for a in argv[6:] if "=" in a]
    assert env == ["HOME=/home/ubuntu", "LOGNAME=ubuntu", "SHELL=/bin/sh",
                   "PATH=/usr/bin:/bin", "BACKUP_DIR=/home/ubuntu/b/sets",
                   "LOG_DIR=/home/ubuntu/b/logs"]  # fmt: skip
    assert argv[-2:] == ["/home/ubuntu/main/ai-ia-backend/scripts/backup.sh", "production"]


def test_the_fill_is_made_by_postgresql_in_a_table_the_application_role_owns():
    sql = vb.fill_sql("aiia_prod", 1000)
    assert sql.startswith("SET ROLE aiia_prod;")  # the backup dumps as that role
    assert f"CREATE TABLE IF NOT EXISTS {vb.FILL_TABLE}" in sql
    assert "generate_series(1, 1000)" in sql
    argv = vb.psql_argv("aiia_prod")
    assert argv[:5] == ["docker", "exec", "-i", "aiia_postgresql", "psql"]
    assert argv[argv.index("-d") + 1] == "aiia_prod" and "ON_ERROR_STOP=1" in argv


def _users(p95, errors=0):
    return {"requests": 100, "seconds": 10.0, "p50_ms": 10.0, "p95_ms": p95,
            "errors": errors, "error_pct": errors}  # fmt: skip


def _memory(ooms=0):
    return {"machine_mib": 480.0, "not_page_cache_mib": 300.0, "limit_mib": 512.0,
            "containers_mib": {}, "oom_kills": ooms, "samples": 5}  # fmt: skip


def _report(**over):
    container = {"rc": 0, "seconds": 44.0, "samples": 100, "working_mb": 58.0,
                 "anon_mb": 31.0, "max_usage_mb": 64.0, "stderr": ""}  # fmt: skip
    phases = {
        "quiet": {"seconds": 20.0, "ok": True, "users": _users(900.0), "memory": _memory()},
        "floor": {"seconds": 40.0, "ok": True, "users": _users(150.0), "memory": _memory()},
        "ours": {"seconds": 44.0, "ok": True, "container": container,
                 "users": _users(180.0), "memory": _memory()},
        "restore": {"seconds": 301.0, "ok": True, "container": container,
                    "users": _users(250.0, errors=2), "memory": _memory(ooms=1)},
    }  # fmt: skip
    phases.update(over)
    return {"phases": phases, "database_mib": 1030.0, "fill_seconds": 90.0,
            "users": {"count": 50, "path": "/admin/login/"}, "oom_kills_total": 1}  # fmt: skip


def test_each_goal_is_set_beside_its_figure():
    g = vb.goals(_report())
    assert g["ratio"] == {"value": 1.1, "goal": 1.1, "met": True}  # 44 / 40, within 1.1x
    assert "ratio_disk_floor" not in g  # that floor did not run
    assert g["backup_anon_mib"] == {"value": 31.0, "goal": 64, "met": True}
    assert g["backup_working_mib"]["met"] is True
    assert g["rto_s"] == {"value": 301.0, "goal": 300, "met": False}
    # the worst p95 while something ran; the quiet baseline is not a backup's
    assert g["users_p95_ms"] == {"value": 250.0, "goal": 200.0, "met": False}
    assert g["users_errors"] == {"value": 2, "goal": 0, "met": False}
    assert g["oom_kills"] == {"value": 1, "goal": 0, "met": False}


def test_a_failed_run_gives_no_ratio_and_the_table_says_it_failed():
    report = _report(ours={"seconds": 2.0, "ok": False, "container": None,
                           "users": _users(20.0), "memory": _memory()})  # fmt: skip
    report["goals"] = g = vb.goals(report)
    assert "ratio" not in g and "backup_anon_mib" not in g
    text = vb.table(report)
    assert "scripts/backup.sh production FAILED" in text
    assert "rto_s: 301.0 against 300: NOT met" in text
    assert "database 1030 MiB" in text and "limit 512 MiB" in text


def test_the_disk_floor_gives_a_second_ratio_beside_the_goals_own():
    report = _report(floor_disk={"seconds": 50.0, "ok": True, "users": _users(150.0),
                                 "memory": _memory()})  # fmt: skip
    report["goals"] = g = vb.goals(report)
    assert g["ratio"] == {"value": 1.1, "goal": 1.1, "met": True}  # the goal's floor, 40 s
    assert g["ratio_disk_floor"] == {"value": 0.88, "goal": 1.1, "met": True}  # 44 / 50
    text = vb.table(report)
    row = next(line for line in text.splitlines() if line.startswith("floor to disk"))
    assert row.split()[8:10] == ["50.0", "1.25"]  # its seconds, and x the goal's floor
