"""The reference project's settings, read from the environment: no server needed.

settings.py is executed in-process with runpy for each case (os.environ restored after),
`manage.py check --deploy` and `gunicorn --check-config` run as subprocesses.
"""

from __future__ import annotations

import os
import runpy
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
CONFIG = ROOT / "config"
FIX = 'python3 -c "import secrets; print(secrets.token_urlsafe(64))"'

sys.path.insert(0, str(APP))
from aiia import env as appenv  # noqa: E402 - app/ is not an installed package
from django.core.exceptions import ImproperlyConfigured  # noqa: E402

from tests.harness.core import venv_tool  # noqa: E402

# every key the env files use, plus the ones the app reads beyond them
KEYS = {k for f in CONFIG.glob("*.env.example") for k in dotenv_values(f)} | {
    "APP_VERSION",
    "DJANGO_ENV_FILE",
    "DJANGO_STATIC_ROOT",
    "DJANGO_MEDIA_ROOT",
    "DJANGO_SETTINGS_MODULE",
}


def good_key() -> str:
    return secrets.token_urlsafe(64)


def example_env(name: str) -> dict[str, str]:
    """config/NAME.env.example with every CHANGE_ME filled in, as an operator would."""
    values = {k: v or "" for k, v in dotenv_values(CONFIG / f"{name}.env.example").items()}
    for key, value in values.items():
        if value == "CHANGE_ME":
            values[key] = good_key()
    return values


@pytest.fixture
def environ(tmp_path):
    """os.environ without any of the app's keys, restored whole afterwards.

    DJANGO_ENV_FILE points at an empty file, so a developer's own .env never leaks in.
    """
    saved = dict(os.environ)
    for key in KEYS:
        os.environ.pop(key, None)
    empty = tmp_path / "empty.env"
    empty.write_text("")
    os.environ["DJANGO_ENV_FILE"] = str(empty)
    try:
        yield os.environ
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load_settings(**values: str) -> dict:
    os.environ.update(values)
    return runpy.run_path(str(APP / "aiia" / "settings.py"))


def subprocess_env(tmp_path: Path, values: dict[str, str]) -> dict[str, str]:
    empty = tmp_path / "none.env"
    empty.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in KEYS}
    return {**base, "DJANGO_ENV_FILE": str(empty), **values}


# --- pure helpers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "url"),
    [
        (("redis", 6379, 0, "aiia_prod", "s3cret"), "redis://aiia_prod:s3cret@redis:6379/0"),
        (("redis", 6379, 1, "", "s3cret"), "redis://:s3cret@redis:6379/1"),
        (("redis", 6379, 0, "", ""), "redis://redis:6379/0"),
        (("redis", 6379, 1, "aiia_staging", ""), "redis://aiia_staging@redis:6379/1"),
        (("h", 1, 2, "u", "p@ss:w/rd#%?"), "redis://u:p%40ss%3Aw%2Frd%23%25%3F@h:1/2"),
    ],
    ids=["user-and-password", "password-only", "no-auth", "user-only", "quoted"],
)
def test_redis_url(args, url):
    assert appenv.redis_url(*args) == url


def test_redis_url_round_trips_through_redis_py():
    import redis

    password = "p@ss:w/rd#%?+ &="
    pool = redis.ConnectionPool.from_url(appenv.redis_url("h", 6380, 3, "us@r", password))
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("us@r", password)
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("h", 6380, 3)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "missing"),
        ("CHANGE_ME", "placeholder"),
        ("x" * 60 + "CHANGE_ME", "placeholder"),
        ("django-insecure-" + "a1b2c3d4e5" * 6, "placeholder"),
        ("dev_password_123" + "q1w2e3r4t5" * 5, "placeholder"),
        ("a1B2c3D4e5" * 4, "too short (40 characters"),
        ("ab" * 40, "fewer than 5 distinct"),
    ],
    ids=[
        "missing",
        "placeholder",
        "contains-placeholder",
        "django-insecure",
        "dev-password",
        "short",
        "few-distinct",
    ],
)
def test_weak_secret_keys_are_named(key, problem):
    assert problem in appenv.secret_key_problem(key)


def test_a_generated_secret_key_is_fine():
    assert appenv.secret_key_problem(good_key()) is None


def test_version_prefers_app_version_then_git_then_unknown(tmp_path):
    assert appenv.app_version(tmp_path, {"APP_VERSION": "v1.2.3"}) == "v1.2.3"
    assert appenv.app_version(tmp_path, {}) == "unknown"
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert appenv.app_version(tmp_path, {}) == head
    (tmp_path / "f").write_text("2")
    assert appenv.app_version(tmp_path, {}) == f"{head}-dirty"
    assert appenv.app_version(tmp_path, {"APP_VERSION": ""}) == f"{head}-dirty"


# --- settings.py as a whole -------------------------------------------------------------


@pytest.mark.parametrize("environment", ["production", "staging"])
@pytest.mark.parametrize(
    "key",
    ["", "CHANGE_ME", "django-insecure-" + "k" * 50, "dev_password_123", "tooShort123456789"],
    ids=["missing", "placeholder", "django-default", "dev-password", "short"],
)
def test_deployed_settings_refuse_a_weak_secret_key(environ, environment, key):
    values = example_env("prod" if environment == "production" else "staging")
    values["DJANGO_SECRET_KEY"] = key
    with pytest.raises(ImproperlyConfigured) as raised:
        load_settings(**values)
    message = str(raised.value)
    assert "DJANGO_SECRET_KEY" in message
    assert FIX in message
    assert environment in message


def test_local_settings_start_with_the_placeholder_key(environ):
    settings = load_settings(**{**example_env("local"), "DJANGO_SECRET_KEY": "CHANGE_ME"})
    assert settings["SECRET_KEY"].startswith("django-insecure-local")
    assert settings["DEBUG"] is True  # local.env.example asks for it


def test_production_settings(environ):
    values = example_env("prod")
    values.update(REDIS_PASSWORD="pa:ss@word/1", POSTGRES_PASSWORD="pg-secret")
    s = load_settings(**values)
    assert s["ENVIRONMENT"] == "production"
    assert s["DEBUG"] is False
    assert s["SECRET_KEY"] == values["DJANGO_SECRET_KEY"]
    assert s["ALLOWED_HOSTS"] == ["eduaiia.com", "www.eduaiia.com"]
    assert s["MIDDLEWARE"][0] == "core.health.HealthCheckMiddleware"
    assert s["MIDDLEWARE"][1] == "django.middleware.security.SecurityMiddleware"

    db = s["DATABASES"]["default"]
    assert (db["NAME"], db["USER"], db["PASSWORD"]) == ("aiia_prod", "aiia_prod", "pg-secret")
    assert (db["HOST"], db["PORT"]) == ("pgbouncer", "6432")
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert db["CONN_HEALTH_CHECKS"] is True
    assert 0 < db["CONN_MAX_AGE"] <= 300
    assert db["OPTIONS"]["prepare_threshold"] is None
    assert db["OPTIONS"]["server_side_binding"] is False
    assert "pool" not in db["OPTIONS"]
    assert 2 <= db["OPTIONS"]["connect_timeout"] <= 5

    cache = s["CACHES"]["default"]
    assert cache["BACKEND"] == "core.cache.RedisCache"
    assert cache["LOCATION"] == "redis://aiia_prod:pa%3Ass%40word%2F1@redis:6379/0"
    assert cache["KEY_PREFIX"] == "prod"
    assert cache["OPTIONS"]["socket_connect_timeout"] <= 2
    assert cache["OPTIONS"]["socket_timeout"] <= 3
    assert s["SESSION_ENGINE"] == "django.contrib.sessions.backends.cached_db"

    assert s["SECURE_SSL_REDIRECT"] is True
    assert s["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert s["SECURE_REDIRECT_EXEMPT"] == [r"^health/?$"]
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"]
    assert s["SECURE_HSTS_SECONDS"] >= 31_536_000

    assert s["STATIC_URL"] == "/static/" and s["MEDIA_URL"] == "/media/"
    assert s["STATIC_ROOT"] == APP / "staticfiles"
    assert s["MEDIA_ROOT"] == APP / "media"


def test_staging_settings_use_db_1_and_their_own_prefix(environ):
    s = load_settings(**example_env("staging"))
    assert s["CACHES"]["default"]["LOCATION"].startswith("redis://aiia_staging:")
    assert s["CACHES"]["default"]["LOCATION"].endswith("@redis:6379/1")
    assert s["CACHES"]["default"]["KEY_PREFIX"] == "staging"
    assert s["DATABASES"]["default"]["NAME"] == "aiia_staging"


def test_redis_without_user_or_password(environ):
    s = load_settings(**example_env("local"))
    assert s["CACHES"]["default"]["LOCATION"] == "redis://redis:6379/0"


def test_static_and_media_roots_from_env(environ, tmp_path):
    values = example_env("local")
    assert values["DJANGO_STATIC_ROOT"] == values["DJANGO_MEDIA_ROOT"] == ""
    values.update(
        DJANGO_STATIC_ROOT=str(tmp_path / "static"), DJANGO_MEDIA_ROOT=str(tmp_path / "media")
    )
    s = load_settings(**values)
    assert (s["STATIC_ROOT"], s["MEDIA_ROOT"]) == (tmp_path / "static", tmp_path / "media")


@pytest.mark.parametrize("value", ["", "false", "False", "0"])
def test_debug_is_off_unless_asked(environ, value):
    assert load_settings(**{**example_env("local"), "DJANGO_DEBUG": value})["DEBUG"] is False


def test_debug_is_refused_in_production(environ):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG"):
        load_settings(**{**example_env("prod"), "DJANGO_DEBUG": "true"})


def test_deployed_settings_need_allowed_hosts(environ):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_ALLOWED_HOSTS"):
        load_settings(**{**example_env("prod"), "DJANGO_ALLOWED_HOSTS": ""})


def test_unknown_environment_is_refused(environ):
    with pytest.raises(ImproperlyConfigured, match="ENVIRONMENT='prod'"):
        load_settings(**{**example_env("prod"), "ENVIRONMENT": "prod"})


def test_env_file_is_loaded_and_real_env_vars_win(environ, tmp_path):
    key = good_key()
    env_file = tmp_path / "prod.env"
    values = example_env("prod")
    values["DJANGO_SECRET_KEY"] = key
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    environ["DJANGO_ENV_FILE"] = str(env_file)
    environ["POSTGRES_DB"] = "from_the_real_environment"
    s = load_settings()
    assert s["SECRET_KEY"] == key
    assert s["ENVIRONMENT"] == "production"
    assert s["DATABASES"]["default"]["NAME"] == "from_the_real_environment"
    assert s["ENV_FILE"] == env_file


def test_a_missing_env_file_is_an_error(environ, tmp_path):
    environ["DJANGO_ENV_FILE"] = str(tmp_path / "nope.env")
    with pytest.raises(ImproperlyConfigured, match="DJANGO_ENV_FILE"):
        load_settings()


# --- the real tools over the real files -------------------------------------------------


@pytest.mark.parametrize("name", ["prod", "staging"])
def test_check_deploy_has_no_issues_in_deployed_environments(tmp_path, name):
    """The database need not be reachable: `check` without --database never connects."""
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=APP,
        env=subprocess_env(tmp_path, example_env(name)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues (0 silenced)." in proc.stdout
    assert proc.stderr == ""


def test_check_deploy_does_flag_local_settings(tmp_path):
    """The same command does find issues when the hardened settings are off."""
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=APP,
        env=subprocess_env(tmp_path, example_env("local")),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "security.W008" in proc.stdout + proc.stderr


def test_manage_py_refuses_to_start_with_the_placeholder_key(tmp_path):
    values = {**example_env("prod"), "DJANGO_SECRET_KEY": "CHANGE_ME"}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=APP,
        env=subprocess_env(tmp_path, values),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is a placeholder" in proc.stderr
    assert FIX in proc.stderr


def gunicorn_settings(values: dict[str, str], environ) -> dict:
    environ.update(values)
    return runpy.run_path(str(APP / "gunicorn.conf.py"))


@pytest.mark.parametrize(
    ("name", "bind", "workers", "threads", "preload"),
    [("prod", "0.0.0.0:8000", 2, 2, True), ("staging", "0.0.0.0:8001", 1, 2, False)],
)
def test_gunicorn_config_follows_the_env_file(environ, name, bind, workers, threads, preload):
    conf = gunicorn_settings(example_env(name), environ)
    assert (conf["bind"], conf["workers"], conf["threads"]) == (bind, workers, threads)
    # the app is imported in the master only when two workers or more share it
    assert conf["preload_app"] is preload
    assert conf["worker_class"] == "gthread"
    assert conf["wsgi_app"] == "aiia.wsgi:application"
    assert conf["worker_tmp_dir"] == "/dev/shm"
    assert conf["control_socket_disable"] is True
    assert conf["max_requests"] > 0 and 0 < conf["max_requests_jitter"] < conf["max_requests"]
    assert conf["graceful_timeout"] < 30 <= conf["timeout"]
    assert conf["accesslog"] == "-" and "%(M)s" in conf["access_log_format"]


def test_gunicorn_config_defaults_to_production_size(environ):
    conf = gunicorn_settings({}, environ)
    assert (conf["bind"], conf["workers"], conf["threads"]) == ("0.0.0.0:8000", 2, 2)


def test_gunicorn_config_refuses_a_bad_number(environ):
    with pytest.raises(SystemExit, match="GUNICORN_WORKERS='two'"):
        gunicorn_settings({"GUNICORN_WORKERS": "two"}, environ)


def test_gunicorn_check_config_passes(tmp_path):
    proc = subprocess.run(
        [venv_tool("gunicorn"), "-c", str(APP / "gunicorn.conf.py"), "--check-config"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path, example_env("prod")),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gunicorn_check_config_fails_on_a_placeholder_secret(tmp_path):
    env = subprocess_env(tmp_path, {**example_env("prod"), "DJANGO_SECRET_KEY": "CHANGE_ME"})
    proc = subprocess.run(
        [venv_tool("gunicorn"), "-c", str(APP / "gunicorn.conf.py"), "--check-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "DJANGO_SECRET_KEY" in proc.stdout + proc.stderr


def test_gunicorn_warms_the_master_before_the_fork_without_the_database(tmp_path):
    """With the production env file (2 workers) and no database or Redis reachable (their
    hosts do not resolve here), the master renders the admin login page once before
    forking, and a worker then serves it: warming needs neither service and leaves no
    broken state."""
    import http.client

    from tests.harness.core import free_port, wait_until

    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = subprocess_env(tmp_path, example_env("prod"))
    with log.open("w") as out:
        proc = subprocess.Popen(
            [venv_tool("gunicorn"), "-c", str(APP / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: "Booting worker" in log.read_text(), timeout=60, what="a worker")
        text = log.read_text()
        assert "warmed before the fork: {'/admin/login/': 200}" in text, text[-3000:]
        assert text.index("warmed before the fork") < text.index("Booting worker")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/admin/login/",
                     headers={"Host": "eduaiia.com", "X-Forwarded-Proto": "https"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:500]
        assert b"csrfmiddlewaretoken" in resp.read()
    finally:
        proc.terminate()
        proc.wait(30)
