"""`inv config`: show the resolved settings of an environment, or say what is wrong;
`inv render-env`: the app containers' env files (.env.app/), from the env files."""

from __future__ import annotations

from invoke import Collection, Exit, task

from opskit import appenv
from opskit import settings as settings_mod
from opskit.tasks._common import project_root, say


@task(
    help={
        "env": "local (default), staging or production",
        "env-file": "the env file to read (default: .env in the project root)",
    }
)
def config(c, env="local", env_file=None):
    """Check an env file and print its settings, secrets as ***."""
    try:
        resolved = settings_mod.load(env, env_file)
    except settings_mod.SettingsError as exc:
        raise Exit(f"config: {exc}", code=1) from None
    except ValueError as exc:
        raise Exit(f"config: {exc}", code=2) from None
    print(settings_mod.describe(resolved))


def refresh_app_env(stack: str, *, dry_run: bool = False) -> None:
    """Render `stack`'s app env files before compose starts anything: a fresh env file
    never meets a stale rendered one."""
    root = project_root()
    services = appenv.STACKS[stack]
    if dry_run:
        for service in services:
            say(f"would render {service.path} (only the keys Django reads)")
        return
    try:
        done = appenv.refresh(root, services)
    except appenv.AppEnvError as exc:
        raise Exit(f"render-env: {exc}", code=1) from None
    for r in done:
        if r.changed:
            sources = ", then ".join(str(p) for p in r.sources)
            say(
                f"render-env: wrote {r.path.relative_to(root)} from {sources} "
                f"(mode 0600); left out, Django does not read them: "
                f"{' '.join(r.left_out) or 'nothing'}"
            )


@task(
    help={
        "stack": "server (django_prod, django_staging) or local (django); default: "
        "local when .env is for local, else server",
        "check": "write nothing; exit 1 when a file is missing or older than its env file",
    }
)
def render_env(c, stack=None, check=False):
    """Write .env.app/ for the app containers: only the keys Django reads, mode 0600."""
    root = project_root()
    chosen = stack or appenv.default_stack(root)
    if chosen not in appenv.STACKS:
        raise Exit(f"render-env: --stack {chosen}: use server or local", code=2)
    if check:
        problems = appenv.stale(root, appenv.STACKS[chosen])
        if problems:
            raise Exit("render-env: " + "\n  ".join(problems), code=1)
        say(f"render-env: {chosen} stack's app env files are up to date")
        return
    refresh_app_env(chosen)
    say(f"render-env: {chosen} stack's app env files are up to date")


ns = Collection(config, render_env)
