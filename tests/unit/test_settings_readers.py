"""Who reads each setting: the schema's `readers` and compose/server.yml agree.

Each container of the server stack gets only the keys opskit/settings.py lists its service
as a reader of. The app services read a file rendered from the schema (opskit/appenv.py,
tested in test_appenv.py); where a shared service reads a whole env file (env_file),
compose blanks the rest: the lists are the schema's, and this test fails, printing the
lists to paste, when they drift. The running containers are compared with the schema by
the stack tier (tests/stack/test_least_privilege.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from opskit import appenv, settings

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "compose" / "server.yml"
# compose service -> the reader it is in the schema
SERVICE_READER = {
    "django_prod": "django",
    "django_staging": "django",
    "postgresql": "postgresql",
    "pgbouncer": "pgbouncer",
    "redis": "redis",
    "nginx": "nginx",
    "backup": "backup",
}


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(SERVER.read_text())["services"]


def expected_block(reader: str) -> str:
    lines = [f"x-withheld-from-{reader}: &withheld-from-{reader}"]
    lines += [f'  {k}: ""' for k in settings.withheld_from(reader)]
    return "\n".join(lines)


def test_every_key_has_a_reader_and_readers_are_known():
    for key in settings.SCHEMA:
        assert key.readers, f"{key.name}: no reader declared in opskit/settings.py"
        assert key.readers <= set(settings.READERS), key.name


def test_the_app_reads_no_backup_s3_webhook_superuser_or_shared_service_key():
    django = set(settings.keys_for("django"))
    forbidden = {
        k.name
        for k in settings.SCHEMA
        if k.name.startswith(("S3_", "BACKUP_", "DJANGO_SUPERUSER_"))
        or k.name
        in {
            "SLACK_WEBHOOK_URL",
            "POSTGRES_SUPERUSER_PASSWORD",
            "PGBOUNCER_AUTH_PASSWORD",
            "REDIS_ADMIN_PASSWORD",
            "STATUS_PASSWORD",
        }
    }
    assert len(forbidden) == 17
    assert not django & forbidden


def test_backup_reads_backup_and_s3_keys_and_its_database_role():
    backup = set(settings.keys_for("backup"))
    assert {k.name for k in settings.SCHEMA if k.name.startswith(("S3_", "BACKUP_"))} <= backup
    assert backup - {k for k in backup if k.startswith(("S3_", "BACKUP_"))} == {
        "ENVIRONMENT",
        "POSTGRES_DB",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
    }


@pytest.mark.parametrize("reader", ["postgresql", "redis"])
def test_compose_blanks_exactly_what_the_schema_withholds(reader):
    text = SERVER.read_text()
    block = expected_block(reader)
    assert block in text, (
        f"compose/server.yml's x-withheld-from-{reader} differs from opskit/settings.py; "
        f"paste this in its place:\n\n{block}\n"
    )


@pytest.mark.parametrize("service", sorted(SERVICE_READER))
def test_each_service_gets_only_keys_it_reads(services, service):
    reader = SERVICE_READER[service]
    svc = services[service]
    environment = svc.get("environment") or {}
    assert isinstance(environment, dict), f"{service}: environment must be a mapping"
    withheld = set(settings.withheld_from(reader))
    given = {}
    for name, value in environment.items():
        key = settings.schema_key(reader, name)
        assert key is not None, f"{service}: {name} is no key of opskit/settings.py"
        if value == "" and key in withheld:
            continue  # blanked
        assert reader in settings.KEYS[key].readers, (
            f"{service} gets {name}, which opskit/settings.py does not list {reader} as "
            f"reading: add the reader there or drop the key from compose/server.yml"
        )
        given[name] = value
    if reader == "django":
        # no blanked names at all: only the rendered file, which holds Django's keys only
        assert not environment, f"{service}: no environment: block, the rendered file only"
        assert svc["env_file"] == [{"path": appenv.rendered_path(service), "format": "raw"}], (
            f"{service} must read only its rendered file (opskit/appenv.py)"
        )
    elif svc.get("env_file"):
        # a whole env file: every key it may hold that the service does not read is blanked
        blanked = {k for k, v in environment.items() if v == ""}
        assert withheld <= blanked, f"{service}: not blanked: {sorted(withheld - blanked)}"
    if reader == "backup":
        # the backup container reads its env file, mounted read-only (scripts/backup.sh)
        assert not environment and not svc.get("env_file")


def test_the_local_app_reads_only_its_rendered_file():
    local = yaml.safe_load((ROOT / "compose" / "local.yml").read_text())["services"]["django"]
    assert local["env_file"] == [{"path": appenv.rendered_path("django"), "format": "raw"}]
    for name in local.get("environment") or {}:
        assert "django" in settings.KEYS[name].readers, name


def test_no_rendered_file_enters_git_or_an_image():
    for ignore in (".gitignore", ".dockerignore"):
        patterns = (ROOT / ignore).read_text().split()
        assert ".env.*" in patterns, f"{ignore} must keep .env.app/ out"
