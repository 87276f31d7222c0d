"""`inv healthcheck` on saved probe output through invoke's MockContext."""

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
