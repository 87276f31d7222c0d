"""The stack on Docker Swarm across three 512 MB VPS: one manager and db node, two web nodes.

Everything goes through the fab tasks an operator runs (cluster-init, cluster-join,
cluster-up, cluster-deploy, cluster-rollback) over real SSH; images reach the nodes
through the test registry on the VPS network. This kernel has no AES-GCM for IPsec
(docs/cluster.md), so the overlay runs with --no-encrypt. The tests run in order and
share the cluster (booting it costs minutes).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from opskit import appenv
from tests.harness.core import ROOT, wait_until
from tests.harness.vps import VPS, Cluster
from tests.stack.stackkit import env_from_example, host_ca_bundle
from tests.vps.cluster_load import Load, get

pytestmark = pytest.mark.vps

PROD, STAGING = "eduaiia.com", "staging.eduaiia.com"
CHECKOUTS = {"production": "/home/ubuntu/main/ai-ia-backend",
             "staging": "/home/ubuntu/staging/ai-ia-backend"}  # fmt: skip
APP = "aiia-cluster-test/app"
# a public key only: the backups the test takes are never opened
AGE = "age1207ggp8k454g3v750fdtu0uhctun0kxy435ws4vlqta84lcf2qasx4kplc"
SERVICE_IMAGES = ("aiia/nginx:latest", "aiia/postgresql:latest", "aiia/pgbouncer:latest",
                  "aiia/redis:latest", "aiia/backup:latest")  # fmt: skip
# a release whose migrations pass and whose /health/ answers 503 (its cache host does not
# exist): the health check, not the start, is what fails
BROKEN = """FROM {base}
USER root
RUN printf '%s\\n' 'from aiia.settings import *  # noqa' \\
    'CACHES["default"]["LOCATION"] = "redis://nowhere.invalid:6379/0"' \\
    > /app/aiia/broken_settings.py
USER 10001:10001
ENV APP_VERSION=v3-broken DJANGO_SETTINGS_MODULE=aiia.broken_settings
"""


def sh(*argv: str, input: str | None = None, timeout: float = 1800) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv[:6])}: {proc.stderr[-3000:]}"
    return proc.stdout


def build_images() -> dict[str, str]:
    """The server's images (compose, cached layers) and three app releases: v1, v2, broken."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/root",
        "EXTRA_CA_CERTS": host_ca_bundle(),
        "APP_IMAGE": APP,
        "APP_TAG_PRODUCTION": "v1",
        "APP_VERSION": "v1",
        # compose checks every ${...:?} of the file even to build
        **{
            k: "build-only"
            for k in (
                "STATUS_PASSWORD",
                "PGBOUNCER_AUTH_PASSWORD",
                "POSTGRES_SUPERUSER_PASSWORD",
                "POSTGRES_PASSWORD",
                "REDIS_ADMIN_PASSWORD",
                "REDIS_PASSWORD",
            )
        },  # fmt: skip
        "PRODUCTION_ENV_FILE": "/dev/null",
        "STAGING_ENV_FILE": "/dev/null",
    }
    # compose loads the app services' rendered env files (opskit/appenv.py) even to build
    appenv.refresh(ROOT, appenv.SERVER, env)
    proc = subprocess.run(
        ["docker", "compose", "-f", "compose/server.yml", "--project-directory", ".",
         "--profile", "tools", "build", "django_prod", "nginx", "postgresql", "pgbouncer",
         "redis", "backup"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    legacy = {"DOCKER_BUILDKIT": "0", "PATH": env["PATH"], "HOME": env["HOME"]}
    for tag, dockerfile in (
        ("v2", f"FROM {APP}:v1\nENV APP_VERSION=v2\n"),
        ("v3", BROKEN.format(base=f"{APP}:v1")),
    ):
        built = subprocess.run(["docker", "build", "-q", "-t", f"{APP}:{tag}", "-"],
                               input=dockerfile, env=legacy, capture_output=True, text=True,
                               timeout=600)  # fmt: skip
        assert built.returncode == 0, built.stderr[-2000:]
    return {tag: f"{APP}:{tag}" for tag in ("v1", "v2", "v3")}


def checkout_tar() -> bytes:
    """What the db node's checkouts need for the pre-deploy backup: scripts and opskit."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("scripts", "opskit", "config"):
            tar.add(ROOT / name, arcname=name,
                    filter=lambda t: None if "__pycache__" in t.name else t)  # fmt: skip
    return buf.getvalue()


@dataclass
class Swarm:
    db: VPS
    web: list[VPS]
    images: dict[str, str]
    log: list[str] = field(default_factory=list)

    def fab(self, *args: str, check: bool = True, timeout: float = 1200) -> str:
        proc = subprocess.run(self.db.fab_argv(*args), cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        out = proc.stdout + proc.stderr
        self.log.append(f"$ fab {' '.join(args)}\n{out}")
        if check:
            assert proc.returncode == 0, out
        return out

    def docker(self, *argv: str, node: VPS | None = None) -> str:
        return (node or self.db).exec("docker", *argv).stdout

    def tasks(self, service: str) -> list[dict]:
        out = self.docker("service", "ps", f"aiia_{service}", "--filter",
                          "desired-state=running", "--format", "{{json .}}")  # fmt: skip
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def running(self, service: str) -> list[tuple[str, str]]:
        return sorted(
            (t["Node"], t["Image"].split("@")[0])
            for t in self.tasks(service)
            if t["CurrentState"].startswith("Running")
        )

    def all_running(self) -> bool:
        out = self.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}")
        rows = [line.split() for line in out.splitlines() if line.startswith("aiia_")]
        return len(rows) == 6 and all(r[1].split("/")[0] == r[1].split("/")[1] for r in rows)

    def failed(self, load: Load) -> str:
        """A failed load's first answers, and the app's own health log lines beside them
        (the failing check's message, which the answers leave out)."""
        lines = []
        for service in ("aiia_django_prod", "aiia_django_staging"):
            logs = self.db.exec("docker", "service", "logs", "--no-trunc", "--since", "30m",
                                service, check=False)  # fmt: skip
            text = logs.stdout + logs.stderr
            lines += [line for line in text.splitlines() if "health:" in line]
        return f"{load.failures[:10]}\napp health log:\n" + "\n".join(lines[-20:])

    def targets(self, host: str = PROD) -> list[tuple[int, str]]:
        return [(w.https_port, host) for w in self.web]

    def psql(self, sql: str) -> str:
        script = (
            "c=$(docker ps -q --filter name=aiia_postgresql); "
            'docker exec -i -u 999 "$c" psql -qAt -v ON_ERROR_STOP=1 -d aiia_prod'
        )
        return self.db.exec("sh", "-c", script, input=sql).stdout.strip()


@pytest.fixture(scope="module")
def swarm(vps_cluster: Cluster) -> Swarm:
    images = build_images()
    # boot the three VPS and fill them at once: the slow parts are the engines' start and
    # the pulls, each in its own VPS
    with ThreadPoolExecutor(3) as pool:
        db, web1, web2 = pool.map(
            lambda n: vps_cluster.boot(n, docker_installed=True), ("db", "web1", "web2")
        )
    web = [web1, web2]
    registry = vps_cluster.registry
    # the service images under the names the stack gives them, on every node that runs
    # them; the app's releases stay registry references the nodes pull themselves
    with ThreadPoolExecutor(4) as pool:
        pulled = dict(zip(SERVICE_IMAGES, pool.map(registry.push, SERVICE_IMAGES), strict=True))
    wanted = {
        "db": ["aiia/postgresql:latest", "aiia/pgbouncer:latest", "aiia/redis:latest",
             "aiia/backup:latest"],
        "web1": ["aiia/nginx:latest"],
        "web2": ["aiia/nginx:latest"],
    }  # fmt: skip

    def fill(node: VPS) -> None:
        script = " && ".join(
            f"docker pull -q {pulled[i]} >/dev/null && docker tag {pulled[i]} {i}"
            for i in wanted[node.name]
        )
        node.exec("sh", "-c", script, timeout=900)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(fill, (db, web1, web2)))
    with ThreadPoolExecutor(3) as pool:
        refs = dict(zip(images, pool.map(registry.push, images.values()), strict=True))

    tar = checkout_tar()
    for env, path in CHECKOUTS.items():
        example = ROOT / "config" / ("prod.env.example" if env == "production" else
                                     "staging.env.example")  # fmt: skip
        text = env_from_example(example, BACKUP_AGE_RECIPIENT=AGE)
        db.exec("sh", "-c", f"mkdir -p {path} && tar -C {path} -x", input=tar)
        db.exec("sh", "-c", f"umask 077 && cat > {path}/.env", input=text)

    s = Swarm(db, web, refs)
    s.fab("cluster-init", "--advertise-addr", db.ip)
    for node in web:
        s.fab("cluster-join", "--node", f"root@127.0.0.1:{node.ssh_port}", "--role", "web",
              "--advertise-addr", node.ip)  # fmt: skip
    s.fab("cluster-up", "--no-encrypt", "--no-resolve-image", "--prod-image", refs["v1"],
          "--staging-image", refs["v1"])  # fmt: skip
    wait_until(s.all_running, timeout=300, interval=3, what="every service of the stack running")
    yield s
    print("\n\n".join(s.log))


def wait_answers(port: int, host: str, version: str | None = None, timeout: float = 120):
    def ok() -> bool:
        try:
            status, data = get(port, host)
        except OSError:
            return False
        return status == 200 and (version is None or data.get("version") == version)

    wait_until(ok, timeout=timeout, interval=2, what=f"{host} on 127.0.0.1:{port}")


def test_both_environments_answer_through_each_web_nodes_443(swarm, capsys):
    status = swarm.fab("cluster-status")
    for node in swarm.web:
        for host, env in ((PROD, "production"), (STAGING, "staging")):
            wait_answers(node.https_port, host)
            code, data = get(node.https_port, host)
            assert (code, data["environment"], data["version"]) == (200, env, "v1"), data
    assert {n for n, _ in swarm.running("postgresql")} == {"db"}
    assert {n for n, _ in swarm.running("nginx")} == {"web1", "web2"}
    with capsys.disabled():
        print("\n" + status)


def test_rolling_update_under_load_drops_no_request(swarm, capsys):
    with Load(swarm.targets()) as load:
        time.sleep(2)
        started = time.monotonic()
        out = swarm.fab("cluster-deploy", "--env", "production", "--image", swarm.images["v2"],
                        "--no-resolve-image", "--why", "release v2")  # fmt: skip
        time.sleep(3)
    with capsys.disabled():
        print(f"\n{out}\nload: {load.summary()}")
    assert load.failures == [], swarm.failed(load)
    assert load.versions(started) == ["v1", "v2"]
    # the last seconds: the new version alone, on every replica
    assert {v for t, _k, s, v in load.results if t > time.monotonic() - 2 and s == 200} == {"v2"}
    running = swarm.running("django_prod")
    assert len(running) == 2 and {image for _n, image in running} == {swarm.images["v2"]}
    assert "[3/7] backup     ok" in out and "verified:" in out
    assert "[5/7] migrate    ok" in out
    log = f"{CHECKOUTS['production']}/logs/deploys.log"
    entry = json.loads(swarm.db.exec("tail", "-n", "1", log).stdout)
    assert (entry["result"], entry["release"], entry["previous"]) == (
        "ok", swarm.images["v2"], swarm.images["v1"])  # fmt: skip


def test_a_release_failing_its_health_check_is_rolled_back_by_the_swarm(swarm, capsys):
    with Load(swarm.targets()) as load:
        time.sleep(2)
        out = swarm.fab("cluster-deploy", "--env", "production", "--image", swarm.images["v3"],
                        "--no-resolve-image", "--skip-backup", check=False)  # fmt: skip
        time.sleep(2)
    with capsys.disabled():
        print(f"\n{out}\nload: {load.summary()}")
    assert "health gate failed: the swarm rolled aiia_django_prod back to" in out
    assert load.failures == [], swarm.failed(load)
    assert load.versions() == ["v2"]
    assert {image for _n, image in swarm.running("django_prod")} == {swarm.images["v2"]}


def test_rollback_returns_to_the_previous_image(swarm, capsys):
    with Load(swarm.targets(), per_request=1) as load:
        out = swarm.fab("cluster-rollback", "--env", "production", "--no-resolve-image")
        time.sleep(2)
    with capsys.disabled():
        print(f"\n{out}\nload: {load.summary()}")
    assert load.failures == [], swarm.failed(load)
    assert {image for _n, image in swarm.running("django_prod")} == {swarm.images["v1"]}
    assert "[5/7] migrate    skipped" in out


def test_a_web_node_stopped_the_other_keeps_answering_and_nothing_is_lost(swarm, capsys):
    swarm.psql(
        "CREATE TABLE IF NOT EXISTS cluster_probe (v text); "
        "INSERT INTO cluster_probe VALUES ('before a web node stopped');"
    )
    # the node that runs staging's one task: its stop shows a task rescheduled
    ((on, _image),) = swarm.running("django_staging")
    gone = next(w for w in swarm.web if w.name == on)
    other = next(w for w in swarm.web if w.name != on)
    with (
        Load([(other.https_port, PROD)]) as prod,
        Load([(other.https_port, STAGING)]) as staging,
    ):
        time.sleep(2)
        stopped = time.monotonic()
        # the VPS shuts down (systemd stops the engine, which stops its containers with
        # their signals and grace periods), as a planned stop or an ACPI power-off does
        sh("docker", "stop", "-t", "90", gone.container, timeout=180)

        def rescheduled() -> bool:
            return swarm.running("django_staging") == [(other.name, swarm.images["v1"])]

        wait_until(rescheduled, timeout=180, interval=2, what=f"staging's task on {other.name}")
        took = time.monotonic() - stopped
        wait_answers(other.https_port, STAGING, timeout=60)
        time.sleep(3)
    gap = [t - stopped for t, _k, _s, _r in staging.failures]
    with capsys.disabled():
        print(
            f"\n{gone.name} stopped; staging's task running on {other.name} after {took:.0f}s"
            f"\nproduction through {other.name}: {prod.summary()}"
            f"\nstaging through {other.name}: {staging.summary()}"
            + (f"; failures from {min(gap):.0f}s to {max(gap):.0f}s after the stop" if gap else "")
        )
    # production runs on every web node: the other node's task keeps answering
    assert prod.failures == [], prod.failures[:10]
    assert [n for n, _i in swarm.running("django_prod")] == [other.name]

    sh("docker", "start", gone.container)

    def back() -> bool:
        state = swarm.docker("node", "inspect", gone.name, "--format", "{{.Status.State}}")
        return state.strip() == "ready"

    wait_until(back, timeout=180, interval=3, what=f"{gone.name} back in the swarm")
    for host in (PROD, STAGING):
        wait_answers(gone.https_port, host, timeout=180)
    assert swarm.psql("SELECT v FROM cluster_probe;") == "before a web node stopped"
    wait_until(swarm.all_running, timeout=180, interval=3, what="every service running again")
    assert [n for n, _i in swarm.running("django_prod")] == ["web1", "web2"]


def test_an_env_change_replaces_only_its_readers_and_postgresql_keeps_its_data(swarm):
    swarm.psql("INSERT INTO cluster_probe VALUES ('before the stack update');")
    postgresql = swarm.docker("ps", "-q", "--filter", "name=aiia_postgresql").strip()
    staging = {t["ID"] for t in swarm.tasks("django_staging")}
    # each service gets a secret with only the keys it reads: a change to staging's env file
    # is a new secret for staging alone, and the stack update replaces staging's task only
    path = f"{CHECKOUTS['staging']}/.env"
    swarm.db.exec("sed", "-i", "s/^GUNICORN_THREADS=.*/GUNICORN_THREADS=3/", path)
    out = swarm.fab("cluster-up", "--no-encrypt", "--no-resolve-image")
    assert "secrets and configs created: aiia_django_staging_env_" in out
    assert "aiia_postgresql_env_" not in out.split("secrets and configs created:")[1].split("\n")[0]

    def staging_replaced() -> bool:
        now = {t["ID"] for t in swarm.tasks("django_staging")}
        return bool(now) and not now & staging and swarm.all_running()

    wait_until(staging_replaced, timeout=240, interval=3, what="a new staging task, all running")
    assert swarm.docker("ps", "-q", "--filter", "name=aiia_postgresql").strip() == postgresql

    # PostgreSQL's own task replaced (as a change to its settings or image would): stop-first,
    # placed on the db node again, on the same volume
    swarm.docker("service", "update", "--force", "--detach", "aiia_postgresql")

    def replaced() -> bool:
        now = swarm.docker("ps", "-q", "--filter", "name=aiia_postgresql").strip()
        return bool(now) and now != postgresql and swarm.all_running()

    wait_until(replaced, timeout=240, interval=3, what="a new PostgreSQL task, all running")
    assert {n for n, _ in swarm.running("postgresql")} == {"db"}
    assert swarm.psql("SELECT v FROM cluster_probe ORDER BY v;").splitlines() == [
        "before a web node stopped", "before the stack update"]  # fmt: skip
    for node in swarm.web:
        wait_answers(node.https_port, PROD, timeout=180)
