"""Deploy builders by their exact argv, and parsers on saved server output."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from opskit.commands import deploy as cmd
from opskit.shell import join, sh
from tests.harness.appenv import compose_config, project_dir, render_server
from tests.harness.core import ROOT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "deploy"
PROD = cmd.ENVIRONMENTS["production"]
RELEASE = "20250101-120000-abc1234"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_bytes().decode()


def spec() -> cmd.ServiceSpec:
    return cmd.service_spec(json.loads(fixture("compose_config.json")), "django_prod")


# --- names and values -----------------------------------------------------------------


def test_the_guides_names_and_paths():
    staging = cmd.ENVIRONMENTS["staging"]
    assert (PROD.path, PROD.container, PROD.port) == (
        "/home/ubuntu/main/ai-ia-backend",
        "aiia_django_prod",
        8000,
    )
    assert (staging.path, staging.container, staging.port) == (
        "/home/ubuntu/staging/ai-ia-backend",
        "aiia_django_staging",
        8001,
    )
    assert PROD.transcript(datetime(2025, 1, 2, 3, 4, 5)) == (
        "/home/ubuntu/main/ai-ia-backend/logs/deploy_production_20250102_030405.log"
    )
    assert PROD.release_container(RELEASE) == "aiia_django_prod_20250101-120000-abc1234"
    assert PROD.release_image(RELEASE) == "aiia/app:production-20250101-120000-abc1234"
    assert cmd.environment("staging", "/srv/st/").env_file == "/srv/st/.env"


def test_release_ids_sort_by_time_and_name_their_source():
    started = datetime(2025, 1, 1, 12, 0, 0)
    assert cmd.release_id(started, "ABC1234def") == RELEASE
    assert cmd.release_id(started, "sha256:0f1e2d3c4b5a") == "20250101-120000-0f1e2d3"
    assert cmd.release_id(started) == "20250101-120000"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (cmd.check_release, "latest; rm -rf /"),
        (cmd.check_release, "../20250101-120000"),
        (cmd.check_image, "--help"),
        (cmd.check_image, "image name"),
        (cmd.check_ref, "--upload-pack=touch /tmp/x"),
        (cmd.check_ref, "main\nmaster"),
        (cmd.commit_id, "main"),
    ],
    ids=[
        "release-shell",
        "release-path",
        "image-option",
        "image-space",
        "ref-option",
        "ref-newline",
        "commit-not-hex",
    ],
)
def test_values_that_would_be_misread_are_refused(check, value):
    with pytest.raises(cmd.BuilderError):
        check(value)


def test_unknown_environment_and_relative_path_are_refused():
    with pytest.raises(cmd.BuilderError, match="unknown environment"):
        cmd.environment("prod")
    with pytest.raises(cmd.BuilderError, match="absolute"):
        cmd.environment("production", "main/ai-ia-backend")


# --- pre-flight parsers --------------------------------------------------------------


def test_parse_df_and_meminfo_of_saved_output():
    assert cmd.parse_df(fixture("df.txt")) == 78406180 // 1024
    mem = cmd.parse_meminfo(fixture("meminfo.txt"))
    assert mem["MemAvailable"] == 23254464 // 1024
    assert mem["SwapFree"] == 0
    assert mem["Active(anon)"] == 134412 // 1024


def test_env_containers_are_listed_by_label():
    argv = cmd.env_containers(PROD)
    assert argv[:5] == ["docker", "ps", "--all", "--no-trunc", "--filter"]
    assert argv[5] == "label=aiia.env=production"
    rows = cmd.parse_env_containers(
        "aiia_django_prod\trunning\t20250101-120000\n"
        "aiia_django_prod_20250102-120000\texited\t20250102-120000\n\n"
    )
    assert rows == [
        ("aiia_django_prod", "running", "20250101-120000"),
        ("aiia_django_prod_20250102-120000", "exited", "20250102-120000"),
    ]


# --- the image -----------------------------------------------------------------------


def test_image_builders():
    assert cmd.pull("registry.local:5000/aiia/app:abc") == [
        "docker",
        "pull",
        "--quiet",
        "registry.local:5000/aiia/app:abc",
    ]
    assert cmd.tag("r/a:1", PROD.release_image(RELEASE)) == [
        "docker",
        "tag",
        "r/a:1",
        "aiia/app:production-20250101-120000-abc1234",
    ]
    assert cmd.git_fetch("/srv/x") == [
        "git",
        "-C",
        "/srv/x",
        "fetch",
        "--quiet",
        "--prune",
        "--tags",
        "origin",
    ]


def test_parse_image_reads_id_and_app_version():
    saved = json.dumps(
        {
            "Id": "sha256:0123456789abcdef",
            "Created": "2025-01-01T00:00:00Z",
            "Config": {"Env": ["PATH=/opt/venv/bin", "APP_VERSION=v2-1-gabc"], "Labels": None},
            "RepoDigests": ["ghcr.io/acme/app@sha256:abc"],
        }
    )
    assert cmd.parse_image(saved + "\n") == {
        "id": "sha256:0123456789abcdef",
        "version": "v2-1-gabc",
        "labels": {},
        "created": "2025-01-01T00:00:00Z",
        "digests": ["ghcr.io/acme/app@sha256:abc"],
    }


def test_a_hostile_ref_stays_one_word_for_git(tmp_path):
    """`main; touch X` reaches git as the name of a ref, which does not exist."""
    marker = tmp_path / "pwned"
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "one",
        ],
        check=True,
    )
    for ref in (f"main; touch {marker}", f"$(touch {marker})", f"`touch {marker}`"):
        argv = cmd.git_resolve(str(repo), ref)
        # as the remote shell would see it: one line joined with shlex
        res = subprocess.run(["bash", "-c", join(argv)], capture_output=True, text=True)
        assert res.returncode != 0 and res.stdout == ""
    head = subprocess.run(
        ["bash", "-c", join(cmd.git_resolve(str(repo), "HEAD"))], capture_output=True, text=True
    )
    assert head.returncode == 0 and len(head.stdout.strip()) == 40
    assert not marker.exists()


def test_git_archive_exports_a_commit_without_touching_the_checkout(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.txt").write_text("committed\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    (repo / "f.txt").write_text("edited, not committed\n")
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    dest = tmp_path / "app" / ".deploy" / "build" / RELEASE
    subprocess.run(cmd.git_archive(str(repo), commit, str(dest)), check=True)
    assert (dest / "f.txt").read_text() == "committed\n"
    assert (repo / "f.txt").read_text() == "edited, not committed\n"
    subprocess.run(cmd.remove_build_dir(str(dest)), check=True)
    assert not dest.exists()


def test_only_build_directories_are_ever_removed():
    with pytest.raises(cmd.BuilderError):
        cmd.remove_build_dir("/home/ubuntu/main/ai-ia-backend")


def test_build_spec_escapes_dollars_and_builds_the_prod_target():
    text = cmd.build_spec("/srv/b $x", "aiia/app:production-" + RELEASE, "v$(id)", None)
    data = json.loads(text)
    build = data["services"]["app"]["build"]
    assert build["context"] == "/srv/b $$x"
    assert build["target"] == "prod"
    assert build["args"] == {"APP_VERSION": "v$$(id)", "REVISION": "unknown"}
    commit = "a" * 40
    with_revision = json.loads(cmd.build_spec("/srv/b", "aiia/app:x", "v1", None, commit))
    assert with_revision["services"]["app"]["build"]["args"]["REVISION"] == commit
    assert data["secrets"]["extra_ca"]["file"] == "/srv/b $$x/compose/app/no-extra-ca.pem"
    assert cmd.compose_build("/srv/b") == [
        "docker",
        "compose",
        "--project-directory",
        "/srv/b",
        "-f",
        "-",
        "build",
        "--quiet",
        "app",
    ]


# --- the service definition ----------------------------------------------------------


def test_service_spec_from_saved_compose_config():
    s = spec()
    flags = list(s.flags)
    assert flags[:2] == ["--memory", "157286400"]
    for pair in (
        ["--cap-drop", "ALL"],
        ["--security-opt", "no-new-privileges:true"],
        ["--tmpfs", "/tmp:size=16m"],
        ["--restart", "unless-stopped"],
        ["--stop-timeout", "30"],
        ["--log-opt", "max-size=10m"],
        ["--health-interval", "30s"],
        ["--health-retries", "3"],
        ["--label", "org.example.role=app"],
    ):
        i = flags.index(pair[0], flags.index(pair[0]))
        assert pair[1] in flags[i:], pair
    assert "--read-only" in flags
    # the exec-form health check keeps its words, and compose's $$ is a literal $
    assert flags[flags.index("--health-cmd") + 1] == "python3 -c 'print('\"'\"'ok $HOME'\"'\"')'"
    assert s.volumes == (
        "type=volume,source=aiia_static_prod,target=/app/staticfiles",
        "type=volume,source=aiia_media_prod,target=/app/media",
    )
    assert s.network == "aiia_network"
    assert s.aliases == ("django_prod",)
    assert s.environment["DJANGO_SECRET_KEY"] == 'ab$c"d`e`$(f)'
    assert s.environment["POSTGRES_PASSWORD"] == "p@ss word"


def test_env_file_is_literal_and_refuses_line_breaks():
    s = spec()
    assert 'DJANGO_SECRET_KEY=ab$c"d`e`$(f)\n' in s.env_file()
    broken = cmd.ServiceSpec(flags=(), environment={"A": "x\ny"})
    with pytest.raises(cmd.BuilderError, match="line break"):
        broken.env_file()


def test_env_file_leaves_out_what_compose_blanked_for_the_app():
    s = cmd.ServiceSpec(
        flags=(),
        environment={
            "DJANGO_SECRET_KEY": "k" * 50,
            "DJANGO_STATIC_ROOT": "",  # Django's own key, empty: kept (its default)
            "S3_SECRET_ACCESS_KEY": "",
            "DJANGO_SUPERUSER_PASSWORD": "",
            "SLACK_WEBHOOK_URL": "",
            "REDIS_ADMIN_PASSWORD": "",
        },
    )
    assert s.env_file() == f"DJANGO_SECRET_KEY={'k' * 50}\nDJANGO_STATIC_ROOT=\n"


def test_service_without_network_or_unknown_is_refused():
    with pytest.raises(cmd.BuilderError, match="no service"):
        cmd.service_spec({"services": {}}, "django_prod")
    with pytest.raises(cmd.BuilderError, match="no network"):
        cmd.service_spec({"services": {"django_prod": {}}}, "django_prod")


def test_run_release_starts_beside_the_old_one():
    argv = cmd.run_release(PROD, spec(), RELEASE, PROD.release_image(RELEASE), "main@abc")
    assert argv[:6] == [
        "docker",
        "run",
        "--detach",
        "--name",
        "aiia_django_prod_20250101-120000-abc1234",
        "--network",
    ]
    assert argv[6:10] == ["aiia_network", "--network-alias", "django_prod", "--env-file"]
    assert argv[10] == "/dev/stdin"
    assert argv[-1] == "aiia/app:production-20250101-120000-abc1234"
    assert "aiia.release=20250101-120000-abc1234" in argv
    assert "aiia.env=production" in argv and "aiia.source=main@abc" in argv
    # no secret is on the command line
    assert not any("p@ss" in a or "ab$c" in a for a in argv)


def test_run_oneoff_keeps_limits_but_not_restart_or_health():
    argv = cmd.run_oneoff(PROD, spec(), RELEASE, "img:1", "migrate", cmd.migrate())
    assert argv[:5] == [
        "docker",
        "run",
        "--rm",
        "--name",
        "aiia_django_prod_migrate_20250101-120000-abc1234",
    ]
    assert argv[-5:] == ["python", "img:1", "manage.py", "migrate", "--noinput"]
    assert argv[argv.index("--entrypoint") + 1] == "python"
    assert "--restart" not in argv and "--health-cmd" not in argv
    assert "--read-only" in argv and "--memory" in argv
    with pytest.raises(cmd.BuilderError):
        cmd.run_oneoff(PROD, spec(), RELEASE, "img:1", "x; y", ["true"])


# --- migrations ----------------------------------------------------------------------


def test_migration_plan_and_reverse_targets():
    plan = cmd.parse_plan(fixture("showmigrations_plan.txt"))
    assert plan.pending == ("core.0002_note_tags", "core.0003_note_index")
    assert plan.last_applied("core") == "0001_initial"
    assert plan.last_applied("newapp") == "zero"
    applied, failed = cmd.parse_migrate(fixture("migrate_failed.txt"))
    assert applied == ["core.0002_note_tags"] and failed == "core.0003_note_index"
    assert cmd.reverse_targets(plan, applied) == [("core", "0001_initial")]
    assert cmd.parse_migrate("Running migrations:\n  No migrations to apply.\n") == ([], None)


# --- health --------------------------------------------------------------------------


def test_probe_runs_in_nginx_with_values_as_arguments():
    argv = cmd.probe("aiia_django_prod_x", 8000)
    assert argv[:6] == ["docker", "exec", "aiia_nginx", "timeout", "5", "bash"]
    assert argv[-4:] == ["probe", "aiia_django_prod_x", "8000", "/health/"]


def test_probe_script_speaks_http_to_a_real_server(tmp_path):
    """The probe script itself, against a local HTTP server answering like /health/."""
    import http.server
    import threading

    body = fixture("health_ok.http").split("\r\n\r\n", 1)[1].encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/health/" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # what cmd.probe runs inside nginx, here on this machine
    argv = ["timeout", "5", "bash", "-c", cmd.PROBE, "probe", "127.0.0.1",
            str(server.server_port), "/health/"]  # fmt: skip
    try:
        res = subprocess.run(argv, capture_output=True, text=True)
    finally:
        server.shutdown()
        server.server_close()
    health = cmd.parse_health(res.returncode, res.stdout)
    assert health == cmd.Health(True, 200, "v2-3-gabc", "ok")
    closed = subprocess.run(argv, capture_output=True, text=True)
    assert cmd.parse_health(closed.returncode, closed.stdout).ok is False


@pytest.mark.parametrize(
    ("exited", "name", "expect"),
    [
        (0, "health_ok.http", cmd.Health(True, 200, "v2-3-gabc", "ok")),
        (0, "health_fail.http", cmd.Health(False, 503, "v3", "HTTP 503 (database: timeout)")),
        (7, None, cmd.Health(False, None, "", "connection refused or name not found")),
        (124, None, cmd.Health(False, None, "", "no answer in time")),
    ],
    ids=["ok", "503", "refused", "timeout"],
)
def test_parse_health(exited, name, expect):
    assert cmd.parse_health(exited, fixture(name) if name else "") == expect


# --- nginx ---------------------------------------------------------------------------


def test_upstream_file_round_trip_and_atomic_write():
    text = cmd.upstream_conf("aiia_django_prod_" + RELEASE, 8000, RELEASE)
    assert text.endswith("server aiia_django_prod_20250101-120000-abc1234:8000;\n")
    assert cmd.parse_upstream(text) == ("aiia_django_prod_20250101-120000-abc1234", 8000)
    assert cmd.parse_upstream("server django_prod:8000 max_fails=0;") == ("django_prod", 8000)
    assert cmd.parse_upstream("# nothing\n") is None
    with pytest.raises(cmd.BuilderError):
        cmd.upstream_conf("x;}", 8000)
    assert cmd.write_upstream(PROD) == [
        "docker",
        "exec",
        "-i",
        "aiia_nginx",
        "sh",
        "-c",
        'cat > "$1.new" && mv -f -- "$1.new" "$1"',
        "sh",
        "/run/nginx/conf/upstreams/prod.conf",
    ]
    assert cmd.nginx_test() == ["docker", "exec", "aiia_nginx", "nginx", "-t", "-q"]
    assert cmd.nginx_reload() == [
        "docker", "exec", "aiia_nginx", "sh", "-c",
        "command -v aiia-reload >/dev/null 2>&1 && exec aiia-reload; exec nginx -s reload",
    ]  # fmt: skip


def test_draining_counts_retitled_workers(tmp_path):
    """The script counts processes whose title says they are still shutting down."""
    worker = subprocess.Popen(
        ["bash", "-c", "exec -a 'nginx: worker process is shutting down' sleep 30"]
    )
    try:
        res = subprocess.run(["sh", "-c", cmd.DRAINING], capture_output=True, text=True)
        assert int(res.stdout.strip()) >= 1
    finally:
        worker.kill()
        worker.wait()


# --- releases kept ---------------------------------------------------------------------


def test_prune_keeps_the_newest_and_the_protected():
    listed = (
        "production-20250101-000000-aaaaaaa\tid1\nproduction-20250102-000000\tid2\n"
        "production-20250103-000000-ccccccc\tid3\nproduction-20250104-000000\tid4\n"
        "production-latest\tid5\n"
    )
    kept = cmd.parse_release_images(PROD, listed)
    assert kept == [
        "20250101-000000-aaaaaaa",
        "20250102-000000",
        "20250103-000000-ccccccc",
        "20250104-000000",
    ]
    assert cmd.to_prune(kept, 2, protect=["20250101-000000-aaaaaaa"]) == ["20250102-000000"]
    assert cmd.to_prune(kept, 10, protect=[]) == []
    # releases that never served do not count; only the newest of them keeps its image
    served = ["20250101-000000-aaaaaaa", "20250104-000000"]
    assert cmd.to_prune(kept, 1, protect=[], served=served) == [
        "20250101-000000-aaaaaaa",
        "20250102-000000",
    ]
    assert cmd.untag(PROD, "20250102-000000") == [
        "docker",
        "image",
        "rm",
        "aiia/app:production-20250102-000000",
    ]


def test_sh_passes_values_as_positional_parameters():
    argv = sh('printf "%s|" "$@"', "a b", "$(id)", "`id`", "'")
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.stdout == "a b|$(id)|`id`|'|"


def server_stack_config(tmp_path) -> dict:
    """compose/server.yml as `docker compose config` resolves it, with the env examples
    (fake secrets) and the app env files rendered from them: read from the file itself,
    so a change to it shows here."""
    env_files = {}
    for name, example in (("production", "prod"), ("staging", "staging")):
        text = (ROOT / "config" / f"{example}.env.example").read_text()
        env_files[name] = tmp_path / f"{name}.env"
        env_files[name].write_text(re.sub(r"=CHANGE_ME$", f"=fake-{name}-secret", text, flags=re.M))
    project = project_dir(tmp_path / "project")
    render_server(project, env_files["production"], env_files["staging"])
    proc = compose_config(
        project, ("compose/server.yml",), env_files["production"],
        {"STAGING_ENV_FILE": str(env_files["staging"])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_server_stacks_own_service_definition(tmp_path):
    config = server_stack_config(tmp_path)
    s = cmd.service_spec(config, "django_prod")
    assert s.image == "aiia/app:production"
    assert s.network == "aiia_network" and s.aliases == ("django_prod",)
    # 144m: the README's memory table
    assert list(s.flags[:2]) == ["--memory", str(144 * 1024 * 1024)]
    assert ["--user", "10001:10001"] == list(s.flags[s.flags.index("--user") :][:2])
    assert "--read-only" in s.flags
    assert s.volumes == (
        "type=volume,source=aiia_static_prod,target=/app/staticfiles",
        "type=volume,source=aiia_media_prod,target=/app/media",
    )
    # the app's environment is its rendered file: the shared services' secrets are not in it
    assert "POSTGRES_SUPERUSER_PASSWORD" not in s.environment
    assert s.environment["ENVIRONMENT"] == "production"


def test_compose_labels_follow_the_release():
    old = {
        "com.docker.compose.project": "aiia",
        "com.docker.compose.service": "django_prod",
        "com.docker.compose.image": "sha256:old",
        "aiia.release": "20241231-000000",
    }
    assert cmd.compose_labels(old, "sha256:new") == {
        "com.docker.compose.project": "aiia",
        "com.docker.compose.service": "django_prod",
        "com.docker.compose.image": "sha256:new",
    }
    assert cmd.compose_labels({"aiia.release": "x"}, "sha256:new") == {}
    argv = cmd.run_release(PROD, spec(), RELEASE, "img:1", labels={"com.docker.compose.x": "y"})
    assert argv[-3:] == ["--label", "com.docker.compose.x=y", "img:1"]


def test_the_stack_is_read_from_the_labels_compose_left_on_the_serving_container():
    labels = {
        "com.docker.compose.project": "aiia",
        "com.docker.compose.project.config_files": "/srv/a b/docker-compose.yml,/srv/o.yml",
        "com.docker.compose.project.working_dir": "/srv/a b",
        "com.docker.compose.project.environment_file": "/srv/a b/.env",
    }
    stack = cmd.Stack.from_labels(labels)
    assert cmd.compose_config(stack, "django_prod") == [
        "docker", "compose", "--project-name", "aiia", "--project-directory", "/srv/a b",
        "--file", "/srv/a b/docker-compose.yml", "--file", "/srv/o.yml",
        "--env-file", "/srv/a b/.env", "config", "--format", "json", "django_prod",
    ]  # fmt: skip
    assert cmd.Stack.from_labels({"com.docker.compose.project": "aiia"}) is None
    fallback = cmd.Stack(("/srv/p/compose/server.yml",), "/srv/p")
    assert cmd.compose_config(fallback, "django_staging") == [
        "docker", "compose", "--project-directory", "/srv/p", "--file",
        "/srv/p/compose/server.yml", "config", "--format", "json", "django_staging",
    ]  # fmt: skip


def test_a_container_compose_started_becomes_the_initial_release():
    assert cmd.initial_release("2025-11-28T19:08:07.123456789Z") == "20251128-190807-initial"
    assert cmd.check_release(cmd.initial_release("")) == "00000000-000000-initial"
