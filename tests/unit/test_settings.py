"""Env file validation: every problem named with key, file and fix; secrets never shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from opskit import settings as s
from opskit.shell import Secret

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k" * 20 + "Zq9-x_Y7w" * 5  # 65 characters, varied
RECIPIENT = "age1" + "q" * 58


def example(name: str) -> dict[str, str]:
    """config/NAME.env.example as key -> value, placeholders included."""
    lines = (ROOT / "config" / f"{name}.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def good_production() -> dict[str, str]:
    """The production example with every placeholder filled by a plausible value."""
    values = example("prod")
    fills = {
        "DJANGO_SECRET_KEY": GOOD_KEY,
        "POSTGRES_PASSWORD": "pg-" + "a1b2c3" * 5,
        "REDIS_PASSWORD": "rd-" + "d4e5f6" * 5,
        "POSTGRES_SUPERUSER_PASSWORD": "su-" + "g7h8i9" * 5,
        "PGBOUNCER_AUTH_PASSWORD": "pb-" + "j1k2l3" * 5,
        "REDIS_ADMIN_PASSWORD": "ra-" + "m4n5o6" * 5,
        "STATUS_PASSWORD": "st-" + "p7q8r9" * 5,
        "BACKUP_AGE_RECIPIENT": RECIPIENT,
    }
    values.update(fills)
    assert not any("CHANGE_ME" in v for v in values.values())
    return values


def write_env(tmp_path: Path, values: dict[str, str], name: str = "prod.env") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def problems_of(path: Path, env: str = "production") -> list[str]:
    with pytest.raises(s.SettingsError) as err:
        s.load(env, path)
    return [p.render(err.value.path) for p in err.value.problems]


def test_complete_production_file_passes_and_masks_secrets(tmp_path):
    path = write_env(tmp_path, good_production())
    loaded = s.load("production", path)
    assert loaded.warnings == ()  # every key of the example is declared
    assert loaded.environment == "production"
    assert loaded["POSTGRES_PORT"] == 6432
    assert loaded["DJANGO_ALLOWED_HOSTS"] == ("eduaiia.com", "www.eduaiia.com")
    assert isinstance(loaded["DJANGO_SECRET_KEY"], Secret)
    assert loaded.reveal("DJANGO_SECRET_KEY") == GOOD_KEY
    text = s.describe(loaded)
    assert "DJANGO_SECRET_KEY" in text and GOOD_KEY not in text
    assert re.search(r"^POSTGRES_PASSWORD\s+= \*\*\*$", text, re.M)
    for secret in good_production().values():
        if secret.startswith(("pg-", "rd-", "su-", "pb-", "ra-", "st-")):
            assert secret not in text
    with pytest.raises(AttributeError):
        loaded.environment = "staging"  # frozen


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            {"DJANGO_SECRET_KEY": None}, r"DJANGO_SECRET_KEY: missing", id="secret-key-missing"
        ),
        pytest.param(
            {"POSTGRES_PASSWORD": "CHANGE_ME"},
            r"POSTGRES_PASSWORD: still holds the placeholder.*generate one",
            id="placeholder-db-password",
        ),
        pytest.param(
            {"POSTGRES_PASSWORD": "dev_password_123"},
            r"POSTGRES_PASSWORD: is a known default password, not allowed in production",
            id="dev-password",
        ),
        pytest.param(
            {"POSTGRES_PORT": "80a"},
            r"POSTGRES_PORT: '80a' is malformed: expected a TCP port",
            id="port-80a",
        ),
        pytest.param(
            {"DJANGO_SECRET_KEY": "short-but-random-Xy7"},
            r"DJANGO_SECRET_KEY: is 20 characters; production needs at least 50",
            id="short-secret-key",
        ),
        pytest.param(
            {"REDIS_HOST": "redis host!"},
            r"REDIS_HOST: 'redis host!' is malformed: expected a host name",
            id="bad-host",
        ),
        pytest.param(
            {"DJANGO_PROD_MEMORY_LIMIT": "lots"},
            r"DJANGO_PROD_MEMORY_LIMIT: 'lots' is malformed: expected a memory size",
            id="bad-memory",
        ),
        pytest.param(
            {"SLACK_WEBHOOK_URL": "hooks.example/abc"},
            r"SLACK_WEBHOOK_URL: \*\*\* is malformed: expected an http:// or https:// URL",
            id="bad-url-stays-masked",
        ),
        pytest.param(
            {"HTTPS_PUBLISH": "127.0.0.1:44x"},
            r"HTTPS_PUBLISH: '127.0.0.1:44x' is malformed: expected PORT or ADDRESS:PORT",
            id="bad-publish",
        ),
        pytest.param(
            {"DJANGO_DEBUG": "true"}, r"DJANGO_DEBUG: must be false in production", id="debug-on"
        ),
        pytest.param(
            {"ENVIRONMENT": "staging"},
            r"ENVIRONMENT: the file is for 'staging', not 'production'",
            id="wrong-environment",
        ),
        pytest.param(
            {"S3_BUCKET": "backups", "S3_SECRET_ACCESS_KEY": "s3-secret-value-1"},
            r"S3_ACCESS_KEY_ID: missing while S3_BUCKET is set",
            id="s3-half-configured",
        ),
    ],
)
def test_each_problem_names_key_file_and_fix(tmp_path, change, expected):
    values = good_production()
    for key, value in change.items():
        if value is None:
            values.pop(key)
        else:
            values[key] = value
    path = write_env(tmp_path, values)
    found = problems_of(path)
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: ")
    assert re.search(expected, found[0]), found[0]
    # the offending secret value itself never appears in a message
    for key, value in change.items():
        if value and key in s.SECRET_KEYS and value not in {"CHANGE_ME"}:
            assert value not in found[0]


def test_all_problems_of_a_file_reported_in_one_run(tmp_path):
    values = good_production()
    values.pop("DJANGO_SECRET_KEY")
    values["POSTGRES_PASSWORD"] = "CHANGE_ME"
    values["REDIS_PASSWORD"] = "dev_password_123"
    values["POSTGRES_PORT"] = "80a"
    found = problems_of(write_env(tmp_path, values))
    assert [f.split(": ")[1] for f in found] == [
        "DJANGO_SECRET_KEY",
        "POSTGRES_PASSWORD",
        "POSTGRES_PORT",
        "REDIS_PASSWORD",
    ]


def test_malformed_lines_and_duplicates_are_reported(tmp_path):
    path = write_env(tmp_path, good_production())
    path.write_text(path.read_text() + "this is not a setting\nPOSTGRES_DB=aiia_prod\n")
    found = problems_of(path)
    assert any(re.search(r":\d+: \(syntax\): line \d+ is not KEY=value", f) for f in found)
    assert any("POSTGRES_DB: set twice" in f for f in found)


def test_missing_file_says_how_to_create_it(tmp_path):
    found = problems_of(tmp_path / "nope.env")
    assert found == [
        f"{tmp_path / 'nope.env'}: (file): no such env file; create it with: "
        f"cp config/prod.env.example {tmp_path / 'nope.env'} && chmod 600 {tmp_path / 'nope.env'}"
    ]


def test_local_allows_the_guide_development_password(tmp_path):
    values = example("local")
    values["DJANGO_SECRET_KEY"] = "local-only-key"
    loaded = s.load("local", write_env(tmp_path, values, "local.env"))
    assert loaded.reveal("POSTGRES_PASSWORD") == "dev_password_123"
    assert loaded["DJANGO_DEBUG"] is True


def test_local_placeholder_points_to_inv_setup(tmp_path):
    src = (ROOT / "config/local.env.example").read_text()
    path = tmp_path / "local.env"
    path.write_text(src)
    found = problems_of(path, "local")
    assert len(found) == 1 and "DJANGO_SECRET_KEY" in found[0] and "inv setup" in found[0]


def test_world_readable_server_file_warns(tmp_path):
    path = write_env(tmp_path, good_production())
    path.chmod(0o644)
    loaded = s.load("production", path)
    assert any("chmod 600" in w for w in loaded.warnings)


def run_inv_config(*args: str) -> subprocess.CompletedProcess:
    inv = [sys.executable, "-m", "invoke", "config", *args]
    return subprocess.run(inv, cwd=ROOT, capture_output=True, text=True)


def test_inv_config_fails_with_four_messages_and_passes_a_good_file(tmp_path):
    values = good_production()
    bad = dict(values)
    bad.pop("DJANGO_SECRET_KEY")
    bad.update(POSTGRES_PASSWORD="CHANGE_ME", REDIS_PASSWORD="dev_password_123", APP_PORT="80a")
    proc = run_inv_config("--env", "production", "--env-file", str(write_env(tmp_path, bad)))
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"  {tmp_path}")]
    assert len(lines) == 4, proc.stderr
    assert "4 problem(s)" in proc.stderr

    good = write_env(tmp_path, values, "good.env")
    proc = run_inv_config("--env", "production", "--env-file", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "DJANGO_SECRET_KEY" in proc.stdout and "= ***" in proc.stdout
    assert GOOD_KEY not in proc.stdout + proc.stderr
