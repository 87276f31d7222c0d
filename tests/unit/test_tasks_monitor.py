"""`inv monitor` on the status collector: an engine that answers from saved data, /proc
from files; the same readings and thresholds as the devstatus page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from invoke import Exit, MockContext

from opskit.status.docker_api import DockerError, ExecResult
from opskit.tasks import monitor as monitor_tasks

pytestmark = pytest.mark.unit
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MIB = 1 << 20


class FakeDocker:
    """The few Engine API calls the collector makes, answered from saved data."""

    def __init__(self, running: dict[str, int], *, down: bool = False) -> None:
        self.running = running  # name -> memory limit
        self.down = down

    def info(self) -> dict:
        if self.down:
            raise DockerError("GET /info: FileNotFoundError: no socket")
        return {}

    def containers(self, prefix: str = "") -> list[dict]:
        return [
            {"Id": f"{i:064x}", "Name": f"/{name}", "RestartCount": 0,
             "State": {"Status": "running", "Running": True, "StartedAt": "t0",
                       "Health": {"Status": "healthy"}},
             "HostConfig": {"Memory": limit}}
            for i, (name, limit) in enumerate(self.running.items())
            if name.startswith(prefix)
        ]  # fmt: skip

    def stats(self, name: str) -> dict:
        return {"memory_stats": {"usage": 20 * MIB, "stats": {"total_inactive_file": 0}},
                "cpu_stats": {"cpu_usage": {"total_usage": 10**9}}}  # fmt: skip

    def exec(self, name: str, argv) -> ExecResult:
        kind = name.split("_")[-1].split("-")[-2] if "-" in name else name.split("_")[-1]
        text = {
            "postgresql": "health/postgres_connections.csv",
            "pgbouncer": "health/pgbouncer_show_pools_idle.csv",
            "redis": "health/redis_info_memory.txt",
        }[kind]
        return ExecResult(0, (FIXTURES / text).read_text(), "")

    def logs(self, *args, **kw) -> str:
        return ""

    def signal(self, *args) -> None:
        pass


SERVER = {"aiia_nginx": 56 * MIB, "aiia_postgresql": 136 * MIB, "aiia_pgbouncer": 12 * MIB,
          "aiia_redis": 64 * MIB}  # fmt: skip


@pytest.fixture
def box(tmp_path, monkeypatch):
    """A /proc of a 512 MB box; `used_mb` sets what is in use."""

    def make(used_mb: int) -> None:
        (tmp_path / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
        (tmp_path / "meminfo").write_text(
            f"MemTotal: {512 * 1024} kB\nMemAvailable: {(512 - used_mb) * 1024} kB\n"
            "SwapTotal: 0 kB\nSwapFree: 0 kB\n"
        )
        (tmp_path / "loadavg").write_text("0.20 0.10 0.05 1/100 42\n")

    monkeypatch.setattr(monitor_tasks, "PROC", tmp_path)
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "")
    return make


def run(monkeypatch, docker: FakeDocker, **kw):
    monkeypatch.setattr(monitor_tasks, "make_docker", lambda _socket: docker)
    # nothing listens on port 1: /health/ is down, as the alert lines then say
    return monitor_tasks.monitor(MockContext(), once=True, interval=0.0, nginx="127.0.0.1:1", **kw)


def test_local_once_within_thresholds_exits_0(box, monkeypatch, capsys):
    box(300)
    local = {"aiia_local-postgresql-1": 128 * MIB, "aiia_local-redis-1": 64 * MIB}
    run(monkeypatch, FakeDocker(local), env="local")
    out = capsys.readouterr().out
    assert "aiia_local-postgresql-1  running" in out and "ALERT" not in out
    assert "memory 300 of 512 MB" in out
    assert "postgresql  green" in out and "redis       green" in out


def test_box_memory_with_daemons_past_400_mb_exits_1(box, monkeypatch, capsys):
    """The box's memory (daemons included), not the containers' sum, is what is held to 400 MB."""
    box(420)
    with pytest.raises(Exit) as exc:
        run(monkeypatch, FakeDocker(SERVER), env="production")
    assert exc.value.code == 1
    assert "memory 420 MB in use (daemons included) is above 400 MB" in exc.value.message
    assert "production /health/ failing" in exc.value.message
    out = capsys.readouterr().out
    assert "ALERT: memory 420 MB" in out and "pgbouncer   green" in out


def test_once_json(box, monkeypatch, capsys):
    box(200)
    run(monkeypatch, FakeDocker({"aiia_redis": 64 * MIB}), env="local", json_=True)
    data = json.loads(capsys.readouterr().out)
    assert data["memory_used_mb"] == 200 and data["alerts"] == []
    assert [c["name"] for c in data["containers"]] == ["aiia_redis"]


def test_without_the_engine_exits_2(box, monkeypatch):
    box(200)
    with pytest.raises(Exit) as exc:
        run(monkeypatch, FakeDocker({}, down=True), env="local")
    assert exc.value.code == 2 and "does not answer" in exc.value.message


def test_bad_nginx_address_exits_2(box, monkeypatch):
    box(200)
    monkeypatch.setattr(monitor_tasks, "make_docker", lambda _socket: FakeDocker({}))
    with pytest.raises(Exit) as exc:
        monitor_tasks.monitor(MockContext(), once=True, env="local", nginx="nginx")
    assert exc.value.code == 2 and "HOST:PORT" in exc.value.message
