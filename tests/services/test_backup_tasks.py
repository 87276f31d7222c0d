"""`inv db-backup`, `inv db-backup-staging` and `inv db-restore` as an operator runs them,
against the native PostgreSQL (--transport tcp) with a real env file.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from tests.harness.backup import PG_BIN, fingerprint
from tests.harness.core import ROOT

pytest_plugins = ["tests.harness.backup"]

INV = str(Path(sys.executable).parent / "inv")


def env_file_for(path: Path, db, recipient: str, environment: str = "production") -> Path:
    example = "prod.env.example" if environment == "production" else "staging.env.example"
    text = (ROOT / "config" / example).read_text()
    text = re.sub(r"CHANGE_ME", lambda _m: secrets.token_urlsafe(48), text)
    text = re.sub(r"^BACKUP_AGE_RECIPIENT=.*$", f"BACKUP_AGE_RECIPIENT={recipient}", text,
                  flags=re.M)  # fmt: skip
    text = re.sub(r"^POSTGRES_DB=.*$", f"POSTGRES_DB={db.name}", text, flags=re.M)
    text = re.sub(r"^POSTGRES_USER=.*$", f"POSTGRES_USER={db.name}", text, flags=re.M)
    text = re.sub(r"^POSTGRES_PASSWORD=.*$", f"POSTGRES_PASSWORD={db.password}", text, flags=re.M)
    if environment == "production":
        text = re.sub(r"^POSTGRES_SUPERUSER_PASSWORD=.*$",
                      f"POSTGRES_SUPERUSER_PASSWORD={db.server.superuser_password}", text,
                      flags=re.M)  # fmt: skip
    path.write_text(text)
    path.chmod(0o600)
    return path


def inv(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
    env.pop("PGPASSWORD", None)
    return subprocess.run([INV, "--search-root", str(ROOT), *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True)  # fmt: skip


def tcp(db) -> list[str]:
    return ["--transport", "tcp", "--host", db.server.host, "--port", str(db.server.port)]


def test_backup_then_restore_drill_and_swap_by_the_guides_path(
    backup_db, age_key, tmp_path, postgres_server
):
    env_file = env_file_for(tmp_path / ".env", backup_db, age_key.recipient)
    done = inv(["db-backup", "--env-file", str(env_file), *tcp(backup_db)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    set_dir = Path(done.stdout.strip())
    assert set_dir.parent == tmp_path / "backups" and set_dir.name.startswith("db_prod_")
    assert "verified" in done.stderr
    assert postgres_server.superuser_password not in done.stdout + done.stderr
    assert backup_db.password not in done.stdout + done.stderr
    original = fingerprint(postgres_server, backup_db.name)

    # the drill, with the key on stdin (how `fab restore` hands it over)
    guide_path = f"backups/{set_dir.name}/database.dump"
    drill = inv(["db-restore", guide_path, "--env-file", str(env_file), "--verify-only",
                 "--identity", "-", *tcp(backup_db)], cwd=tmp_path,
                stdin=age_key.identity_file.read_text())  # fmt: skip
    assert drill.returncode == 0, drill.stderr
    assert "drill passed" in drill.stderr

    # without --yes and without a terminal nothing is swapped
    backup_db.psql("DELETE FROM events")
    refused = inv(["db-restore", guide_path, "--env-file", str(env_file), "--identity",
                   str(age_key.identity_file), *tcp(backup_db)], cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 1 and "rerun with --yes" in refused.stderr
    assert fingerprint(postgres_server, backup_db.name) != original

    swapped = inv(["db-restore", guide_path, "--env-file", str(env_file), "--yes",
                   "--identity", str(age_key.identity_file), *tcp(backup_db)],
                  cwd=tmp_path)  # fmt: skip
    assert swapped.returncode == 0, swapped.stderr
    assert fingerprint(postgres_server, backup_db.name) == original
    assert "the previous database is kept as" in swapped.stderr


def test_staging_backup_is_refused_for_production_without_force(backup_db, age_key, tmp_path):
    staging_env = env_file_for(tmp_path / ".env.staging", backup_db, age_key.recipient,
                               environment="staging")  # fmt: skip
    prod_env = env_file_for(tmp_path / ".env", backup_db, age_key.recipient)
    done = inv(["db-backup-staging", *tcp(backup_db)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    set_dir = Path(done.stdout.strip())
    assert set_dir.name.startswith("db_staging_")
    refused = inv(["db-restore", str(set_dir), "--env-file", str(prod_env), "--verify-only",
                   "--identity", str(age_key.identity_file), *tcp(backup_db)],
                  cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 1
    assert "is a staging backup" in refused.stderr and "needs --force" in refused.stderr
    forced = inv(["db-restore", str(set_dir), "--env-file", str(prod_env), "--verify-only",
                  "--force", "--identity", str(age_key.identity_file), *tcp(backup_db)],
                 cwd=tmp_path)  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert staging_env.exists()


def test_failures_exit_non_zero_and_say_what_to_do(backup_db, age_key, tmp_path):
    env_file = env_file_for(tmp_path / ".env", backup_db, age_key.recipient)
    text = env_file.read_text().replace(f"POSTGRES_PASSWORD={backup_db.password}",
                                        "POSTGRES_PASSWORD=wrong-but-long-enough-x")  # fmt: skip
    env_file.write_text(text)
    failed = inv(["db-backup", *tcp(backup_db)], cwd=tmp_path)
    assert failed.returncode == 1
    assert "backup FAILED: pg_dump exited with status 1" in failed.stderr
    assert "there is no good backup of this environment yet" in failed.stderr
    assert "wrong-but-long-enough-x" not in failed.stderr
    missing = inv(["db-restore", "backups/db_prod_20240101_000000", "--identity",
                   str(age_key.identity_file), *tcp(backup_db)], cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2 and "no such backup set" in missing.stderr
    no_key = inv(["db-restore", str(tmp_path), "--identity", str(tmp_path / "nokey")],
                 cwd=tmp_path)  # fmt: skip
    assert no_key.returncode == 2 and "no such identity file" in no_key.stderr


def test_dry_run_prints_the_pipeline_and_runs_nothing(backup_db, age_key, tmp_path):
    env_file_for(tmp_path / ".env", backup_db, age_key.recipient)
    dry = inv(["db-backup", "--dry-run"], cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(
        f"docker exec -i aiia_postgresql pg_dump --format=custom --compress=1 --username postgres "
        f"--no-password --dbname {backup_db.name} | (in this process) age -r "
        f"{age_key.recipient}, sha256 > "
    )
    assert not (tmp_path / "backups").exists()


def test_the_container_entry_point_backs_up_and_syncs(backup_db, age_key, tmp_path, s3_server):
    """`python -m opskit.backup`, as scripts/backup.sh runs it in the backup container."""
    bucket = f"b-{secrets.token_hex(4)}"
    s3_server.client().create_bucket(Bucket=bucket)
    env_file = env_file_for(tmp_path / "env", backup_db, age_key.recipient)
    text = env_file.read_text()
    for key, value in {"S3_ENDPOINT_URL": s3_server.url, "S3_BUCKET": bucket,
                       "S3_ACCESS_KEY_ID": s3_server.access_key,
                       "S3_SECRET_ACCESS_KEY": s3_server.secret_key}.items():  # fmt: skip
        text = re.sub(rf"^{key}=.*$", f"{key}={value}", text, flags=re.M)
    env_file.write_text(text)
    env = {**os.environ, "PATH": f"{PG_BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "opskit.backup", "backup", "--env", "production", "--env-file",
         str(env_file), "--backup-dir", str(tmp_path / "b"), "--host", backup_db.server.host,
         "--port", str(backup_db.server.port)],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    name = Path(proc.stdout.strip()).name
    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert f"aiia/prod/{name}/MANIFEST.txt" in [o["Key"] for o in listed]
    assert "offsite: uploaded" in proc.stderr and s3_server.secret_key not in proc.stderr
    sync = subprocess.run(
        [sys.executable, "-m", "opskit.backup", "sync", "--env", "production", "--env-file",
         str(env_file), "--backup-dir", str(tmp_path / "b")],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert sync.returncode == 0, sync.stderr
