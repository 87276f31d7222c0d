"""The reference Django project (app/) run for real: manage.py commands and gunicorn.

Plain helpers, no fixtures: each test module starts its own gunicorn against the
session's native PostgreSQL (through PgBouncer) and Redis, with an environment built
from config/<name>.env.example the way an operator fills it in.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

import requests
from dotenv import dotenv_values

from tests.harness.core import ROOT, PrerequisiteError, Service, Started, free_port, wait_until

APP = ROOT / "app"
EXAMPLES = {"production": "prod.env.example", "staging": "staging.env.example"}
# variables of the test process that must not leak into the app's environment
DROP = {"DJANGO_SETTINGS_MODULE", "XDG_RUNTIME_DIR", "PYTHONPATH"}


def example_values(environment: str) -> dict[str, str]:
    """The environment's example env file with every CHANGE_ME replaced by a fresh secret."""
    values = {k: v or "" for k, v in dotenv_values(ROOT / "config" / EXAMPLES[environment]).items()}
    return {k: secrets.token_urlsafe(64) if v == "CHANGE_ME" else v for k, v in values.items()}


def app_env(environment: str, *, workdir: Path, pgbouncer, database, redis_server) -> dict:
    """What a container of `environment` gets, pointed at the native servers.

    database: an app_databases entry; the Redis user comes from redis_server.users.
    HOME is an empty directory of its own, so a test can see nothing is written there.
    """
    values = example_values(environment)
    user, password, prefix, db = redis_server.users[environment]
    empty = workdir / "empty.env"
    empty.write_text("")
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    values.update(
        POSTGRES_HOST=pgbouncer.host,
        POSTGRES_PORT=str(pgbouncer.port),
        POSTGRES_DB=database.db,
        POSTGRES_USER=database.user,
        POSTGRES_PASSWORD=database.password,
        REDIS_HOST=redis_server.host,
        REDIS_PORT=str(redis_server.port),
        REDIS_USER=user,
        REDIS_PASSWORD=password,
        REDIS_KEY_PREFIX=prefix,
        REDIS_DB=str(db),
        DJANGO_STATIC_ROOT=str(workdir / "static"),
        DJANGO_MEDIA_ROOT=str(workdir / "media"),
        APP_VERSION=f"test-{secrets.token_hex(4)}",
        # an empty file: a developer's own .env must not leak in
        DJANGO_ENV_FILE=str(empty),
        HOME=str(home),
    )
    base = {k: v for k, v in os.environ.items() if k not in DROP and k not in values}
    return {**base, **values}


def manage(env: dict, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`python manage.py ARGS` in app/ with `env`; output captured."""
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"manage.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass
class DjangoApp(Started):
    """gunicorn with app/gunicorn.conf.py on a loopback port (`with app:` runs it)."""

    env: dict = field(repr=False)  # the app's secrets among it
    workdir: Path
    port: int = field(default_factory=free_port)
    service: Service | None = None
    # what gunicorn runs with besides --bind; a benchmark's baseline swaps in stock flags
    gunicorn_args: list[str] = field(default_factory=lambda: ["-c", str(APP / "gunicorn.conf.py")])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DjangoApp:
        # the config file binds 0.0.0.0:$APP_PORT; tests stay on loopback with --bind,
        # which gunicorn applies over the file. cwd is elsewhere: the file sets chdir.
        self.service = Service(
            [
                sys.executable,
                "-m",
                "gunicorn",
                *self.gunicorn_args,
                "--bind",
                f"127.0.0.1:{self.port}",
            ],  # fmt: skip
            log=self.workdir / "gunicorn.log",
            env={**self.env, "APP_PORT": str(self.port)},
            cwd=self.workdir,
        ).start()

        def answers():
            self.service.check_alive()
            # any HTTP answer means the workers are up; what it says is for the tests
            return requests.get(f"{self.url}/health/", timeout=10).status_code > 0

        try:
            wait_until(answers, timeout=60, what=f"gunicorn on {self.url}")
        except (TimeoutError, PrerequisiteError) as exc:
            raise PrerequisiteError(f"{exc}\n{self.service.logs()[-4000:]}") from exc
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def logs(self) -> str:
        return self.service.logs() if self.service else ""

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("allow_redirects", False)
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 15), **kwargs)

    def health(self) -> tuple[int, dict]:
        response = self.get("/health/", headers={"Host": "127.0.0.1"})
        return response.status_code, response.json()


class Browser:
    """A client that talks to gunicorn the way nginx forwards a browser's https request.

    nginx terminates TLS and sets X-Forwarded-Proto: https; the app then sets Secure
    cookies, which this client keeps itself (requests would not send them over http).
    """

    def __init__(self, app: DjangoApp, host: str) -> None:
        self.app = app
        self.host = host
        self.cookies: dict[str, str] = {}

    @property
    def origin(self) -> str:
        return f"https://{self.host}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {
            "Host": self.host,
            "X-Forwarded-Proto": "https",
            "Referer": self.origin + path,
            **kwargs.pop("headers", {}),
        }
        if method != "GET":
            headers.setdefault("Origin", self.origin)
        response = requests.request(
            method,
            self.app.url + path,
            headers=headers,
            cookies=dict(self.cookies),
            allow_redirects=False,
            timeout=30,
            **kwargs,
        )
        for header in response.raw.headers.getlist("Set-Cookie"):
            for name, morsel in SimpleCookie(header).items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:  # how Django deletes a cookie (logout, flushed session)
                    self.cookies.pop(name, None)
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        if "csrftoken" in self.cookies:
            kwargs.setdefault("headers", {}).setdefault("X-CSRFToken", self.cookies["csrftoken"])
        return self.request("POST", path, **kwargs)

    def login(self, username: str, password: str) -> None:
        """The admin's login form, as a person would submit it."""
        self.get("/admin/login/")
        response = self.post(
            "/admin/login/?next=/admin/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.cookies["csrftoken"],
                "next": "/admin/",
            },
        )
        if response.status_code != 302 or "sessionid" not in self.cookies:
            raise AssertionError(
                f"admin login failed: {response.status_code} {response.text[:500]}"
            )
