"""`fab deploy` over real SSH to this machine, against the real server stack.

The tests share one server (tests/remote/deploy_support.py) and run in file order, each
starting from what the previous left serving: production goes v1 -> v2 (pulled from a
registry) -> back to v1 (rollback); staging sees builds made on the server from git refs,
good and bad ones, concurrent and interrupted deploys, hostile input and the guide's
`scripts/deploy.sh`.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import time
import uuid
from pathlib import Path

import pytest

from opskit import appenv, settings
from opskit.commands import deploy as cmd
from opskit.shell import join
from tests.harness.core import ROOT, wait_until
from tests.remote import deploy_support as ds
from tests.unit.test_deploy_history import Hook

STEP = re.compile(r"^\[(\d)/8\] (\w+)\s+(ok|FAILED|skipped)\s+(\d+\.\d)s\s")
PROBE_MIGRATION = ds.migration(
    "0002_deploy_probe", "0001_initial", "CREATE TABLE deploy_probe (id integer)",
    "DROP TABLE deploy_probe",
)  # fmt: skip


@pytest.fixture(scope="module")
def server(ssh_host, docker_engine, tmp_path_factory):
    with ds.deploy_server(tmp_path_factory.mktemp("deploy"), ssh_host) as srv:
        yield srv


@pytest.fixture(scope="module")
def v2_image(server):
    ds.publish(server.origin, server.work, "v2", {})
    return server.registry.publish(server.origin, server.work, "v2")


def steps(output: str) -> list[tuple[str, str]]:
    return [(m.group(2), m.group(3)) for m in map(STEP.match, output.splitlines()) if m]


def release_containers(env: str) -> list[str]:
    prefix = "aiia_django_prod_" if env == "production" else "aiia_django_staging_"
    names = ds.run(["docker", "ps", "-a", "--format", "{{.Names}}"]).stdout.split()
    return [n for n in names if n.startswith(prefix)]


def container_env(name: str) -> dict[str, str]:
    out = ds.run(["docker", "inspect", "--format", "{{json .Config.Env}}", name]).stdout
    return dict(item.partition("=")[::2] for item in json.loads(out) or [])


def assert_only_djangos_keys(container: str, env_file: Path, rendered: Path) -> None:
    """A release started by a deploy: not even the name of a key Django does not read, and
    the rendered file compose reads is the env file's Django keys, mode 0600."""
    env = container_env(container)
    named = set(env) & set(settings.withheld_from("django"))
    assert not named, f"{container} has the withheld names {sorted(named)}"
    values = appenv.parse(env_file.read_text())
    assert env["DJANGO_SECRET_KEY"] == values["DJANGO_SECRET_KEY"]
    assert rendered.stat().st_mode & 0o777 == 0o600

    def settings_lines(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("#")]

    assert settings_lines(rendered.read_text()) == settings_lines(appenv.render(values))


def report(capsys, *lines: str) -> None:
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_deploy_of_a_new_build_under_load_drops_no_request(server, v2_image, capsys):
    before = server.container_id("aiia_django_prod")
    hook = Hook()
    try:
        with ds.Load(server, ds.PROD_HOST) as load, ds.MemorySampler() as memory:
            proc = server.fab(
                *server.deploy_args("production", "--image", v2_image, "--why", "release v2",
                                    backup=True),
                SLACK_WEBHOOK_URL=hook.url.reveal(),
            )  # fmt: skip
            # the loop goes on a little after the deploy, on the new release alone
            time.sleep(2)
    finally:
        hook.close()
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy (production, v2) ---", out.strip(), load.summary(),
           memory.report())  # fmt: skip
    assert proc.returncode == 0, out
    assert steps(out) == [
        ("lock", "ok"), ("preflight", "ok"), ("backup", "ok"), ("image", "ok"),
        ("migrate", "ok"), ("release", "ok"), ("switch", "ok"), ("unlock", "ok"),
    ]  # fmt: skip
    assert load.failures == [], load.failures[:10]
    # the loop really ran through the switch (a count, not a rate: a busy machine answers
    # slower and that is not the deploy's doing)
    assert len(load.results) >= 100, load.summary()
    assert load.versions() == ["v1", "v2"]
    assert server.version("production") == "v2"
    # the release took the guide's name; the old container is gone, nothing else is left
    assert server.container_id("aiia_django_prod") != before
    assert release_containers("production") == []
    # compose recognises it as its own django_prod (labels carried over)
    ps = ds.run(
        [
            "docker",
            "compose",
            "-p",
            server.project,
            "--project-directory",
            str(server.prod),
            "ps",
            "--format",
            "{{.Name}}",
            "django_prod",
        ]
    ).stdout
    assert ps.split() == ["aiia_django_prod"]
    assert_only_djangos_keys(
        "aiia_django_prod", server.prod / ".env", server.prod / ".env.app" / "django_prod.env"
    )
    # the peak is when two production releases run side by side
    assert memory.overlap_samples > 0, "the sampler never saw both releases at once"
    assert any(n.startswith("aiia_django_prod_") for n in memory.peak_at), memory.report()
    entry = server.deploy_log("production")[-1]
    assert (entry["result"], entry["image"], entry["why"]) == ("ok", v2_image, "release v2")
    # the backups library took and verified a set before anything changed
    backup = Path(entry["backup"])
    assert backup.name.startswith("db_prod_")
    assert (server.prod / "backups" / backup.name / "MANIFEST.txt").is_file()
    assert "[3/8] backup     ok" in out and f"verified: {entry['backup']}" in out
    assert [body["text"] for _, _, body in hook.received][-1].startswith(
        ":white_check_mark: production deploy by"
    )
    transcripts = sorted((server.prod / "logs").glob("deploy_production_*.log"))
    assert transcripts and "[7/8] switch     ok" in transcripts[-1].read_text()


def test_a_dry_run_over_ssh_shows_every_command_and_changes_nothing(server, v2_image, capsys):
    before = server.container_id("aiia_django_prod")
    log = server.prod / "logs" / "deploys.log"
    logged = log.read_text() if log.exists() else None
    backups = sorted(p.name for p in (server.prod / "backups").glob("*"))
    proc = server.fab(*server.deploy_args("production", "--image", v2_image, "--dry-run",
                                          backup=True))  # fmt: skip
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy --dry-run (production) ---", out.strip())
    assert proc.returncode == 0, out
    assert [name for name, _status in steps(out)] == [
        "lock", "preflight", "backup", "image", "migrate", "release", "switch", "unlock",
    ]  # fmt: skip
    # what the hand-kept list of old left out is shown too, from the same table of steps
    for shown in (
        f"bash {server.prod}/scripts/backup.sh production",
        f"docker pull --quiet {v2_image}",
        "manage.py showmigrations --plan",
        "manage.py migrate --noinput",
        "manage.py collectstatic --noinput",
        join(cmd.nginx_reload()),
        "worker process is shutting",
        "docker image ls",
        f"{server.prod}/logs/deploys.log",
    ):
        assert shown in out, shown
    assert "dry run: nothing was changed" in out
    assert server.container_id("aiia_django_prod") == before
    assert (log.read_text() if log.exists() else None) == logged
    assert sorted(p.name for p in (server.prod / "backups").glob("*")) == backups
    assert not (server.prod / ".deploy" / "lock").exists()
    assert release_containers("production") == []


def test_a_build_that_fails_its_health_check_is_rolled_back_by_itself(server, capsys):
    path, text = ds.broken_health()
    ds.publish(
        server.origin,
        server.work,
        "bad-health",
        {path: text, PROBE_MIGRATION[0]: PROBE_MIGRATION[1]},
        branches=("staging",),
    )
    before_id = server.container_id("aiia_django_staging")
    before_version = server.version("staging")
    hook = Hook()
    try:
        with ds.Load(server, ds.STAGING_HOST) as load:
            proc = server.fab(
                *server.deploy_args("staging", "--ref", "bad-health", "--health-attempts", "5",
                                    "--health-interval", "1"),
                SLACK_WEBHOOK_URL=hook.url.reveal(),
            )  # fmt: skip
    finally:
        hook.close()
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy (staging, a build whose /health/ answers 503) ---",
           out.strip(), load.summary())  # fmt: skip
    assert proc.returncode == 1, out
    assert ("release", "FAILED") in steps(out)
    assert load.failures == [], load.failures[:10]
    assert load.versions() == [before_version]
    assert server.container_id("aiia_django_staging") == before_id
    assert release_containers("staging") == []
    entry = server.deploy_log("staging")[-1]
    assert entry["result"] == "failed"
    assert entry["reason"].startswith("health check failed: aiia_django_staging_")
    assert "not healthy after 5 attempts 1s apart (last: HTTP 503)" in entry["reason"]
    assert entry["migrations"] == ["core.0002_deploy_probe"]
    assert "FAILED" in hook.received[-1][2]["text"]
    # the migration stays applied (never reversed silently); the output says how to
    m = re.search(r"fab -H \S+ manage --env staging --release (\S+) --command "
                  r"'migrate core 0001_initial'", out)  # fmt: skip
    assert m, out
    assert "(NOT reversed): core.0002_deploy_probe" in out

    def manage(command: str):
        """`fab manage` on staging, in the image of the release that failed."""
        return server.fab(
            "manage", "--env", "staging", "--path", str(server.staging),
            "--release", m.group(1), "--command", command,
        )  # fmt: skip

    shown = manage("showmigrations core")
    assert "[X] 0002_deploy_probe" in shown.stdout, shown.stdout + shown.stderr
    reverse = manage("migrate core 0001_initial")
    assert reverse.returncode == 0, reverse.stdout + reverse.stderr
    shown = manage("showmigrations core")
    assert "[ ] 0002_deploy_probe" in shown.stdout


def test_a_failing_migration_stops_the_deploy_before_the_switch(server, capsys):
    good = ds.migration("0002_good_step", "0001_initial", "CREATE TABLE deploy_good (id int)",
                        "DROP TABLE deploy_good")  # fmt: skip
    boom = ds.migration("0003_boom", "0002_good_step", "SELECT * FROM no_such_table_here")
    ds.publish(server.origin, server.work, "bad-migration", dict([good, boom]),
               branches=("staging",))  # fmt: skip
    before_id = server.container_id("aiia_django_staging")
    before_version = server.version("staging")
    with ds.Load(server, ds.STAGING_HOST, rate=20) as load:
        proc = server.fab(*server.deploy_args("staging", "--ref", "bad-migration"))
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy (staging, a failing migration) ---", out.strip(),
           load.summary())  # fmt: skip
    assert proc.returncode == 1, out
    assert steps(out)[-2:] == [("migrate", "FAILED"), ("unlock", "ok")]
    assert "migration core.0003_boom failed after applying 1" in out
    assert "(NOT reversed): core.0002_good_step" in out
    assert not any(line.startswith("[6/8]") for line in out.splitlines())
    assert server.container_id("aiia_django_staging") == before_id
    assert server.version("staging") == before_version
    assert load.failures == []
    assert release_containers("staging") == []
    entry = server.deploy_log("staging")[-1]
    assert (entry["result"], entry["migrations"]) == ("failed", ["core.0002_good_step"])


def test_a_failing_pre_deploy_backup_stops_the_deploy(server, capsys):
    """Step 3 runs the backups library (scripts/backup.sh on the server); here it cannot
    write its backups/ directory, which is a file."""
    blocker = server.staging / "backups"
    if blocker.is_dir():
        blocker.rename(server.staging / f"backups.moved-{uuid.uuid4().hex[:6]}")
    blocker.write_text("not a directory\n")
    before_id = server.container_id("aiia_django_staging")
    try:
        proc = server.fab(*server.deploy_args("staging", "--ref", "staging", backup=True))
    finally:
        blocker.unlink()
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy (staging) whose backup fails ---", out.strip())
    assert proc.returncode == 1, out
    assert steps(out) == [("lock", "ok"), ("preflight", "ok"), ("backup", "FAILED"),
                          ("unlock", "ok")]  # fmt: skip
    assert server.container_id("aiia_django_staging") == before_id
    entry = server.deploy_log("staging")[-1]
    assert entry["result"] == "failed" and entry["reason"].startswith("pre-deploy backup")
    assert entry["release"] == ""


def test_concurrent_deploys_and_one_killed_midway(server, capsys):
    """The second deploy is refused naming the first; the first is killed (its SSH
    connection drops with it), lock-status explains the lock it left, lock-release clears
    it, and the next deploy succeeds."""
    ds.publish(server.origin, server.work, "v3", {}, branches=("staging",))
    args = server.deploy_args("staging", "--ref", "v3", "--why", "first of two")
    first = server.fab_popen(*args)
    seen: list[str] = []
    try:
        for line in first.stdout:
            seen.append(line)
            if line.startswith("[1/8] lock"):
                break
        assert seen and " ok " in seen[-1], "".join(seen)
        second = server.fab(*server.deploy_args("staging", "--ref", "v3", "--why", "second"))
        out2 = second.stdout + second.stderr
        assert second.returncode == 75, out2
        assert re.search(r"refused: staging is locked by \S+ since \S+ \(\d+s ago\): deploy "
                         r"staging ref v3 \(why: first of two\)", out2), out2  # fmt: skip
        for line in first.stdout:
            seen.append(line)
            if line.startswith("[5/8] migrate"):
                break
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(30)
    report(capsys, "--- the first deploy, killed after its migrations ---", "".join(seen))

    def status() -> str:
        return server.fab("lock-status", "--env", "staging", "--path", str(server.staging)).stdout

    text = wait_until(
        lambda: (lambda t: t if "is gone" in t else None)(status()),
        timeout=60,
        what="lock-status seeing the killed deploy's connection gone",
    )
    report(capsys, "--- fab lock-status ---", text.strip())
    assert text.startswith("staging: locked by ")
    assert "deploy staging ref v3 (why: first of two)" in text
    assert "that deploy was interrupted" in text
    assert "lock-release --env staging" in text
    released = server.fab("lock-release", "--env", "staging", "--path", str(server.staging))
    assert released.returncode == 0 and "released the lock held by" in released.stdout
    assert status().strip() == "staging: not locked"
    proc = server.fab(*server.deploy_args("staging", "--ref", "v3", "--why", "after the kill"))
    out = proc.stdout + proc.stderr
    report(capsys, "--- the next deploy ---", out.strip())
    assert proc.returncode == 0, out
    assert server.version("staging") == "v3"
    assert release_containers("staging") == []


def test_rollback_brings_back_the_previous_version_without_dropping_a_request(server, capsys):
    assert server.version("production") == "v2"
    with ds.Load(server, ds.PROD_HOST) as load:
        proc = server.fab("rollback", "--env", "production", "--path", str(server.prod),
                          "--why", "v2 misbehaves")  # fmt: skip
        time.sleep(2)
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab rollback (production) ---", out.strip(), load.summary())
    assert proc.returncode == 0, out
    assert [s for s, status in steps(out) if status == "skipped"] == ["backup", "migrate"]
    assert load.failures == [], load.failures[:10]
    assert load.versions() == ["v2", "v1"]
    assert server.version("production") == "v1"
    entry = server.deploy_log("production")[-1]
    assert (entry["action"], entry["result"], entry["release"]) == (
        "rollback",
        "ok",
        entry["release"],
    )
    assert entry["release"].endswith("-initial")
    history = server.fab("deploys", "--env", "production", "--path", str(server.prod))
    rows = history.stdout.splitlines()
    report(capsys, "--- fab deploys (production) ---", history.stdout.strip())
    assert rows[0].split()[:3] == ["when", "(UTC)", "env"]
    assert " rollback " in rows[-1] and rows[-1].endswith("ok")
    assert " deploy " in rows[-2] and rows[-2].endswith("ok")
    kept = server.fab("releases", "--env", "production", "--path", str(server.prod))
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines()[0] == (
        f"production: serving {entry['release']} from aiia_django_prod"
    )
    assert f" * {entry['release']}" in kept.stdout and "version" in kept.stdout
    health = server.fab("healthcheck")
    report(capsys, "--- fab healthcheck ---", health.stdout.strip())
    assert health.returncode == 0, health.stdout + health.stderr
    assert re.search(r"^production: aiia_django_prod \(release \S+-initial\) healthy, "
                     r"version v1$", health.stdout, re.M), health.stdout  # fmt: skip
    assert re.search(r"^staging: aiia_django_staging \(release \S+\) healthy", health.stdout,
                     re.M)  # fmt: skip


def test_hostile_input_changes_nothing_outside_its_meaning(server, v2_image, capsys):
    tag = uuid.uuid4().hex[:8]
    marks = [Path(f"/tmp/pwned-{tag}-{i}") for i in range(6)]
    ref = f"main; touch {marks[0]}"
    why = f"$(touch {marks[1]}) `touch {marks[2]}` '\"; touch {marks[3]}"
    proc = server.fab(*server.deploy_args("staging", "--ref", ref, "--why", why))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"no commit named {ref!r}" in out
    entry = server.deploy_log("staging")[-1]
    assert (entry["ref"], entry["why"], entry["result"]) == (ref, why, "failed")

    # env values with quotes, $() and backticks reach the app as they are written
    secret = f"k3y-{uuid.uuid4().hex}-\"q'$(touch {marks[4]})`touch {marks[5]}`-" + "z" * 20
    env_file = server.staging / ".env"
    text = env_file.read_text()
    text = re.sub(r"^DJANGO_SECRET_KEY=.*$", lambda _m: f"DJANGO_SECRET_KEY={secret}", text,
                  flags=re.M)  # fmt: skip
    env_file.write_text(text)
    proc = server.fab(*server.deploy_args("staging", "--image", v2_image))
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy (staging) with a hostile env value ---", out.strip())
    assert proc.returncode == 0, out
    seen = ds.run(["docker", "exec", "aiia_django_staging", "python", "-c",
                   "import os; print(os.environ['DJANGO_SECRET_KEY'])"]).stdout  # fmt: skip
    assert seen == secret + "\n"
    assert server.version("staging") == "v2"
    assert not any(m.exists() for m in marks), [m for m in marks if m.exists()]
    assert secret not in out and secret not in json.dumps(server.deploy_log("staging"))


def test_the_guides_deploy_script_on_the_server(server, v2_image, capsys):
    """`bash scripts/deploy.sh staging` in the checkout, as the guide's manual path."""
    # the deploy renders staging's app env file itself, from the env file it checks
    rendered = server.prod / ".env.app" / "django_staging.env"
    rendered.unlink()
    with server.ssh.connection() as c:
        res = c.run(
            f"cd {server.staging} && bash scripts/deploy.sh staging --image {v2_image} "
            "--skip-backup --why 'manual deploy'",
            hide=True, warn=True, timeout=1800,
        )  # fmt: skip
    out = res.stdout + res.stderr
    report(capsys, "--- bash scripts/deploy.sh staging ---", out.strip())
    assert res.exited == 0, out
    assert [s for s, _ in steps(out)] == [
        "lock",
        "preflight",
        "backup",
        "image",
        "migrate",
        "release",
        "switch",
        "unlock",
    ]
    logs = sorted((server.staging / "logs").glob("deploy_staging_*.log"))
    assert logs, "no logs/deploy_staging_*.log"
    assert "[6/8] release    ok" in logs[-1].read_text()
    entry = server.deploy_log("staging")[-1]
    assert entry["result"] == "ok" and entry["who"].endswith("(scripts/deploy.sh)")
    assert server.version("staging") == "v2"
    assert_only_djangos_keys("aiia_django_staging", server.staging / ".env", rendered)


# --- every client kind through each way nginx's target or configuration changes -------


def _zero_errors(server, capsys, case: str, action):
    """Run `action` while kept-alive HTTP/1.1 (wrk), HTTP/2 (as a browser sends it: a
    stream nginx's GOAWAY says it never processed goes again) and one-request-per-connection
    loops, GET and POST, go through nginx to production; print the counts; fail on any
    error of any kind."""
    from tests.remote.clients import Clients

    work = server.base / "clients" / re.sub(r"\W+", "-", case)
    with Clients(server, ds.PROD_HOST, work) as clients:
        out = action()
        time.sleep(2)
    report(capsys, clients.report(case))
    if out is not None:
        assert out.returncode in (0, 1), out.stdout + out.stderr
    assert clients.problems() == [], clients.problems()
    for tally in clients.tallies:
        assert tally.requests > 0, clients.report(case)
        assert tally.failed == 0, clients.report(case)
    return out


def test_no_client_kind_sees_an_error_through_a_deploy_a_rollback_or_a_failed_gate(
    server, v2_image, capsys
):
    assert server.version("production") == "v1"
    deployed = _zero_errors(server, capsys, "fab deploy --image (production, v1 -> v2)",
                            lambda: server.fab(*server.deploy_args("production", "--image",
                                                                   v2_image)))  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert server.version("production") == "v2"
    # a build of its own whose /health/ answers 503 (the test runs alone with -k too)
    ds.publish(server.origin, server.work, "bad-gate", dict([ds.broken_health()]),
               branches=())  # fmt: skip
    gate = _zero_errors(
        server, capsys, "fab deploy --ref bad-gate (production, the health gate fails)",
        lambda: server.fab(*server.deploy_args("production", "--ref", "bad-gate",
                                               "--health-attempts", "3",
                                               "--health-interval", "1")),
    )  # fmt: skip
    assert gate.returncode == 1 and "health check failed" in gate.stdout + gate.stderr
    assert server.version("production") == "v2"
    rolled = _zero_errors(server, capsys, "fab rollback (production, v2 -> v1)",
                          lambda: server.fab("rollback", "--env", "production", "--path",
                                             str(server.prod)))  # fmt: skip
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert server.version("production") == "v1"


def test_no_client_kind_sees_an_error_through_an_nginx_configuration_reload(server, capsys):
    """What a certificate renewal's deploy hook and a configuration change run."""
    reloaded = _zero_errors(server, capsys, "docker exec aiia_nginx aiia-reload",
                            lambda: ds.run(["docker", "exec", "aiia_nginx", "aiia-reload"],
                                           check=False, timeout=120))  # fmt: skip
    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr


def _served_serial(server) -> int:
    """The serial of the certificate nginx presents for the production site."""
    from cryptography import x509

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", server.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=ds.PROD_HOST) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def _stack_gateway() -> str:
    """The address this machine has on the stack's network (the nginx container's gateway)."""
    out = ds.run(["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}",
                  "aiia_nginx"]).stdout  # fmt: skip
    gateways = [n["Gateway"] for n in json.loads(out).values() if n.get("Gateway")]
    assert len(gateways) == 1, out
    return gateways[0]


def test_no_client_kind_sees_an_error_through_a_forced_certificate_renewal(server, capsys):
    """`fab renew-certs --force` against a real ACME server: Debian's pebble, here.

    pebble and its DNS server run on this machine: every name resolves to 127.0.0.1, so
    pebble validates each HTTP-01 challenge through the stack's published port 80 and
    nginx's webroot. certbot runs where the guide runs it, in aiia_nginx, and reaches
    pebble's ACME listener on the stack network's gateway. That listener's certificate
    comes from a test CA the container cannot trust (its root file system is read-only and
    `fab renew-certs` passes no CA), so certbot is told, in /etc/letsencrypt/cli.ini of
    the test's server, not to verify it: ACME itself (account, orders, challenges,
    issuance) is real. The certificate is issued first, as `fab setup` does (certonly
    through the webroot, then nginx restarted); the forced renewal runs under the clients
    and is put in service by certbot's deploy hook (aiia-reload).
    """
    from opskit import certs
    from tests.harness.acme import ChallengeDNS, Pebble
    from tests.harness.core import free_port, wait_until

    root = server.base / "acme"
    root.mkdir(exist_ok=True)
    cli_ini = ["docker", "exec", "aiia_nginx", "sh", "-c"]
    dns = ChallengeDNS(port=free_port(), root=root).start()
    pebble = None
    try:
        pebble = Pebble(root / "pebble", http_port=server.http_port, dns=dns,
                        host=_stack_gateway()).start()  # fmt: skip
        ds.run([*cli_ini, "printf 'no-verify-ssl = true\\n' > /etc/letsencrypt/cli.ini"])
        issued = ds.run(certs.in_container(certs.certonly(email=None,
                                                          server=pebble.directory_url)),
                        check=False, timeout=300)  # fmt: skip
        assert issued.returncode == 0, issued.stdout + issued.stderr
        ds.run(["docker", "restart", "aiia_nginx"], timeout=120)
        wait_until(
            lambda: ds.run(["docker", "inspect", "--format", "{{.State.Health.Status}}",
                            "aiia_nginx"]).stdout.strip() == "healthy",
            timeout=90, what="aiia_nginx healthy after its restart",
        )  # fmt: skip
        status = server.fab("cert-status")
        report(capsys, "--- fab cert-status (pebble's certificate, issued) ---",
               status.stdout.strip())  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert "nginx serves this certificate" in status.stdout
        before = _served_serial(server)

        renewed = _zero_errors(server, capsys, "fab renew-certs --force (pebble)",
                               lambda: server.fab("renew-certs", "--force"))  # fmt: skip
        out = renewed.stdout + renewed.stderr
        report(capsys, "--- fab renew-certs --force ---", out.strip())
        assert renewed.returncode == 0, out
        assert "nginx reloaded by certbot's hook, serving it" in out, out
        after = _served_serial(server)
        assert after != before
        lineage = ds.run(certs.read_cert()).stdout
        assert certs.parse_cert(lineage).serial == after
    finally:
        ds.run([*cli_ini, "rm -f /etc/letsencrypt/cli.ini"], check=False)
        if pebble is not None:
            pebble.stop()
        dns.stop()


# --- the workflows, run here step by step (tests/remote/workflows.py) --------------------


def _registry_files(server) -> set[str]:
    root = server.base / "registry"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_the_workflows_deploy_staging_and_promote_its_digest_to_production(server, capsys):
    """staging.yml's build and deploy jobs build with compose, push to the registry and run
    `fab deploy`; production.yml for the same commit finds staging's image and deploys
    that digest: no test run, no build, nothing pushed."""
    from tests.remote.workflows import Runner
    from tests.stack.stackkit import host_ca_bundle

    sha = ds.publish(server.origin, server.work, "wf", {"app/core/workflow.txt": "run\n"},
                     branches=("staging", "main"))  # fmt: skip
    workflows = ROOT / ".github" / "workflows"

    def run_workflow(name: str, branch: str, path) -> dict:
        runner = Runner(
            workflow=workflows / f"{name}.yml",
            origin=server.origin,
            sha=sha,
            base=server.base / f"workflow-{name}",
            github={
                "sha": sha,
                "ref": f"refs/heads/{branch}",
                "repository": "Acme/AIIA",
                "actor": "octo",
                "run_id": 4242,
                "event_name": "push",
            },  # fmt: skip
            secrets={
                "DEPLOY_SSH_KEY": Path(server.ssh.key_filename).read_text(),
                "DEPLOY_KNOWN_HOSTS": Path(server.ssh.known_hosts).read_text()
                if Path(server.ssh.known_hosts).is_file()
                else "",
                "GITHUB_TOKEN": "loopback-registry-needs-none",
            },
            vars={
                "DEPLOY_HOST": f"{server.ssh.user}@{server.ssh.host}:{server.ssh.port}",
                "DEPLOY_PATH": str(path),
                "STAGING_PATH": str(server.staging),
                "REGISTRY": server.registry.address,
            },
            # what this machine needs that a GitHub runner does not: pip in the build
            # trusts this machine's CA (compose/release.yml's build secret)
            runner_env={"EXTRA_CA_CERTS": host_ca_bundle()},
            assume_passed=("test",),  # the test job is this very suite
        )
        jobs = runner.run()
        report(capsys, f"--- workflow {name} (push of {sha[:12]} to {branch}) ---",
               *(job.transcript() for job in jobs.values()))  # fmt: skip
        return jobs

    staging = run_workflow("staging", "staging", server.staging)
    # jobs that run only on failure (notifications) are skipped and left out here
    assert [(n, j.result) for n, j in staging.items() if j.ran] == [
        ("test", "success"), ("build", "success"), ("deploy", "success"),
    ]  # fmt: skip
    image = f"{server.registry.address}/acme/aiia/app:{sha}"
    assert staging["build"].outputs == {"image": image}
    assert server.version("staging") == sha[:12]
    staged = server.deploy_log("staging")[-1]
    assert (staged["result"], staged["image"], staged["commit"]) == ("ok", image, sha)
    assert staged["digest"].startswith(f"{server.registry.address}/acme/aiia/app@sha256:")
    assert staged["who"].startswith("octo (github actions Acme/AIIA run 4242)")

    pushed = _registry_files(server)
    production = run_workflow("production", "main", server.prod)
    assert [(n, j.result) for n, j in production.items() if n != "notify"] == [
        ("staged", "success"), ("test", "skipped"), ("build", "skipped"), ("deploy", "success"),
    ]  # fmt: skip
    assert production["staged"].outputs == {"image": staged["digest"]}
    assert _registry_files(server) == pushed, "production's run pushed to the registry"
    assert server.version("production") == sha[:12]
    promoted = server.deploy_log("production")[-1]
    assert (promoted["result"], promoted["image"], promoted["digest"], promoted["commit"]) == (
        "ok", staged["digest"], staged["digest"], sha,
    )  # fmt: skip
    kept = server.fab("releases", "--env", "production", "--path", str(server.prod))
    report(capsys, "--- fab releases (production) ---", kept.stdout.strip())
    assert f"commit {sha[:12]}" in kept.stdout and staged["digest"] in kept.stdout


def test_the_checkout_follows_an_image_and_its_nginx_change_applies_without_errors(server, capsys):
    """An --image deploy whose commit changes nginx/templates/ moves the production
    checkout there and names the change; `fab apply-services` puts it in service with no
    client error; a rollback moves the checkout back, and applying again restores nginx."""
    snippet = "nginx/templates/snippets/acme-and-health.conf"
    text = (ROOT / snippet).read_text() + (
        "\n# a release that changes nginx\nlocation = /release-probe {\n"
        '    default_type text/plain;\n    return 200 "v5\\n";\n}\n'
    )
    sha5 = ds.publish(server.origin, server.work, "v5", {snippet: text}, base="wf",
                      branches=("main",))  # fmt: skip
    image = server.registry.publish(server.origin, server.work, "v5")

    def head() -> str:
        return ds.run(["git", "-C", server.prod, "rev-parse", "HEAD"]).stdout.strip()

    before = head()
    proc = server.fab(*server.deploy_args("production", "--image", image))
    out = proc.stdout + proc.stderr
    report(capsys, "--- fab deploy --image v5 (changes nginx/templates/) ---", out.strip())
    assert proc.returncode == 0, out
    assert head() == sha5
    assert f"checkout {before[:12]} -> {sha5[:12]}" in out
    assert f"configs of nginx changed ({snippet})" in out
    assert "apply-services --env production --service nginx" in out
    assert server.https(ds.PROD_HOST, "/release-probe")[0] == 404  # not applied yet: Django's

    applied = _zero_errors(
        server, capsys, "fab apply-services --service nginx (the v5 templates)",
        lambda: server.fab("apply-services", "--env", "production", "--path", str(server.prod),
                           "--service", "nginx"),
    )  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert server.https(ds.PROD_HOST, "/release-probe")[0] == 200

    rolled = server.fab("rollback", "--env", "production", "--path", str(server.prod))
    out = rolled.stdout + rolled.stderr
    report(capsys, "--- fab rollback (production, v5 -> the workflow's release) ---", out)
    assert rolled.returncode == 0, out
    assert head() == before
    assert f"checkout {sha5[:12]} -> {before[:12]}" in out
    again = server.fab("apply-services", "--env", "production", "--path", str(server.prod))
    assert again.returncode == 0, again.stdout + again.stderr
    assert server.https(ds.PROD_HOST, "/release-probe")[0] == 404
