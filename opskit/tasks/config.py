"""`inv config`: show the resolved settings of an environment, or say what is wrong."""

from __future__ import annotations

from invoke import Collection, Exit, task

from opskit import settings as settings_mod


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


ns = Collection(config)
