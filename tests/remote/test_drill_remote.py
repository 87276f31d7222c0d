"""The weekly restore drill on the real server stack, as cron runs it.

`fab install-cron --user` over real SSH installs the lines in a throwaway user's crontab
(another name for the SSH user, root, whose own crontab is never touched) and makes the
drill's key on "the server" (this machine) as that user, in its home. The backup and drill
lines' commands then run as cron runs them for it (/bin/sh -c, cron's environment, its uid
and HOME): the backup encrypts its dump to the drill's key too, the drill
restores it into a scratch database through the host's `docker exec` into aiia_postgresql,
checks and drops it, and writes logs/drill.json. The status collector (scripts/status.sh)
then shows it on the devstatus page; a truncated set fails the drill and the collector
alerts a real webhook receiver on loopback.

On the same server, a real failed deploy: `fab deploy` over SSH of a build whose /health/
answers 503 writes its failure to logs/deploys.log; the collector's next run (the command
cron runs every minute) sends the alert to the receiver, and after a good deploy the next
run sends the resolved message.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import ssl
import subprocess
import uuid

import pytest

from tests.remote import deploy_support as ds
from tests.remote.conftest import crontab_of
from tests.stack.test_status_stack import Receiver

STATUS_HOST = "devstatus.eduaiia.com"


@pytest.fixture(scope="module")
def server(ssh_host, docker_engine, tmp_path_factory):
    with ds.deploy_server(tmp_path_factory.mktemp("drill"), ssh_host) as srv:
        yield srv


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def as_cron(line: str, user: str) -> subprocess.CompletedProcess:
    """A crontab line's command as cron runs it: /bin/sh -c, in HOME, cron's environment."""
    command = line.split(None, 5)[5]
    home = pwd.getpwnam(user).pw_dir
    env = {"HOME": home, "LOGNAME": user, "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["/bin/sh", "-c", command], cwd=home, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def psql(sql: str) -> str:
    return ds.run(["docker", "exec", "-i", "aiia_postgresql", "psql", "-U", "postgres", "-XAt",
                   "-c", sql]).stdout.strip()  # fmt: skip


@pytest.fixture
def collector(server, receiver, tmp_path):
    """scripts/status.sh's environment for the test stack (its volumes' prefix; loopback, so
    the webhook reaches the receiver), with a history volume of its own."""
    env_file = tmp_path / "status.env"
    env_file.write_text(f"SLACK_WEBHOOK_URL={receiver.url}\n")
    history = f"aiia_test_drill_history_{uuid.uuid4().hex[:8]}"
    yield {**os.environ, "ENV_FILE": str(env_file), "VOLUME_PREFIX": f"{server.project}_",
           "HISTORY_VOLUME": history, "NETWORK": "host",
           "NGINX": f"127.0.0.1:{server.https_port}"}  # fmt: skip
    ds.run(["docker", "volume", "rm", "-f", history], check=False)


def status_run(server, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", str(server.prod / "scripts" / "status.sh"), "run"], env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def devstatus(server) -> str:
    """The page as nginx serves it, with the production env file's STATUS_* credentials."""
    settings = dict(line.split("=", 1) for line in (server.prod / ".env").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))  # fmt: skip
    token = base64.b64encode(f"{settings['STATUS_USER']}:{settings['STATUS_PASSWORD']}".encode())
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = ds._SNIConnection(STATUS_HOST, server.https_port, context=context, timeout=15)
    try:
        conn.request("GET", "/", headers={"Host": STATUS_HOST,
                                          "Authorization": "Basic " + token.decode()})  # fmt: skip
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    assert resp.status == 200, body[:300]
    return body


def scratch_databases() -> list[str]:
    return psql("SELECT datname FROM pg_database WHERE datname LIKE '%\\_restore\\_%'").split()


COLLECTOR = "aiia_status_collector"


def stop_collector(server) -> None:
    """`scripts/status.sh stop`: the collector's own container removed."""
    proc = subprocess.run(["bash", str(server.prod / "scripts" / "status.sh"), "stop"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def started_collector(server):
    """fab install-cron starts the collector's own container, which runs every minute until
    stopped: never left to the tests after this one (they share the engine)."""
    yield
    stop_collector(server)


def test_the_weekly_drill_from_cron_restores_the_newest_backup_and_a_bad_set_alerts(
    server, ssh_host, cron_user, drill_key, receiver, collector, started_collector, capsys
):
    # fab install-cron: the drill's key made once, three lines, twice changes nothing
    first = server.fab("install-cron", "--path", str(server.prod), "--user", cron_user)
    assert first.returncode == 0, first.stderr
    assert f"made the drill's key {drill_key} (0600)" in first.stdout
    lines = crontab_of(cron_user).splitlines()
    backup_line = next(line for line in lines if "/scripts/backup.sh production" in line)
    drill_line = next(line for line in lines if "/scripts/drill.sh production" in line)
    assert drill_line == f"30 3 * * 0 {server.prod}/scripts/drill.sh production"
    again = server.fab("install-cron", "--path", str(server.prod), "--user", cron_user)
    assert again.returncode == 0 and again.stdout.count("already installed") == 3
    assert f"the drill's key is already there: {drill_key}" in again.stdout
    assert crontab_of(cron_user).splitlines() == lines
    # each run starts the collector's container unless it runs: it does, as the crontab's
    # user; stopped here so that only this test's own runs below write the page it reads
    assert "the status collector runs every minute" in again.stdout, again.stdout
    state = ds.run(["docker", "inspect", "--format", "{{.State.Running}} {{.Config.User}}",
                    COLLECTOR]).stdout.split()  # fmt: skip
    assert state[0] == "true", state
    assert state[1].split(":")[0] == str(pwd.getpwnam(cron_user).pw_uid), state
    stop_collector(server)
    assert not ds.run(["docker", "ps", "-aq", "--filter", f"name={COLLECTOR}"]).stdout.strip()

    # the night's backup, then Sunday's drill, as cron runs them
    backup = as_cron(backup_line, cron_user)
    assert backup.returncode == 0, backup.stderr
    set_dir = server.prod / "backups" / backup.stdout.strip().rsplit("/", 1)[-1]
    pub = drill_key.with_name("drill.key.pub").read_text().strip()
    assert f"drill_recipient = {pub}" in (set_dir / "MANIFEST.txt").read_text()
    drill = as_cron(drill_line, cron_user)
    assert drill.returncode == 0, drill.stderr
    result = json.loads((server.prod / "logs" / "drill.json").read_text())
    assert result["ok"] is True and result["set"] == set_dir.name, result
    assert " tables, " in result["detail"] and "restored, checked and dropped" in result["detail"]
    assert "restore: drill passed; scratch database" in drill.stderr
    assert scratch_databases() == []
    assert not ds.run(["docker", "ps", "-aq", "--filter", "name=aiia_drill_"]).stdout.strip()

    # the collector shows it
    status_run(server, collector)
    page = devstatus(server)
    assert f"restore drill passed at {result['when']}: {result['detail']}" in page
    assert not receiver.got("ALERT", "drill")

    # a truncated set: the drill fails, says why and what to do, and the alert goes out
    dump = set_dir / "database.dump.age"
    with open(dump, "r+b") as f:
        f.truncate(dump.stat().st_size // 2)
    drill = as_cron(drill_line, cron_user)
    assert drill.returncode == 1
    failed = json.loads((server.prod / "logs" / "drill.json").read_text())
    assert failed["ok"] is False and failed["set"] == set_dir.name
    assert failed["detail"].startswith(f"REFUSED: {set_dir.name} is damaged, nothing was restored")
    assert failed["detail"].endswith("restore another set or its offsite copy")
    status_run(server, collector)
    assert receiver.got("ALERT", "drill"), receiver.texts
    alert = next(t for t in receiver.texts if "ALERT [drill]" in t)
    assert failed["detail"] in alert
    assert "restore drill FAILED at" in devstatus(server)
    with capsys.disabled():
        print(f"\n  drill ok: {result['detail']}\n  alert: {alert}")


def test_a_failed_deploy_alerts_and_the_next_good_deploy_resolves_it(
    server, receiver, collector, capsys
):
    # a build of its own whose /health/ answers 503; nothing of it reaches a branch
    ds.publish(server.origin, server.work, "bad-gate", dict([ds.broken_health()]),
               branches=())  # fmt: skip
    status_run(server, collector)
    assert not receiver.got("ALERT", "deploy:production"), receiver.texts

    failed = server.fab(*server.deploy_args("production", "--ref", "bad-gate",
                                            "--health-attempts", "3", "--health-interval", "1",
                                            "--why", "a build that fails its gate"))  # fmt: skip
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "health check failed" in out, out
    entry = server.deploy_log("production")[-1]
    assert (entry["action"], entry["result"]) == ("deploy", "failed"), entry
    assert entry["reason"].startswith("health check failed: aiia_django_prod_"), entry
    # the deploy itself sends nothing there: the receiver is the collector's webhook only
    assert not any("deploy:production" in t for t in receiver.texts), receiver.texts

    status_run(server, collector)
    alerts = [t for t in receiver.texts if "ALERT [deploy:production]" in t]
    assert len(alerts) == 1, receiver.texts
    assert f"production deploy FAILED: deploy by {entry['who']} at {entry['when']}" in alerts[0]
    assert "health check failed: aiia_django_prod_" in alerts[0]
    status_run(server, collector)  # still failed: no second notice within the 4 h reminder
    assert sum("deploy:production" in t for t in receiver.texts) == 1, receiver.texts

    good = server.fab(*server.deploy_args("production", "--why", "the fix"))
    out = good.stdout + good.stderr
    assert good.returncode == 0, out
    fixed = server.deploy_log("production")[-1]
    assert (fixed["action"], fixed["result"]) == ("deploy", "ok"), fixed
    assert not receiver.got("RESOLVED", "deploy:production"), receiver.texts
    status_run(server, collector)
    resolved = [t for t in receiver.texts if "RESOLVED [deploy:production]" in t]
    assert len(resolved) == 1, receiver.texts
    assert f"production deploy ok: deploy by {fixed['who']} at {fixed['when']}" in resolved[0]
    with capsys.disabled():
        print(f"\n  alert: {alerts[0]}\n  resolved: {resolved[0]}")
