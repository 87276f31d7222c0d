"""scripts/backup.sh, the cron entry point, against the running server stack.

The backup image is the `backup` service of compose/server.yml (profile `tools`, built by
name, never started by `up`). The script runs it on aiia_network as the operator's cron
does: it dumps production's database straight from PostgreSQL, encrypts it to the age
recipient of production's env file, verifies the set and rotates. The set then restores
through `inv db-restore --verify-only` into the stack's PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.core import ROOT
from tests.stack.stackkit import BUILD_TIMEOUT_S, PROD

SCRIPT = ROOT / "scripts" / "backup.sh"
INV = str(Path(sys.executable).parent / "inv")
KEEP = 3


def _setting(text: str, key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", text, flags=re.M)
    assert match, f"{key} missing from the env file"
    return match.group(1).strip()


@pytest.fixture(scope="module")
def backup_setup(server_stack, tmp_path_factory):
    """The backup image built, a key pair, its public key in production's env file."""
    server_stack.compose.run("build", "backup", timeout=BUILD_TIMEOUT_S)
    base = tmp_path_factory.mktemp("backup-stack")
    key = base / "backup.key"
    made = subprocess.run(
        [sys.executable, "-m", "opskit.age", "keygen", "-o", str(key)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    recipient = re.search(r"age1[0-9a-z]+", made.stdout + made.stderr)
    assert recipient, made.stdout + made.stderr
    env_file = server_stack.workdir / "production.env"
    original = env_file.read_text()
    assert re.search(r"^BACKUP_AGE_RECIPIENT=", original, flags=re.M)
    line = f"BACKUP_AGE_RECIPIENT={recipient.group(0)}"
    env_file.write_text(re.sub(r"^BACKUP_AGE_RECIPIENT=.*$", line, original, flags=re.M))
    try:
        yield env_file, key, base
    finally:
        env_file.write_text(original)


def run_backup(env_file: Path, base: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ENV_FILE": str(env_file),
        "BACKUP_DIR": str(base / "backups"),
        "LOG_DIR": str(base / "logs"),
    }
    for name in ("BACKUP_IMAGE", "NETWORK", "MEDIA_VOLUME"):
        env.pop(name, None)
    env.update(extra)
    return subprocess.run(
        ["bash", str(SCRIPT), "production"], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip


def test_backup_service_is_built_but_never_started_by_up(server_stack):
    services = server_stack.compose.run("config", "--services").stdout.split()
    assert "backup" not in services and "django_prod" in services
    config = json.loads(
        server_stack.compose.run("--profile", "tools", "config", "--format", "json").stdout
    )
    backup = config["services"]["backup"]
    assert backup["profiles"] == ["tools"]
    assert backup["image"] == "aiia/backup:latest"
    # scripts/backup.sh runs the image with the service's hardening and limits
    script = SCRIPT.read_text()
    run = script[script.index("docker run") :]
    argv = shlex.split(run[: run.index('"$BACKUP_IMAGE"')].replace("\\\n", " "))
    assert backup["read_only"] is True and "--read-only" in argv
    assert backup["cap_drop"] == ["ALL"] and argv[argv.index("--cap-drop") + 1] == "ALL"
    assert backup["security_opt"] == ["no-new-privileges:true"]
    assert argv[argv.index("--security-opt") + 1] == "no-new-privileges:true"
    limit = argv[argv.index("--memory") + 1]
    assert limit.endswith("m") and int(backup["mem_limit"]) == int(limit[:-1]) * 1024 * 1024
    assert argv[argv.index("--tmpfs") + 1] in backup["tmpfs"]


def test_backup_sh_writes_verified_sets_and_keeps_three(server_stack, backup_setup):
    env_file, key, base = backup_setup
    password = _setting(env_file.read_text(), "POSTGRES_PASSWORD")
    made = []
    for _ in range(KEEP + 1):
        done = run_backup(env_file, base)
        assert done.returncode == 0, done.stderr[-4000:]
        assert password not in done.stdout + done.stderr
        name = Path(done.stdout.strip().splitlines()[-1]).name
        set_dir = base / "backups" / name
        assert name.startswith("db_prod_") and set_dir.is_dir(), done.stdout
        assert (set_dir / "MANIFEST.txt").is_file()
        assert (set_dir / "database.dump.age").stat().st_size > 0
        # the manifest's checksums read back, as its own check command does
        sums = [
            line for line in (set_dir / "MANIFEST.txt").read_text().splitlines()
            if re.match(r"^[0-9a-f]{64}  ", line)
        ]  # fmt: skip
        assert any(line.endswith("  database.dump.age") for line in sums)
        check = subprocess.run(["sha256sum", "-c", "-"], input="\n".join(sums) + "\n",
                               cwd=set_dir, capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        made.append(name)
    assert len(set(made)) == KEEP + 1
    kept = sorted(p.name for p in (base / "backups").iterdir() if p.name.startswith("db_prod_"))
    assert kept == sorted(made)[-KEEP:]
    assert list((base / "logs").glob("backup_production_*.log"))

    # the newest set decrypts with the identity into a pg_dump custom-format archive
    newest = base / "backups" / made[-1]
    plain = base / "database.dump"
    subprocess.run(
        [sys.executable, "-m", "opskit.age", "-d", "-i", str(key), "-o", str(plain),
         str(newest / "database.dump.age")],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    assert plain.read_bytes()[:5] == b"PGDMP"
    plain.unlink()

    # and restores: the drill into a scratch database of the stack's PostgreSQL
    drill = subprocess.run(
        [INV, "--search-root", str(ROOT), "db-restore", str(newest), "--verify-only",
         "--env", "production", "--env-file", str(env_file), "--identity", str(key)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert drill.returncode == 0, drill.stdout + drill.stderr[-4000:]
    assert "drill passed" in drill.stderr


def test_backup_sh_holds_the_media_and_restore_brings_an_upload_back(server_stack, backup_setup):
    """A set from scripts/backup.sh production holds media.tar.gz.age (the volume
    aiia_django_prod has at /app/media); `inv db-restore --media` puts a deleted upload
    back byte for byte."""
    env_file, key, base = backup_setup
    data = os.urandom(200_000) + b"\x00\xff end"
    name = f"uploads/restore-{os.getpid()}.bin"
    put = subprocess.run(
        ["docker", "exec", "-i", "aiia_django_prod", "sh", "-c",
         f"mkdir -p /app/media/uploads && cat > /app/media/{name}"],
        input=data, capture_output=True,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr

    def read_back() -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "exec", "aiia_django_prod", "cat", f"/app/media/{name}"],
                              capture_output=True)  # fmt: skip

    done = run_backup(env_file, base)
    assert done.returncode == 0, done.stderr[-4000:]
    # the set's path as the container saw it (/backups/...): here it is under base
    set_dir = base / "backups" / Path(done.stdout.strip().splitlines()[-1]).name
    assert (set_dir / "media.tar.gz.age").stat().st_size > len(data) // 2
    assert "media archived and read back" in done.stderr
    manifest = (set_dir / "MANIFEST.txt").read_text()
    assert re.search(r"^[0-9a-f]{64}  media.tar.gz.age$", manifest, flags=re.M)
    assert "media.tar.gz.age | docker run --rm -i --network none" in manifest

    removed = subprocess.run(["docker", "exec", "aiia_django_prod", "rm", f"/app/media/{name}"],
                             capture_output=True)  # fmt: skip
    assert removed.returncode == 0 and read_back().returncode != 0

    restored = subprocess.run(
        [INV, "--search-root", str(ROOT), "db-restore", str(set_dir), "--yes", "--media",
         "--env", "production", "--env-file", str(env_file), "--identity", str(key)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert restored.returncode == 0, restored.stdout + restored.stderr[-4000:]
    assert "media put back" in restored.stderr
    back = read_back()
    assert back.returncode == 0 and back.stdout == data
    owner = subprocess.run(
        ["docker", "exec", "aiia_django_prod", "stat", "-c", "%u", f"/app/media/{name}"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert owner == "10001"
    # the app serves it again through nginx, as a download
    resp = server_stack.https(PROD, f"/media/{name}")
    assert resp.status == 200 and resp.body == data
    assert resp.headers["content-disposition"] == "attachment"
