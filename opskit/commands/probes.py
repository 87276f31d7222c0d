"""Read-only commands that ask a service about its state, run inside its container.

Each returns the argv to put after `docker exec CONTAINER`; the output is parsed by
`opskit.health`. None needs a secret on the host: PostgreSQL and PgBouncer are asked over
the container's own socket by the passwordless ops role `aiia` (peer/trust on a 0700
socket), and Redis through REDISCLI_AUTH set inside the container from the container's
own environment, so no password is ever part of an argv.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from opskit import environments

POSTGRES_CONNECTIONS_SQL = (
    "SELECT count(*) FILTER (WHERE backend_type = 'client backend') AS connections, "
    "current_setting('max_connections')::int AS max_connections, "
    "current_setting('superuser_reserved_connections')::int AS reserved "
    "FROM pg_stat_activity"
)


def postgres_connections(user: str = "aiia", database: str = "postgres") -> list[str]:
    """Client connections against max_connections, as CSV with a header."""
    return ["psql", "-X", "-U", user, "-d", database, "--csv", "-c", POSTGRES_CONNECTIONS_SQL]


def pgbouncer_pools(
    user: str = "aiia", socket_dir: str = "/var/run/pgbouncer", port: int = 6432
) -> list[str]:
    """SHOW POOLS on PgBouncer's admin console (socket only), as CSV with a header."""
    return [
        "psql",
        "-X",
        "-h",
        socket_dir,
        "-p",
        str(port),
        "-U",
        user,
        "-d",
        "pgbouncer",
        "--csv",
        "-c",
        "SHOW POOLS",
    ]


# The admin password is read inside the container (REDIS_ADMIN_PASSWORD or its _FILE, as
# in redis/healthcheck.sh); the script is constant text, so argv carries no secret.
REDIS_INFO_SCRIPT = (
    'if [ -z "${REDIS_ADMIN_PASSWORD:-}" ] && [ -n "${REDIS_ADMIN_PASSWORD_FILE:-}" ]; then '
    'REDIS_ADMIN_PASSWORD=$(cat "$REDIS_ADMIN_PASSWORD_FILE"); fi; '
    'if [ -n "${REDIS_ADMIN_PASSWORD:-}" ]; then export REDISCLI_AUTH="$REDIS_ADMIN_PASSWORD"; '
    "set -- --user admin; else set --; fi; "
    'exec redis-cli --no-auth-warning -h 127.0.0.1 -p "${REDIS_PORT:-6379}" "$@" INFO "$0"'
)


def redis_info(section: str = "memory") -> list[str]:
    """`INFO section` as the admin user (or the default user of the local Redis)."""
    return ["sh", "-c", REDIS_INFO_SCRIPT, section]


# Prints "STATUS BODY" for GET /health/ on the container's own port; an HTTP error
# status still prints its JSON body (Django answers 503 with the failing checks).
DJANGO_HEALTH_SCRIPT = """\
import sys, urllib.error, urllib.request as u
req = u.Request("http://127.0.0.1:%s/health/" % sys.argv[1], headers={"Host": "127.0.0.1"})
try:
    r = u.urlopen(req, timeout=float(sys.argv[2]))
except urllib.error.HTTPError as e:
    r = e
except OSError as e:
    print("000", type(e).__name__, e)
    sys.exit(0)
print(r.status, r.read().decode("utf-8", "replace"))
"""


def django_health(port: int, timeout_s: float = 8.0) -> list[str]:
    """GET /health/ from inside the Django container (its port is not published)."""
    return ["python3", "-c", DJANGO_HEALTH_SCRIPT, str(port), str(timeout_s)]


@dataclass(frozen=True)
class HealthAnswer:
    """What Django's /health/ said, however it was fetched (the one parser of its answer:
    `inv healthcheck` asks from inside the Django container, a deploy's gate and
    `fab healthcheck` from inside nginx's)."""

    status: int
    document: dict = field(default_factory=dict)  # the JSON object; empty when not JSON
    is_json: bool = False

    @property
    def healthy(self) -> bool:
        return self.status == 200 and self.document.get("status") == "ok"

    @property
    def version(self) -> str:
        return str(self.document.get("version") or "")

    @property
    def checks(self) -> dict:
        checks = self.document.get("checks") or {}
        return checks if isinstance(checks, dict) else {}

    @property
    def failing(self) -> list[tuple[str, str]]:
        """(dependency, its error) for each check that is not ok."""
        return [
            (name, check.get("error", "failing"))
            for name, check in self.checks.items()
            if isinstance(check, dict) and not check.get("ok")
        ]


def read_health(status: int, body: str) -> HealthAnswer:
    """An HTTP status and body of /health/ -> HealthAnswer."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return HealthAnswer(status)
    return HealthAnswer(status, data, True)


# --- the gate and `fab healthcheck`: /health/ through the network as nginx reaches it ---

# Run inside the nginx container (`bash`, `timeout` and /dev/tcp are in every Debian
# image): one HTTP/1.0 request, the raw answer on stdout.
PROBE = r"""exec 3<>"/dev/tcp/$1/$2" || exit 7
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: aiia-deploy\r\n' "$3" "$1" >&3
printf 'Connection: close\r\n\r\n' >&3
cat <&3
"""


def probe(
    host: str,
    port: int,
    path: str = "/health/",
    timeout_s: int = 5,
    nginx: str = environments.NGINX,
) -> list[str]:
    return [
        "docker",
        "exec",
        nginx,
        "timeout",
        str(timeout_s),
        "bash",
        "-c",
        PROBE,
        "probe",
        host,
        str(int(port)),
        path,
    ]


@dataclass(frozen=True)
class Health:
    ok: bool
    status: int | None
    version: str = ""
    detail: str = ""


def parse_health(exited: int, text: str) -> Health:
    if exited != 0 and not text:
        why = {7: "connection refused or name not found", 124: "no answer in time"}.get(
            exited, f"probe exited {exited}"
        )
        return Health(False, None, detail=why)
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    m = re.match(r"^HTTP/\d(?:\.\d)?\s+(\d{3})", head)
    if not m:
        return Health(False, None, detail=f"not an HTTP answer: {text[:80]!r}")
    answer = read_health(int(m.group(1)), body)
    if not answer.healthy:
        failing = [f"{name}: {error}" for name, error in answer.failing]
        detail = f"HTTP {answer.status}" + (f" ({', '.join(failing)})" if failing else "")
        return Health(False, answer.status, answer.version, detail)
    return Health(True, answer.status, answer.version, "ok")
