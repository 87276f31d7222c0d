"""Each running container of the server stack holds only the settings its service reads.

`docker inspect` lists every variable of each container; the image's own (PATH, LANG,
the image's defaults) are told apart by `docker image inspect`. Every other variable that
holds a value must be a key of opskit/settings.py whose readers name the container's
service. The app containers read a rendered env file and hold no withheld name at all,
empty or not. The table is printed: what each container holds, and what compose blanked.
Public /health/ through nginx shows the status only.
"""

from __future__ import annotations

import json
import subprocess

from opskit import settings
from tests.stack.stackkit import PROD, SERVER_CONTAINERS

READER = {
    "nginx": "nginx",
    "django_prod": "django",
    "django_staging": "django",
    "postgresql": "postgresql",
    "pgbouncer": "pgbouncer",
    "redis": "redis",
}
# what the app must never hold (the list): S3, backup, webhook, superuser and the
# shared services' secrets
NEVER_IN_THE_APP = {
    k.name for k in settings.SCHEMA if k.name.startswith(("S3_", "BACKUP_", "DJANGO_SUPERUSER_"))
} | {
    "SLACK_WEBHOOK_URL",
    "POSTGRES_SUPERUSER_PASSWORD",
    "PGBOUNCER_AUTH_PASSWORD",
    "REDIS_ADMIN_PASSWORD",
    "STATUS_USER",
    "STATUS_PASSWORD",
}


def _env(kind: str, name: str) -> dict[str, str]:
    out = subprocess.run(
        ["docker", kind, "inspect", "--format", "{{json .Config.Env}}", name],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return dict(item.partition("=")[::2] for item in json.loads(out) or [])


def test_each_container_holds_only_the_keys_its_service_reads(server_stack):
    rows = []
    for service, container in SERVER_CONTAINERS.items():
        reader = READER[service]
        image = subprocess.run(
            ["docker", "inspect", "--format", "{{.Image}}", container],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        from_image = _env("image", image)
        env = _env("container", container)
        own = {k: v for k, v in env.items() if not (k in from_image and from_image[k] == v)}
        held = {k for k, v in own.items() if v != ""}
        blanked = sorted(k for k, v in own.items() if v == "")
        for name in sorted(held):
            key = settings.schema_key(reader, name)
            assert key is not None, f"{container} holds {name}, which no service reads"
            assert reader in settings.KEYS[key].readers, (
                f"{container} holds {name}; opskit/settings.py says only "
                f"{', '.join(sorted(settings.KEYS[key].readers))} read it"
            )
        # nothing the service reads is missing either
        expected = {n for n in held if settings.schema_key(reader, n) in settings.keys_for(reader)}
        assert held == expected
        if reader == "django":
            # the rendered env file (opskit/appenv.py): not even the name of a withheld key
            named = set(env) & set(settings.withheld_from("django"))
            assert not named, f"{container} has the withheld names {sorted(named)}"
            assert not held & NEVER_IN_THE_APP, sorted(held & NEVER_IN_THE_APP)
            assert {"DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"} <= held
        rows.append((container, sorted(held), blanked))
    print()
    for container, held, blanked in rows:
        print(f"{container}: holds {len(held)}: {' '.join(held)}")
        print(f"{'':{len(container)}}  blanked {len(blanked)}: {' '.join(blanked)}")


def test_health_details_for_the_servers_own_probes(server_stack):
    """Through nginx from this host (docker-proxy: a private address) and inside the
    container, /health/ has its details; the internet's view, the status only, is shown by
    tests/services/test_nginx.py (an address that is neither loopback nor private cannot
    reach a published port here)."""
    via_nginx = json.loads(server_stack.https(PROD, "/health/").body)
    assert via_nginx["status"] == "ok" and via_nginx["version"], via_nginx
    direct = server_stack.exec(
        "django_prod", "python3", "-c",
        "import urllib.request as u; print(u.urlopen(u.Request('http://127.0.0.1:8000"
        "/health/', headers={'Host': '127.0.0.1'}), timeout=5).read().decode())",
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr
    body = json.loads(direct.stdout)
    assert body["status"] == "ok" and body["version"] and body["checks"]["database"]["ok"]
