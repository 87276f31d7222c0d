"""Env files -> one frozen, validated Settings object per environment.

Every key the toolkit, the images and the Django app read is declared in SCHEMA with its
kind, where it is required and its default. `load()` reads a file with python-dotenv,
checks every key and reports *all* problems of the file at once, each naming the key, the
file and what to do.
"""

from __future__ import annotations

import io
import ipaddress
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from dotenv import dotenv_values

from opskit import environments
from opskit.shell import MASK, Secret

ENVIRONMENTS = environments.NAMES
SERVER_ENVS = frozenset({"staging", "production"})
ALL = frozenset(ENVIRONMENTS)

EXAMPLES = {
    "local": "config/local.env.example",
    "staging": "config/staging.env.example",
    "production": "config/prod.env.example",
}
DEFAULT_ENV_FILE = ".env"

# Placeholders an example file ships with; a value still holding one was never filled in.
PLACEHOLDER_RE = re.compile(
    r"^(change[_-]?me|replace[_-]?me|todo|fixme|xxx+|<[^>]*>|your[_-].*|\.\.\.)$|CHANGE_ME",
    re.IGNORECASE,
)
# Known defaults that must never reach a server: the guide's development password,
# framework and image defaults, and the usual suspects.
KNOWN_DEFAULTS = frozenset(
    {
        "dev_password_123",
        "password",
        "passw0rd",
        "postgres",
        "admin",
        "root",
        "secret",
        "changeme",
        "123456",
        "12345678",
        "aiia",
        "redis",
        "pgbouncer",
        "default",
        "test",
    }
)
SECRET_KEY_MIN = 50
GENERATE_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(64))"'

HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
MEMORY_RE = re.compile(r"^\d+(\.\d+)?\s*([kmg]i?b?|b)?$", re.IGNORECASE)
ENV_LINE = re.compile(r"^\s*(export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=")
AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")


class Invalid(ValueError):
    """A value of the wrong form; the message says what form is expected."""


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise Invalid("expected true or false")


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            n = int(raw.strip())
        except ValueError:
            raise Invalid(f"expected a whole number from {lo} to {hi}") from None
        if not lo <= n <= hi:
            raise Invalid(f"expected a whole number from {lo} to {hi}")
        return n

    return parse


def _port(raw: str) -> int:
    try:
        return _int(1, 65535)(raw)
    except Invalid:
        raise Invalid("expected a TCP port, a whole number from 1 to 65535") from None


def _is_host(value: str) -> bool:
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        pass
    v = v.rstrip(".")
    return 0 < len(v) <= 253 and all(HOST_LABEL.match(label) for label in v.split("."))


def _host(raw: str) -> str:
    if not _is_host(raw):
        raise Invalid("expected a host name or IP address (letters, digits, '-' and '.')")
    return raw.strip()


def _hosts(raw: str) -> tuple[str, ...]:
    items = tuple(h.strip() for h in raw.split(",") if h.strip())
    bad = [h for h in items if h != "*" and not _is_host(h.removeprefix("."))]
    if bad:
        raise Invalid(f"not a host name: {', '.join(bad)} (expected comma-separated host names)")
    return items


def _url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname or not _is_host(parts.hostname):
        raise Invalid("expected an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise Invalid("expected an http:// or https:// URL with a valid port") from None
    return raw.strip()


def _urls(raw: str) -> tuple[str, ...]:
    return tuple(_url(u) for u in raw.split(",") if u.strip())


def _memory(raw: str) -> str:
    if not MEMORY_RE.match(raw.strip()):
        raise Invalid("expected a memory size such as 150m, 512M or 1g")
    return raw.strip().lower()


def _publish(raw: str) -> str:
    """A compose port publication: PORT or ADDRESS:PORT."""
    address, _, port = raw.strip().rpartition(":")
    if address and not _is_host(address):
        raise Invalid("expected PORT or ADDRESS:PORT, e.g. 443 or 127.0.0.1:8443")
    try:
        _port(port)
    except Invalid:
        raise Invalid("expected PORT or ADDRESS:PORT, e.g. 443 or 127.0.0.1:8443") from None
    return raw.strip()


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip() not in options:
            raise Invalid(f"expected one of: {', '.join(options)}")
        return raw.strip()

    return parse


def _prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", raw.strip()):
        raise Invalid("expected 1-32 letters, digits, '_' or '-'")
    return raw.strip()


def _recipient(raw: str) -> str:
    if not AGE_RECIPIENT.match(raw.strip()):
        raise Invalid("expected an age public key (age1..., from `python -m opskit.age keygen`)")
    return raw.strip()


def _text(raw: str) -> str:
    return raw.strip()


@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[str], object] = _text
    required: frozenset[str] = frozenset()
    default: str | None = None
    secret: bool = False
    fix: str = ""  # how to produce a good value, when the generic advice is not enough
    # who reads the key (READERS): the containers that get it, the tools that use it
    readers: frozenset[str] = frozenset()


# Who reads settings. The first seven run on the server: each container gets only the keys
# whose readers name its service (compose/server.yml, checked against this schema by
# tests/unit/test_settings_readers.py; the running containers by the stack tier).
# `deploy` is the deploy engine; `compose` is compose's own ${...} interpolation, never a
# container; `tasks` the operator's inv and fab, on a laptop, in CI or on the server.
SERVICES = ("django", "postgresql", "pgbouncer", "redis", "nginx", "backup", "deploy")
READERS = (*SERVICES, "compose", "tasks")


def _readers(*names: str) -> frozenset[str]:
    unknown = set(names) - set(READERS)
    if unknown:
        raise ValueError(f"unknown readers {sorted(unknown)}: use {', '.join(READERS)}")
    return frozenset(names)


DJANGO = _readers("django")
COMPOSE = _readers("compose")
BACKUP = _readers("backup")
TASKS = _readers("tasks")


def _production_secret(name: str, *readers: str) -> Key:
    """A secret production must set; staging and local may leave it empty."""
    return Key(
        name,
        required=frozenset({"production"}),
        secret=True,
        default="",
        readers=_readers(*readers),
    )


SCHEMA: tuple[Key, ...] = (
    Key(
        "ENVIRONMENT",
        _choice(*ENVIRONMENTS),
        ALL,
        readers=_readers("django", "postgresql", "redis", "backup", "deploy", "tasks"),
    ),
    Key("DJANGO_SECRET_KEY", required=ALL, secret=True, readers=DJANGO),
    Key("DJANGO_DEBUG", _bool, default="false", readers=DJANGO),
    Key("DJANGO_ALLOWED_HOSTS", _hosts, SERVER_ENVS, default="localhost,127.0.0.1", readers=DJANGO),
    Key("DJANGO_CSRF_TRUSTED_ORIGINS", _urls, default="", readers=DJANGO),
    Key("SITE_DOMAIN", _host, SERVER_ENVS, default="localhost", readers=DJANGO),
    # read by `inv superuser` (Django's createsuperuser --noinput contract)
    Key("DJANGO_SUPERUSER_USERNAME", _text, default="", readers=TASKS),
    Key("DJANGO_SUPERUSER_EMAIL", _text, default="", readers=TASKS),
    Key("DJANGO_SUPERUSER_PASSWORD", secret=True, default="", readers=TASKS),
    Key("POSTGRES_DB", _prefix, ALL, readers=_readers("django", "postgresql", "backup", "tasks")),
    Key("POSTGRES_USER", _prefix, ALL, readers=_readers("django", "postgresql", "backup", "tasks")),
    Key(
        "POSTGRES_PASSWORD",
        required=ALL,
        secret=True,
        readers=_readers("django", "postgresql", "backup", "tasks"),
    ),
    Key("POSTGRES_HOST", _host, default="pgbouncer", readers=DJANGO),
    Key("POSTGRES_PORT", _port, default="6432", readers=DJANGO),
    Key("REDIS_HOST", _host, default="redis", readers=DJANGO),
    Key("REDIS_PORT", _port, default="6379", readers=DJANGO),
    Key("REDIS_DB", _int(0, 15), default="0", readers=DJANGO),
    Key("REDIS_USER", _text, SERVER_ENVS, default="", readers=_readers("django", "redis")),
    Key(
        "REDIS_PASSWORD",
        required=SERVER_ENVS,
        secret=True,
        default="",
        readers=_readers("django", "redis"),
    ),
    Key("REDIS_KEY_PREFIX", _prefix, default="dev", readers=_readers("django", "redis")),
    Key("GUNICORN_WORKERS", _int(1, 16), default="2", readers=DJANGO),
    Key("GUNICORN_THREADS", _int(1, 32), default="2", readers=DJANGO),
    Key("APP_PORT", _port, default="8000", readers=_readers("django", "deploy")),
    Key("DJANGO_STATIC_ROOT", _text, default="", readers=DJANGO),
    Key("DJANGO_MEDIA_ROOT", _text, default="", readers=DJANGO),
    _production_secret("POSTGRES_SUPERUSER_PASSWORD", "postgresql", "tasks"),
    _production_secret("PGBOUNCER_AUTH_PASSWORD", "postgresql", "pgbouncer"),
    _production_secret("REDIS_ADMIN_PASSWORD", "redis", "tasks"),
    Key("STATUS_USER", _text, default="ops", readers=_readers("nginx")),
    _production_secret("STATUS_PASSWORD", "nginx"),
    Key("LETSENCRYPT_EMAIL", _text, default="", readers=TASKS),
    Key("BACKUP_DIR", _text, default="backups", readers=BACKUP),
    Key("BACKUP_KEEP", _int(1, 365), default="3", readers=BACKUP),
    Key(
        "BACKUP_AGE_RECIPIENT",
        _recipient,
        SERVER_ENVS,
        default="",
        fix="make a key pair off the server with `python -m opskit.age keygen -o backup.key` "
        "and put the printed public key (age1...) here",
        readers=BACKUP,
    ),
    Key("S3_ENDPOINT_URL", _url, default="", readers=BACKUP),
    Key("S3_BUCKET", _text, default="", readers=BACKUP),
    Key("S3_PREFIX", _text, default="", readers=BACKUP),
    Key("S3_ACCESS_KEY_ID", _text, default="", readers=BACKUP),
    Key("S3_SECRET_ACCESS_KEY", secret=True, default="", readers=BACKUP),
    Key("S3_RETENTION_DAYS", _int(1, 3650), default="30", readers=BACKUP),
    Key("SLACK_WEBHOOK_URL", _url, secret=True, default="", readers=_readers("deploy", "tasks")),
    # read by `docker compose` from the checkout's .env (compose/server.yml, local.yml)
    Key("HTTP_PUBLISH", _publish, default="80", readers=COMPOSE),
    Key("HTTPS_PUBLISH", _publish, default="443", readers=COMPOSE),
    Key("DJANGO_PROD_MEMORY_LIMIT", _memory, default="144m", readers=COMPOSE),
    Key("DJANGO_STAGING_MEMORY_LIMIT", _memory, default="96m", readers=COMPOSE),
    Key("STAGING_ENV_FILE", _text, default=".env.staging", readers=COMPOSE),
    Key("EXTRA_CA_CERTS", _text, default="", readers=COMPOSE),
    Key("DEV_PORT", _port, default="8000", readers=COMPOSE),
)
KEYS = {k.name: k for k in SCHEMA}
SECRET_KEYS = frozenset(k.name for k in SCHEMA if k.secret)

# Keys a service gets under another name, because compose hands it both environments'
# values (compose/server.yml): service -> {name in the container: key of the schema}.
RENAMED: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "postgresql": MappingProxyType(
            {
                "PRODUCTION_POSTGRES_DB": "POSTGRES_DB",
                "PRODUCTION_POSTGRES_USER": "POSTGRES_USER",
                "PRODUCTION_POSTGRES_PASSWORD": "POSTGRES_PASSWORD",
            }
        ),
        "redis": MappingProxyType(
            {
                "REDIS_PROD_USER": "REDIS_USER",
                "REDIS_PROD_PASSWORD": "REDIS_PASSWORD",
                "REDIS_PROD_KEY_PREFIX": "REDIS_KEY_PREFIX",
            }
        ),
    }
)


def keys_for(service: str) -> tuple[str, ...]:
    """The schema's keys that `service` reads, in schema order."""
    if service not in READERS:
        raise ValueError(f"unknown service {service!r}: use {', '.join(READERS)}")
    return tuple(k.name for k in SCHEMA if service in k.readers)


def withheld_from(service: str) -> tuple[str, ...]:
    """The schema's keys `service` must not get, in schema order: what compose blanks
    where the service reads a whole env file (env_file)."""
    keys_for(service)
    return tuple(k.name for k in SCHEMA if service not in k.readers)


def schema_key(service: str, name: str) -> str | None:
    """The schema key that a variable of `service`'s container stands for, or None."""
    name = RENAMED.get(service, {}).get(name, name)
    return name if name in KEYS else None


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    fix: str
    line: int | None = None

    def render(self, path: str) -> str:
        where = f"{path}:{self.line}" if self.line else path
        return f"{where}: {self.key}: {self.message}; {self.fix}"


class SettingsError(Exception):
    """Everything wrong with one env file, each problem naming key, file and fix."""

    def __init__(self, path: str, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        lines = [p.render(path) for p in problems]
        super().__init__(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one environment. Secret values are `Secret`s."""

    environment: str
    path: str
    values: Mapping[str, object] = field(repr=False)
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> object:
        return self.values[key]

    def get(self, key: str, default: object = None) -> object:
        return self.values.get(key, default)

    def reveal(self, key: str) -> str:
        value = self.values[key]
        return value.reveal() if isinstance(value, Secret) else str(value)

    def redacted(self) -> dict[str, str]:
        """Every key as text for display: secrets that are set show as ***."""
        out = {}
        for key, value in self.values.items():
            if isinstance(value, Secret):
                out[key] = MASK if value else ""
            elif isinstance(value, tuple):
                out[key] = ",".join(value)
            elif isinstance(value, bool):
                out[key] = "true" if value else "false"
            else:
                out[key] = str(value)
        return out

    def as_environ(self) -> dict[str, str]:
        """Plain KEY=value strings for a child process's environment (secrets revealed)."""
        return {k: self.reveal(k) if k in SECRET_KEYS else v for k, v in self.redacted().items()}


def _example_for(environment: str) -> str:
    return EXAMPLES.get(environment, EXAMPLES["production"])


def _syntax_problems(text: str) -> list[Problem]:
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not ENV_LINE.match(line):
            problems.append(
                Problem(
                    "(syntax)",
                    f"line {n} is not KEY=value: {stripped[:40]!r}",
                    "write one KEY=value per line; start comments with #",
                    n,
                )
            )
            continue
        key = line.split("=", 1)[0].strip().removeprefix("export").strip()
        if key in seen:
            problems.append(
                Problem(key, f"set twice (lines {seen[key]} and {n})", "keep one of them", n)
            )
        seen[key] = n
    return problems


def validate(raw: Mapping[str, str | None], environment: str, *, text: str = "") -> Settings:
    """Check raw KEY -> value pairs for `environment`; raise SettingsError with every problem."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {environment!r}: use {', '.join(ENVIRONMENTS)}")
    example = _example_for(environment)
    problems = _syntax_problems(text) if text else []
    warnings: list[str] = []
    values: dict[str, object] = {}
    server = environment in SERVER_ENVS

    declared = raw.get("ENVIRONMENT")
    if declared and declared.strip() in ENVIRONMENTS and declared.strip() != environment:
        problems.append(
            Problem(
                "ENVIRONMENT",
                f"the file is for {declared.strip()!r}, not {environment!r}",
                f"pass --env {declared.strip()} or use the {environment} file ({example})",
            )
        )

    for key in SCHEMA:
        value = raw.get(key.name)
        value = None if value is None else value.strip()
        if not value:
            if environment in key.required:
                problems.append(
                    Problem(key.name, "missing", key.fix or f"set it in the file (see {example})")
                )
                continue
            value = key.default or ""
            if not value:
                values[key.name] = Secret("") if key.secret else ""
                continue
        if PLACEHOLDER_RE.search(value):
            fix = key.fix or (
                f"generate one with: {GENERATE_HINT}"
                if key.secret
                else f"replace it with the real value (see {example})"
            )
            if environment == "local" and key.secret:
                fix += " (or run `inv setup`, which fills the local file)"
            problems.append(Problem(key.name, "still holds the placeholder from the example", fix))
            continue
        if key.secret and server and value.lower() in KNOWN_DEFAULTS:
            problems.append(
                Problem(
                    key.name,
                    f"is a known default password, not allowed in {environment}",
                    f"generate one with: {GENERATE_HINT}",
                )
            )
            continue
        if key.name == "DJANGO_SECRET_KEY" and server:
            if value.startswith("django-insecure"):
                problems.append(
                    Problem(key.name, "is Django's insecure development key", GENERATE_HINT)
                )
                continue
            if len(value) < SECRET_KEY_MIN or len(set(value)) < 5:
                problems.append(
                    Problem(
                        key.name,
                        f"is {len(value)} characters; {environment} needs at least "
                        f"{SECRET_KEY_MIN} random characters",
                        f"generate one with: {GENERATE_HINT}",
                    )
                )
                continue
        try:
            parsed = key.parse(value)
        except Invalid as exc:
            shown = MASK if key.secret else repr(value)
            problems.append(Problem(key.name, f"{shown} is malformed: {exc}", "correct the value"))
            continue
        values[key.name] = Secret(str(parsed)) if key.secret else parsed

    if server and values.get("DJANGO_DEBUG") is True:
        problems.append(
            Problem("DJANGO_DEBUG", f"must be false in {environment}", "set DJANGO_DEBUG=false")
        )
    if values.get("S3_BUCKET"):
        for needed in ("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"):
            if not values.get(needed) and not any(p.key == needed for p in problems):
                problems.append(
                    Problem(needed, "missing while S3_BUCKET is set", "set it, or empty S3_BUCKET")
                )
    unknown = sorted(k for k in raw if k not in KEYS)
    if unknown:
        warnings.append(f"unknown keys (typo?): {', '.join(unknown)}")
    if problems:
        raise SettingsError("<env>", problems)
    return Settings(environment, "<env>", MappingProxyType(values), tuple(warnings))


def load(
    environment: str,
    env_file: str | Path | None = None,
    *,
    root: Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Read and validate `env_file` (default: .env in `root`) for `environment`.

    Precedence: `overrides` (task arguments) > the file > declared defaults.
    """
    path = Path(env_file) if env_file else Path(root or Path.cwd()) / DEFAULT_ENV_FILE
    shown = str(env_file) if env_file else DEFAULT_ENV_FILE
    example = _example_for(environment)
    if not path.is_file():
        target = DEFAULT_ENV_FILE if not env_file else shown
        fix = f"cp {example} {target} && chmod 600 {target}"
        if environment == "local":
            fix = "inv setup"
        raise SettingsError(
            shown, [Problem("(file)", "no such env file", f"create it with: {fix}")]
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SettingsError(
            shown, [Problem("(file)", "is not UTF-8 text", "save the file as UTF-8")]
        ) from None
    # parse the text already read: one read, and the checks see what was parsed
    raw = dict(dotenv_values(stream=io.StringIO(text), interpolate=False))
    raw.update(overrides or {})
    try:
        settings = validate(raw, environment, text=text)
    except SettingsError as exc:
        raise SettingsError(shown, exc.problems) from None
    warnings = list(settings.warnings)
    mode = stat.S_IMODE(path.stat().st_mode)
    if environment in SERVER_ENVS and mode & 0o077:
        warnings.append(f"{shown} is readable by others (mode {mode:o}); run: chmod 600 {shown}")
    return Settings(environment, shown, settings.values, tuple(warnings))


def describe(settings: Settings) -> str:
    """The resolved settings as `KEY=value` lines, secrets shown as ***."""
    shown = settings.redacted()
    width = max(len(k) for k in shown)
    lines = [f"# {settings.environment} settings from {settings.path}"]
    lines += [f"{k.ljust(width)} = {v}" for k, v in shown.items()]
    lines += [f"# warning: {w}" for w in settings.warnings]
    return "\n".join(lines)
