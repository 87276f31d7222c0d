"""compose/stack.yml against compose/server.yml: one source for images, limits, checks."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from opskit.swarm import stack as stk
from tests.harness.core import ROOT

SERVER = stk.load_server(ROOT)
STACK_TEXT = (ROOT / stk.STACK_FILE).read_text()
STACK = yaml.safe_load(STACK_TEXT)


def test_the_committed_stack_file_is_what_server_yml_gives():
    assert STACK_TEXT == stk.expected(ROOT), (
        "compose/stack.yml is out of date: run .venv/bin/python -m opskit.swarm.stack"
    )


def test_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(stk, "ROOT", tmp_path)
    for rel in ("compose/server.yml", "compose/app/Dockerfile", "nginx/Dockerfile",
                "pgbouncer/Dockerfile", "postgres/Dockerfile", "redis/Dockerfile"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    (tmp_path / stk.STACK_FILE).write_text(STACK_TEXT.replace("144m", "200m"))
    assert stk.main(["--check"]) == 1
    assert stk.main([]) == 0
    assert stk.main(["--check"]) == 0


def test_nothing_debians_stack_deploy_refuses_or_ignores():
    assert STACK["version"] == "3.9"  # without it the file is read as version 1.0
    assert "name" not in STACK
    for name, svc in STACK["services"].items():
        refused = (
            "mem_limit",
            "memswap_limit",
            "depends_on",
            "container_name",
            "restart",
            "security_opt",
            "build",
            "tmpfs",
            "env_file",
            "environment",
            "profiles",
        )
        for key in refused:
            assert key not in svc, f"{name}: {key}"


def test_services_images_users_and_limits_come_from_server_yml():
    wanted = {n for n, s in SERVER["services"].items() if "tools" not in s.get("profiles", [])}
    assert set(STACK["services"]) == wanted
    for name, svc in STACK["services"].items():
        src = SERVER["services"][name]
        assert svc["image"] == src["image"]
        assert svc["deploy"]["resources"]["limits"]["memory"] == src["mem_limit"]
        for key in ("user", "cap_drop", "cap_add", "read_only", "stop_grace_period"):
            assert svc.get(key) == src.get(key), f"{name}: {key}"


def test_placement_replicas_and_start_first_updates():
    svc = STACK["services"]
    assert svc["nginx"]["deploy"]["mode"] == "global"
    assert [p["mode"] for p in svc["nginx"]["ports"]] == ["host", "host"]
    assert [p["published"] for p in svc["nginx"]["ports"]] == [80, 443]
    for name in ("nginx", "django_prod", "django_staging"):
        assert svc[name]["deploy"]["placement"]["constraints"] == ["node.labels.aiia.role == web"]
    for name in ("postgresql", "pgbouncer", "redis"):
        assert svc[name]["deploy"]["placement"]["constraints"] == ["node.labels.aiia.role == db"]
        assert svc[name]["deploy"]["update_config"]["order"] == "stop-first"
    assert "pgdata:/var/lib/postgresql/data" in svc["postgresql"]["volumes"]
    assert svc["django_prod"]["deploy"]["mode"] == "global"
    assert svc["django_staging"]["deploy"]["replicas"] == 1
    for name in ("django_prod", "django_staging"):
        update = svc[name]["deploy"]["update_config"]
        assert update["order"] == "start-first"
        assert update["failure_action"] == "rollback"
        assert svc[name]["stop_grace_period"] == "30s"  # after gunicorn's 25 s graceful stop
    for name, s in svc.items():
        assert s["deploy"]["endpoint_mode"] == "dnsrr", name


def test_health_checks_are_server_yml_or_the_images_and_read_the_secret():
    svc = STACK["services"]
    pg = svc["postgresql"]["healthcheck"]
    assert pg["test"][-6:] == SERVER["services"]["postgresql"]["healthcheck"]["test"][1:]
    assert pg["interval"] == "10s"
    app = svc["django_prod"]["healthcheck"]
    assert app["test"][:5] == ["CMD", "/bin/sh", "-c", stk.SOURCE_ENV + 'exec "$$@"', "sh"]
    assert app["test"][5:7] == ["python3", "-c"] and "/health/" in app["test"][7]
    assert app["interval"] == "5s" and app["retries"] == 3
    assert svc["redis"]["healthcheck"]["test"][-1] == "/usr/local/bin/redis-healthcheck"


def test_secrets_are_external_and_versioned_never_plain_environment():
    for svc in STACK["services"].values():
        (secret,) = svc["secrets"]
        assert secret["target"] == stk.SECRET_TARGET and secret["mode"] == 0o400
        assert secret["uid"] == str(svc.get("user", "0")).split(":")[0]
        assert STACK["secrets"][secret["source"]]["external"] is True
        assert svc["entrypoint"][2].startswith(stk.SOURCE_ENV)
    assert not re.search(r"^\s+[A-Z_]*(PASSWORD|SECRET)[A-Z_]*:", STACK_TEXT, re.M)
    net = STACK["networks"]["aiia_network"]
    assert net["driver"] == "overlay" and net["attachable"] is True
    assert "encrypted" in net["driver_opts"]


def test_entrypoints_run_what_the_image_would():
    svc = STACK["services"]
    assert svc["nginx"]["entrypoint"][4:] == ["/usr/local/bin/nginx-entrypoint"]
    assert svc["django_prod"]["command"] == ["gunicorn", "--config", "/app/gunicorn.conf.py"]
    assert svc["postgresql"]["command"] == ["-c", "listen_addresses=*"]
    assert "$$PRODUCTION_POSTGRES_PASSWORD" in svc["postgresql"]["entrypoint"][2]


def test_the_wrapper_sources_the_secret_then_execs_the_image_command(tmp_path):
    secret = tmp_path / "aiia.env"
    secret.write_text(stk.shell_env({"A": "it's $HOME `x`", "B": "2"}))
    script = stk.interpolate(stk.SOURCE_ENV + 'exec "$$@"', {})
    script = script.replace(stk.SECRET_PATH, str(secret))
    out = subprocess.run(["sh", "-c", script, "sh", "sh", "-c", 'printf "%s|%s" "$A" "$B"'],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout == "it's $HOME `x`|2"


DOCKERFILE = """
FROM debian AS base
CMD ["base"]
FROM base AS runtime
ENTRYPOINT ["/entry"]
HEALTHCHECK --interval=30s --retries=3 \\
    CMD ["probe", "x"]
FROM runtime AS prod
CMD ["gunicorn"]
FROM runtime AS other
"""


@pytest.mark.parametrize(
    ("target", "entry", "cmd"),
    [
        ("base", [], ["base"]),
        ("runtime", ["/entry"], []),
        ("prod", ["/entry"], ["gunicorn"]),
        ("other", ["/entry"], []),
    ],  # fmt: skip
)
def test_dockerfile_stage(target, entry, cmd):
    assert stk.dockerfile_process(DOCKERFILE, target) == (entry, cmd)


def test_dockerfile_healthcheck_is_inherited():
    flags, test = stk.dockerfile_stage(DOCKERFILE, "prod")["HEALTHCHECK"]
    assert flags == {"interval": "30s", "retries": "3"} and test == ["probe", "x"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "1"),
        ("${MISSING:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("$A-$$B", "1-$B"),
    ],
)
def test_interpolate(text, expected):
    assert stk.interpolate(text, {"A": "1", "EMPTY": ""}) == expected


def test_interpolate_required_and_kept_escapes():
    with pytest.raises(stk.StackError, match="NEED: set it"):
        stk.interpolate("${NEED:?set it}", {})
    assert stk.interpolate("$$x ${A}", {"A": "1"}, keep_escapes=True) == "$$x 1"


PROD = {"ENVIRONMENT": "production", "POSTGRES_DB": "aiia_prod", "POSTGRES_USER": "aiia_prod",
        "POSTGRES_PASSWORD": "pp", "POSTGRES_SUPERUSER_PASSWORD": "su",
        "PGBOUNCER_AUTH_PASSWORD": "pb", "REDIS_ADMIN_PASSWORD": "ra", "REDIS_PASSWORD": "rp",
        "STATUS_PASSWORD": "sp", "S3_SECRET_ACCESS_KEY": "s3"}  # fmt: skip
STAGING = {"ENVIRONMENT": "staging", "POSTGRES_DB": "aiia_staging", "POSTGRES_PASSWORD": "sg"}
FILES = {"PRODUCTION_ENV_FILE": PROD, "STAGING_ENV_FILE": STAGING}


def test_each_service_gets_what_compose_gives_it():
    app = stk.service_environment(SERVER, "django_prod", FILES, PROD)
    assert app["POSTGRES_PASSWORD"] == "pp"
    # the app's rendered env file (opskit/appenv.py): Django's keys only, no blank names
    assert set(app) == {"ENVIRONMENT", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD",
                        "REDIS_PASSWORD"}  # fmt: skip
    staging = stk.service_environment(SERVER, "django_staging", FILES, PROD)
    assert staging["POSTGRES_PASSWORD"] == "sg" and staging["ENVIRONMENT"] == "staging"
    pg = stk.service_environment(SERVER, "postgresql", FILES, PROD)
    assert pg["POSTGRES_DB"] == "aiia_staging" and pg["PRODUCTION_POSTGRES_PASSWORD"] == "pp"
    assert pg["POSTGRES_SUPERUSER_PASSWORD"] == "su"
    nginx = stk.service_environment(SERVER, "nginx", FILES, PROD)
    assert nginx == {"STATUS_USER": "ops", "STATUS_PASSWORD": "sp"}


def test_a_missing_required_value_names_it():
    with pytest.raises(stk.StackError, match="STATUS_PASSWORD"):
        stk.service_environment(SERVER, "nginx", FILES, {})


def test_env_renderings():
    assert stk.shell_env({"B": "a b", "A": "x"}) == "A=x\nB='a b'\n"
    assert stk.docker_env({"A": "a b"}) == "A=a b\n"
    with pytest.raises(stk.StackError, match="line break"):
        stk.docker_env({"A": "a\nb"})
    with pytest.raises(stk.StackError, match="not a variable name"):
        stk.shell_env({"A-B": "x"})


def test_versioned_names_change_with_content():
    a, b = stk.versioned("x_env", "A=1\n"), stk.versioned("x_env", "A=2\n")
    assert a != b and re.fullmatch(r"aiia_x_env_[0-9a-f]{12}", a)


def test_cluster_site_template_resolves_the_tasks_per_request():
    template = (ROOT / stk.NGINX_SITE_TEMPLATE).read_text()
    site = stk.cluster_site_template(template)
    assert "upstream django_" not in site
    assert "resolver 127.0.0.11 valid=1s ipv6=off;" in site
    assert site.count("proxy_pass http://$app_upstream;") == template.count("proxy_pass http")
    assert "set $app_upstream ${SITE_UPSTREAM};" in site
    with pytest.raises(stk.StackError, match="upstream"):
        stk.cluster_site_template(site)


def test_fill_keeps_escapes_for_stack_deploy():
    text = stk.fill(STACK_TEXT, {"AIIA_SECRET_" + n.upper(): f"s_{n}" for n in STACK["services"]}
                    | {"AIIA_CONFIG_NGINX_SITE": "c"})  # fmt: skip
    data = yaml.safe_load(text)
    assert data["secrets"]["nginx_env"]["name"] == "s_nginx"
    assert data["services"]["django_prod"]["image"] == "aiia/app:production"
    assert data["services"]["django_prod"]["deploy"]["resources"]["limits"]["memory"] == "144m"
    assert 'exec "$$@"' in data["services"]["nginx"]["entrypoint"][2]
