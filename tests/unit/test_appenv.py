"""The app containers' env files (opskit/appenv.py): rendered from the env files by the
schema, read by compose exactly as rendered, refreshed when the env file changes."""

from __future__ import annotations

import json
import re
import stat

import pytest

from opskit import appenv, settings
from tests.harness.appenv import compose_config, project_dir, render_server
from tests.harness.core import ROOT

pytestmark = pytest.mark.unit

DJANGO = set(settings.keys_for("django"))
WITHHELD = set(settings.withheld_from("django"))


def filled(example: str, **extra: str) -> str:
    text = (ROOT / "config" / example).read_text().replace("CHANGE_ME", "fake-secret-value")
    return text + "".join(f"{k}={v}\n" for k, v in extra.items())


def rendered_keys(text: str) -> list[str]:
    return [line.split("=", 1)[0] for line in text.splitlines() if line and line[0] != "#"]


def test_a_full_env_file_renders_to_djangos_keys_only_in_schema_order():
    values = appenv.parse(filled("prod.env.example", S3_SECRET_ACCESS_KEY="s3-secret"))
    assert WITHHELD & set(values), "the example must hold keys the app must not get"
    text = appenv.render(values, source=".env")
    names = rendered_keys(text)
    assert set(names) == DJANGO & set(values)
    assert not set(names) & WITHHELD
    assert names == [k for k in settings.keys_for("django") if k in values]
    assert "s3-secret" not in text
    assert sorted(appenv.left_out(values)) == sorted(set(values) - DJANGO)


def test_whoever_renders_writes_the_same_text():
    # inv (a relative path), fab setup and a deploy (absolute paths) must agree, or each
    # would call the others' file stale
    values = appenv.parse(filled("staging.env.example"))
    assert appenv.render(values, source=".env") == appenv.render(values, source="/srv/s/.env")


def test_values_are_written_as_they_are_and_a_line_break_is_refused():
    text = appenv.render({"DJANGO_SECRET_KEY": "a$b 'c' \"d\" #e", "SITE_DOMAIN": ""})
    assert "DJANGO_SECRET_KEY=a$b 'c' \"d\" #e\n" in text
    assert "SITE_DOMAIN=\n" in text
    with pytest.raises(appenv.AppEnvError, match=r"\.env: POSTGRES_PASSWORD: .*line break"):
        appenv.render({"POSTGRES_PASSWORD": "a\nb"}, source=".env")


def test_refresh_writes_0600_files_in_a_0700_folder_and_follows_the_env_file(tmp_path):
    (tmp_path / ".env").write_text(filled("prod.env.example"))
    (tmp_path / "st.env").write_text(filled("staging.env.example"))
    environ = {"STAGING_ENV_FILE": "st.env"}
    first = appenv.refresh(tmp_path, appenv.SERVER, environ)
    assert [r.changed for r in first] == [True, True]
    folder = tmp_path / appenv.RENDERED_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for r in first:
        assert stat.S_IMODE(r.path.stat().st_mode) == 0o600
        assert "S3_SECRET_ACCESS_KEY" in r.left_out
    assert first[1].sources == (tmp_path / "st.env",)
    assert "ENVIRONMENT=staging" in first[1].path.read_text()
    assert not any(r.changed for r in appenv.refresh(tmp_path, appenv.SERVER, environ))
    assert appenv.stale(tmp_path, appenv.SERVER, environ) == []

    # the env file changes: the rendered one is stale until the next refresh
    with (tmp_path / ".env").open("a") as f:
        f.write("GUNICORN_WORKERS=3\n")
    assert appenv.stale(tmp_path, appenv.SERVER, environ) == [
        ".env.app/django_prod.env is older than its env file: `inv render-env` renders it"
    ]
    again = appenv.refresh(tmp_path, appenv.SERVER, environ)
    assert [r.changed for r in again] == [True, False]
    assert "GUNICORN_WORKERS=3\n" in again[0].path.read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["django_prod.env", "django_staging.env"]


def test_the_staging_file_is_found_as_compose_finds_it(tmp_path):
    (tmp_path / "a.env").write_text("SITE_DOMAIN=from-a\n")
    (tmp_path / "b.env").write_text("SITE_DOMAIN=from-b\n")
    (tmp_path / ".env.staging").write_text("SITE_DOMAIN=default\n")
    staging = appenv.SERVER[1]
    # the default, then .env's STAGING_ENV_FILE, then the process's environment wins
    assert "SITE_DOMAIN=default" in appenv.compose_text(tmp_path, staging, {})[0]
    (tmp_path / ".env").write_text("STAGING_ENV_FILE=a.env\n")
    assert "SITE_DOMAIN=from-a" in appenv.compose_text(tmp_path, staging, {})[0]
    environ = {"STAGING_ENV_FILE": str(tmp_path / "b.env")}
    assert "SITE_DOMAIN=from-b" in appenv.compose_text(tmp_path, staging, environ)[0]
    # COMPOSE_ENV_FILES stands for .env in compose's interpolation
    (tmp_path / "other.env").write_text("STAGING_ENV_FILE=b.env\n")
    environ = {"COMPOSE_ENV_FILES": str(tmp_path / "other.env")}
    assert "SITE_DOMAIN=from-b" in appenv.compose_text(tmp_path, staging, environ)[0]


def test_local_merges_the_example_and_dot_env_like_compose(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "local.env.example").write_text(filled("local.env.example"))
    text, used, dropped = appenv.compose_text(tmp_path, appenv.LOCAL[0], {})
    assert used == [tmp_path / "config" / "local.env.example"]  # .env is optional
    (tmp_path / ".env").write_text("DJANGO_SECRET_KEY=mine\nDJANGO_SUPERUSER_PASSWORD=pw\n")
    text, used, dropped = appenv.compose_text(tmp_path, appenv.LOCAL[0], {})
    assert "DJANGO_SECRET_KEY=mine\n" in text and "pw" not in text
    assert "DJANGO_SUPERUSER_PASSWORD" in dropped
    assert not set(rendered_keys(text)) & WITHHELD


def test_a_missing_env_file_or_rendered_file_names_the_fix(tmp_path):
    (tmp_path / ".env").write_text(filled("prod.env.example"))
    with pytest.raises(appenv.AppEnvError) as exc:
        appenv.refresh(tmp_path, appenv.SERVER, {})
    assert str(exc.value).startswith(
        f"django_staging: no env file {tmp_path / '.env.staging'} (STAGING_ENV_FILE)"
    )
    assert "`inv render-env`" in str(exc.value)
    (tmp_path / ".env.staging").write_text(filled("staging.env.example"))
    assert appenv.stale(tmp_path, appenv.SERVER, {}) == [
        ".env.app/django_prod.env is missing: `inv render-env` renders it",
        ".env.app/django_staging.env is missing: `inv render-env` renders it",
    ]


def test_compose_gives_each_app_service_exactly_its_rendered_keys(tmp_path):
    """compose/server.yml through `docker compose config`: the app services' environment
    is the rendered file's, with not one withheld name, for production and staging."""
    prod = tmp_path / "production.env"
    staging = tmp_path / "staging.env"
    prod.write_text(filled("prod.env.example", S3_SECRET_ACCESS_KEY="s3$ecret"))
    staging.write_text(filled("staging.env.example", DJANGO_SECRET_KEY="st$aging'key"))
    project = project_dir(tmp_path / "project")
    render_server(project, prod, staging)
    proc = compose_config(
        project, ("compose/server.yml",), prod, {"STAGING_ENV_FILE": str(staging)}
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    for service, source in (("django_prod", prod), ("django_staging", staging)):
        env = {k: v.replace("$$", "$") for k, v in services[service]["environment"].items()}
        values = appenv.parse(source.read_text())
        assert set(env) == DJANGO & set(values), service
        assert not set(env) & WITHHELD, service
        assert env == {k: values[k] for k in env}, f"{service}: values differ from the env file"
    assert services["django_staging"]["environment"]["DJANGO_SECRET_KEY"] == "st$$aging'key"


def test_compose_stops_on_a_missing_rendered_file_naming_it(tmp_path):
    prod = tmp_path / "production.env"
    prod.write_text(filled("prod.env.example"))
    project = project_dir(tmp_path / "project")
    proc = compose_config(project, ("compose/server.yml",), prod, {"STAGING_ENV_FILE": str(prod)})
    # the standalone binary exits 0 here; `docker compose` (the plugin) exits 1
    assert proc.stdout == ""
    # whichever app service compose loads first (its order varies) is named
    assert re.search(
        rf"env file {re.escape(str(project))}/\.env\.app/django_(prod|staging)\.env not found",
        proc.stderr,
    ), proc.stderr


def test_the_local_stack_reads_its_rendered_file(tmp_path):
    project = project_dir(tmp_path / "project")
    (project / ".env").write_text("DJANGO_SECRET_KEY=mine\nS3_SECRET_ACCESS_KEY=nope\n")
    appenv.refresh(project, appenv.LOCAL, {})
    proc = compose_config(project, ("docker-compose.local.yml",), None, {})
    assert proc.returncode == 0, proc.stderr
    env = json.loads(proc.stdout)["services"]["django"]["environment"]
    assert env["DJANGO_SECRET_KEY"] == "mine" and env["ENVIRONMENT"] == "local"
    assert not set(env) & WITHHELD, sorted(set(env) & WITHHELD)
