"""The app containers' env files, rendered from the operator's env files by the schema.

Compose cannot filter an env file: a service with `env_file: .env` gets every key of it,
S3, backup, webhook and superuser settings included, and blanking them in `environment:`
still leaves their names in the container. So the Django services of both stacks read a
rendered file instead, `.env.app/SERVICE.env` in the project directory, holding exactly
the keys of opskit/settings.py whose readers name django (`settings.keys_for("django")`),
with the values of the env file(s) compose would have read:

    django_prod      PRODUCTION_ENV_FILE, else .env          (compose/server.yml)
    django_staging   STAGING_ENV_FILE, else .env.staging     (compose/server.yml)
    django           config/local.env.example, then .env     (compose/local.yml)

Whatever starts compose renders first: `inv dev`, `inv render-env`, `fab setup`, every
deploy (for its environment). The files are mode 0600 in a 0700 folder, ignored by git
and by the image's build context; compose reads them with `format: raw`, so a value is
taken literally. A missing file stops every `docker compose` command of the stack with
"env file .../.env.app/django_prod.env not found": `inv render-env` makes it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from opskit import settings

RENDERED_DIR = ".env.app"
READER = "django"
FIX = "inv render-env"


class AppEnvError(Exception):
    """A source env file is missing or a value cannot be handed to a container."""


@dataclass(frozen=True)
class Source:
    """One env file compose would read: named by `variable` (compose's ${...}), else `default`."""

    default: str
    variable: str | None = None
    required: bool = True


@dataclass(frozen=True)
class Service:
    """An app service of a stack and the env files its rendered file is made of, in order."""

    name: str
    sources: tuple[Source, ...]

    @property
    def path(self) -> str:
        """Where compose reads the rendered file, relative to the project directory."""
        return rendered_path(self.name)


SERVER = (
    Service("django_prod", (Source(".env", "PRODUCTION_ENV_FILE"),)),
    Service("django_staging", (Source(".env.staging", "STAGING_ENV_FILE"),)),
)
LOCAL = (Service("django", (Source(settings.EXAMPLES["local"]), Source(".env", required=False))),)
STACKS = {"server": SERVER, "local": LOCAL}


def rendered_path(service: str) -> str:
    return f"{RENDERED_DIR}/{service}.env"


def keys() -> tuple[str, ...]:
    """What an app container gets: the schema's keys that Django reads."""
    return settings.keys_for(READER)


def parse(text: str) -> dict[str, str]:
    """An env file's KEY=value pairs, read as `inv config` and the deploy check read them."""
    raw = dotenv_values(stream=io.StringIO(text), interpolate=False)
    return {k: v for k, v in raw.items() if v is not None}


def render(values: Mapping[str, str], *, source: str = "the env file") -> str:
    """The rendered file: Django's keys present in `values`, in schema order, nothing else.

    The same values give the same text whoever renders (inv, fab setup, a deploy), so a
    file is rewritten, and reported stale, only when a value changed. `source` names the
    env file in errors.
    """
    lines = [
        "# only the keys Django reads (opskit/settings.py), rendered from the env file by",
        f"# opskit/appenv.py: edit the env file, then `{FIX}` (fab setup and deploys do too)",
    ]
    for key in keys():
        if key not in values:
            continue
        value = values[key]
        if any(c in value for c in "\n\r\0"):
            raise AppEnvError(
                f"{source}: {key}: a value with a line break cannot be handed to a "
                "container; put it on one line"
            )
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def left_out(values: Mapping[str, str]) -> list[str]:
    """Names of the env file that the app container does not get (names only)."""
    wanted = set(keys())
    return sorted(k for k in values if k not in wanted)


def _compose_variable(root: Path, name: str, environ: Mapping[str, str]) -> str:
    """A variable as compose interpolates it: the process's environment, then the files of
    COMPOSE_ENV_FILES (later ones win), else the project's .env."""
    if environ.get(name):
        return environ[name]
    listed = [f for f in environ.get("COMPOSE_ENV_FILES", "").split(",") if f]
    value = ""
    for f in listed or [".env"]:
        path = Path(f) if Path(f).is_absolute() else root / f
        if path.is_file():
            value = parse(path.read_text(encoding="utf-8")).get(name, value)
    return value


def source_path(root: Path, source: Source, environ: Mapping[str, str]) -> Path:
    given = _compose_variable(root, source.variable, environ) if source.variable else ""
    path = Path(given or source.default)
    return path if path.is_absolute() else root / path


@dataclass(frozen=True)
class Rendered:
    service: str
    path: Path
    sources: tuple[Path, ...]
    changed: bool
    left_out: tuple[str, ...]


def compose_text(root: Path, service: Service, environ: Mapping[str, str]) -> tuple[str, list]:
    """The rendered file's text for `service`, its sources and the names left out."""
    values: dict[str, str] = {}
    used: list[Path] = []
    for src in service.sources:
        path = source_path(root, src, environ)
        if not path.exists() or path.is_dir():  # /dev/null is a file to compose
            if not src.required:
                continue
            named = f" ({src.variable})" if src.variable else ""
            raise AppEnvError(
                f"{service.name}: no env file {path}{named}: compose reads the app's settings "
                f"from it; create it (docs/server.md, config/*.env.example), then `{FIX}`"
            )
        values.update(parse(path.read_text(encoding="utf-8")))
        used.append(path)
    shown = ", then ".join(_shown(root, p) for p in used)
    return render(values, source=shown), used, left_out(values)


def _shown(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def write_private(path: Path, text: str) -> bool:
    """Write `text` to `path` (0600, its folder 0700), atomically; False if unchanged."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        os.chmod(path, 0o600)
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def refresh(
    root: Path,
    services: Sequence[Service] = SERVER,
    environ: Mapping[str, str] | None = None,
) -> list[Rendered]:
    """Render each service's file in `root` from its env files (rewritten only on change)."""
    environ = os.environ if environ is None else environ
    # every source read first: a missing one leaves every rendered file as it was
    texts = [(service, *compose_text(root, service, environ)) for service in services]
    out = []
    for service, text, used, dropped in texts:
        path = root / service.path
        changed = write_private(path, text)
        out.append(Rendered(service.name, path, tuple(used), changed, tuple(dropped)))
    return out


def stale(
    root: Path,
    services: Sequence[Service] = SERVER,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """What is missing or out of date, each with the command that fixes it."""
    environ = os.environ if environ is None else environ
    problems = []
    for service in services:
        path = root / service.path
        try:
            text, _used, _dropped = compose_text(root, service, environ)
        except AppEnvError as exc:
            problems.append(str(exc))
            continue
        if not path.is_file():
            problems.append(f"{service.path} is missing: `{FIX}` renders it")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{service.path} is older than its env file: `{FIX}` renders it")
    return problems


def default_stack(root: Path) -> str:
    """local when the checkout's .env is for local (or there is none), else server."""
    dot = root / ".env"
    declared = parse(dot.read_text(encoding="utf-8")).get("ENVIRONMENT") if dot.is_file() else None
    return "local" if (declared or "local").strip() == "local" else "server"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m opskit.appenv",
        description="Render .env.app/ (the app containers' env files) from the env files.",
    )
    parser.add_argument("--root", default=".", help="the checkout (compose's project directory)")
    parser.add_argument(
        "--stack", choices=sorted(STACKS), action="append",
        help="default: local when .env is for local (or missing), else server",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    services = [s for name in (args.stack or [default_stack(root)]) for s in STACKS[name]]
    if args.check:
        problems = stale(root, services)
        for p in problems:
            print(p)
        return 1 if problems else 0
    try:
        for r in refresh(root, services):
            print(f"{r.path}: {'written' if r.changed else 'up to date'}")
    except AppEnvError as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
