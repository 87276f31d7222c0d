"""`inv healthcheck` and `inv monitor` on saved probe output through invoke's MockContext."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Exit, MockContext, Result

from opskit import health
from opskit.commands import docker as docker_cmd
from opskit.commands import probes
from opskit.shell import join
from opskit.tasks import health as health_tasks
from opskit.tasks import monitor as monitor_tasks

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PROJECT = "opskit_fx_proj"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "tasks.py").write_text("")
    (tmp_path / "opskit").mkdir()
    monkeypatch.chdir(tmp_path)
    # the saved `docker ps` output is of a compose project of this name
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", PROJECT)
    return tmp_path


def local_results(redis_running: bool) -> dict[str, Result]:
    ps = fixture("health/docker_ps_local_redis_exited.jsonl")
    django = "health/django_health_cache_down.txt"
    results = {
        join(docker_cmd.exec_(f"{PROJECT}-postgresql-1", probes.postgres_connections())): Result(
            fixture("health/postgres_connections.csv")
        ),
    }
    if redis_running:
        ps = ps.replace(
            '"state":"exited","status":"Exited (137) Less than a second ago"',
            ('"state":"running","status":"Up 3 seconds"'),
        )
        django = "health/django_health_ok.txt"
        results[join(docker_cmd.exec_(f"{PROJECT}-redis-1", probes.redis_info()))] = Result(
            fixture("health/redis_info_memory.txt")
        )
    results[join(docker_cmd.project_containers(PROJECT))] = Result(ps)
    results[join(docker_cmd.exec_(f"{PROJECT}-django-1", probes.django_health(8000)))] = Result(
        fixture(django)
    )
    return results


def test_healthcheck_green_prints_a_table(project, capsys):
    health_tasks.healthcheck(MockContext(run=local_results(redis_running=True)))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SERVICE", "STATUS", "DETAIL"]
    assert [ln.split()[:2] for ln in lines[1:]] == [
        ["django", "green"],
        ["postgresql", "green"],
        ["redis", "green"],
    ]


def test_healthcheck_red_names_redis_and_exits_1(project, capsys):
    with pytest.raises(Exit) as exc:
        health_tasks.healthcheck(MockContext(run=local_results(redis_running=False)))
    assert exc.value.code == 1
    assert exc.value.message.startswith("healthcheck: red: django (/health/ 503: cache (Redis)")
    assert f"redis (container {PROJECT}-redis-1 is exited" in exc.value.message


def test_healthcheck_json(project, capsys):
    with pytest.raises(Exit):
        health_tasks.healthcheck(MockContext(run=local_results(redis_running=False)), json_=True)
    report = json.loads(capsys.readouterr().out)
    assert report["environment"] == "local" and report["status"] == "red"
    assert report["red"] == ["django", "redis"]
    assert report["checks"][1]["connections"] == 2


def test_healthcheck_asks_read_only_questions_only(project):
    c = MockContext(run=local_results(redis_running=True))
    health_tasks.healthcheck(c)
    for call in c.run.call_args_list:
        assert call.kwargs == {"warn": True, "hide": True, "in_stream": False}


def monitor_results(stats: str, inspect: str) -> dict[str, Result]:
    from opskit import monitor as mon

    names = sorted(mon.parse_stats(fixture(stats)))
    return {
        join(docker_cmd.stats()): Result(fixture(stats)),
        join(docker_cmd.inspect(names)): Result(fixture(inspect)),
        join(docker_cmd.info("NCPU")): Result("2\n"),
        join(docker_cmd.project_containers(PROJECT)): Result(
            fixture("health/docker_ps_local_redis_exited.jsonl")
        ),
        join(docker_cmd.exec_(f"{PROJECT}-postgresql-1", probes.postgres_connections())): Result(
            fixture("health/postgres_connections.csv")
        ),
    }


def test_monitor_once_quiet_exits_0(project, capsys):
    c = MockContext(
        run=monitor_results("monitor/docker_stats.jsonl", "monitor/docker_inspect.jsonl")
    )
    monitor_tasks.monitor(c, once=True)
    out = capsys.readouterr().out
    assert "opskit_fx_busy" in out and "ALERT" not in out
    assert "postgresql  green" in out and "redis       red" in out


def test_monitor_once_past_a_threshold_exits_1(project, capsys):
    c = MockContext(
        run=monitor_results(
            "monitor/docker_stats_high_memory.jsonl", "monitor/docker_inspect_high_memory.jsonl"
        )
    )
    with pytest.raises(Exit) as exc:
        monitor_tasks.monitor(c, once=True)
    assert exc.value.code == 1
    assert exc.value.message == (
        "monitor: past a threshold: memory 442.2 MB in containers is above 400 MB"
    )
    assert "ALERT: memory 442.2 MB in containers is above 400 MB" in capsys.readouterr().out


def test_monitor_once_json(project, capsys):
    c = MockContext(
        run=monitor_results("monitor/docker_stats.jsonl", "monitor/docker_inspect.jsonl")
    )
    monitor_tasks.monitor(c, once=True, json_=True)
    data = json.loads(capsys.readouterr().out)
    assert data["alerts"] == [] and data["ncpu"] == 2
    assert len(data["containers"]) == 5


def test_monitor_without_docker_exits_2(project):
    c = MockContext(
        run={
            join(docker_cmd.stats()): Result(stderr="Cannot connect to the Docker daemon", exited=1)
        }
    )
    with pytest.raises(Exit) as exc:
        monitor_tasks.monitor(c, once=True)
    assert exc.value.code == 2 and "Cannot connect" in exc.value.message


def test_server_layout_is_the_guides_stack():
    lay = health.layout("production")
    assert lay.project == "aiia" and lay.domain == "eduaiia.com"
    assert [s.name for s in lay.services] == [
        "nginx",
        "django_prod",
        "django_staging",
        "postgresql",
        "pgbouncer",
        "redis",
    ]
    assert health.layout("staging").domain == "staging.eduaiia.com"


def test_healthcheck_from_a_subfolder_finds_the_setup_certificate(project, monkeypatch, capsys):
    from opskit import tls

    tls.ensure_local_certificates(project / "certs", ["localhost"])
    sub = project / "app"
    sub.mkdir()
    monkeypatch.chdir(sub)
    health_tasks.healthcheck(MockContext(run=local_results(redis_running=True)))
    last = capsys.readouterr().out.splitlines()[-1].split()
    assert last[:2] == ["tls", "green"] and last[-1] == "certs/cert.pem"
