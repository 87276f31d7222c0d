"""Reading the environment for settings.py: small pure functions, tested on their own.

Nothing here imports Django settings, so unit tests call these directly.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

ENVIRONMENTS = ("local", "staging", "production")
DEPLOYED = ("staging", "production")

# how to make a good key, not a key
SECRET_KEY_FIX = 'python3 -c "import secrets; print(secrets.token_urlsafe(64))"'  # noqa: S105
SECRET_KEY_MIN_LENGTH = 50
# Django's own check (security.W009) also wants at least this many distinct characters
SECRET_KEY_MIN_UNIQUE = 5
# values that ship in examples, guides or Django's startproject and so are public
KNOWN_DEFAULTS = ("CHANGE_ME", "dev_password_123", "django-insecure")


def load_env_file(project_root: Path, environ: Mapping[str, str] | None = None) -> Path | None:
    """Load DJANGO_ENV_FILE, else PROJECT_ROOT/.env when present; real env vars win.

    Returns the file loaded, or None. A DJANGO_ENV_FILE that does not exist is an error:
    the operator asked for that file.
    """
    environ = os.environ if environ is None else environ
    named = environ.get("DJANGO_ENV_FILE", "").strip()
    if named:
        path = Path(named)
        if not path.exists() or path.is_dir():
            raise ImproperlyConfigured(
                f"DJANGO_ENV_FILE names {named}, which is not a file. "
                "Point it at an env file (see config/*.env.example) or unset it."
            )
    else:
        path = project_root / ".env"
        if not path.is_file():
            return None
    load_dotenv(path, override=False)
    return path


def get_str(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> str:
    """The stripped value of `name`; empty or missing gives `default`."""
    environ = os.environ if environ is None else environ
    value = environ.get(name, "").strip()
    return value or default


def get_bool(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    value = get_str(name, environ=environ).lower()
    if not value:
        return default
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false.")


def get_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    value = get_str(name, environ=environ)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a whole number.") from None


def get_list(name: str, default: str = "", environ: Mapping[str, str] | None = None) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [item.strip() for item in get_str(name, default, environ).split(",") if item.strip()]


def environment_name(environ: Mapping[str, str] | None = None) -> str:
    name = get_str("ENVIRONMENT", "local", environ).lower()
    if name not in ENVIRONMENTS:
        raise ImproperlyConfigured(
            f"ENVIRONMENT={name!r} is not one of {', '.join(ENVIRONMENTS)}. "
            "Set it in the env file (config/*.env.example show each)."
        )
    return name


def secret_key_problem(key: str) -> str | None:
    """Why `key` must not sign anything in a deployed environment, or None when it is fine."""
    if not key:
        return "is missing"
    for default in KNOWN_DEFAULTS:
        if default.lower() in key.lower():
            return f"is a placeholder or known default ({default})"
    if len(key) < SECRET_KEY_MIN_LENGTH:
        return f"is too short ({len(key)} characters, at least {SECRET_KEY_MIN_LENGTH} needed)"
    if len(set(key)) < SECRET_KEY_MIN_UNIQUE:
        return f"has fewer than {SECRET_KEY_MIN_UNIQUE} distinct characters"
    return None


def require_secret_key(key: str, environment: str) -> str:
    """The key itself, or ImproperlyConfigured naming DJANGO_SECRET_KEY and the fix."""
    problem = secret_key_problem(key)
    if problem:
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY {problem}; {environment} refuses to start without a real "
            f"secret. Generate one with: {SECRET_KEY_FIX} and put it in the env file."
        )
    return key


def redis_url(host: str, port: int | str, db: int | str, user: str = "", password: str = "") -> str:
    """redis://[USER[:PASSWORD]@]HOST:PORT/DB with user and password URL-quoted.

    With only a password (the default user protected by requirepass), the user part is
    empty: redis://:PASSWORD@HOST:PORT/DB.
    """
    auth = ""
    if user or password:
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    return f"redis://{auth}{host}:{port}/{db}"


def git_version(directory: Path) -> str | None:
    """`git describe --always --dirty` in `directory`, or None when that cannot be had."""
    try:
        proc = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


def app_version(directory: Path, environ: Mapping[str, str] | None = None) -> str:
    """APP_VERSION from the image build, else git describe, else "unknown"."""
    return get_str("APP_VERSION", environ=environ) or git_version(directory) or "unknown"
