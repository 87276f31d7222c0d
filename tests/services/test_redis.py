"""Redis with redis/redis.conf and the rendered ACL users, proven on the real server."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess

import pytest

import redis
from tests.harness.core import ROOT

REDIS_DIR = ROOT / "redis"
# set on the test server's command line on top of redis.conf (RedisServer.server_options)
OVERRIDDEN = {"bind", "port", "aclfile", "dir"}
# Redis' memory units (redis.conf header): "k" is 1000 bytes, "kb" is 1024
UNITS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def conf_directives() -> dict[str, str]:
    """redis.conf as directive -> value text (quotes removed), comments dropped."""
    found: dict[str, str] = {}
    for raw in (REDIS_DIR / "redis.conf").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        found[name.lower()] = value.strip().strip('"')
    return found


def normalize(value: str) -> str:
    """Redis reports memory in bytes: '50mb' -> '52428800'; every word lower case."""
    words = []
    for word in value.split():
        m = re.fullmatch(r"(\d+)([a-z]+)", word.lower())
        words.append(str(int(m[1]) * UNITS[m[2]]) if m and m[2] in UNITS else word.lower())
    return " ".join(words)


def test_every_directive_of_redis_conf_is_in_force(redis_server):
    directives = conf_directives()
    assert {"maxmemory", "maxmemory-policy", "save", "appendonly"} <= set(directives)
    for name, intended in directives.items():
        if name in OVERRIDDEN:
            continue
        reply = redis_server.cli("CONFIG", "GET", name).splitlines()
        assert reply[:1] == [name], f"CONFIG GET {name}: {reply}"
        actual = reply[1] if len(reply) > 1 else ""
        if name == "client-output-buffer-limit":
            # Redis answers all classes at once: check the class the file sets
            cls = intended.split()[0]
            actual = re.search(rf"{cls} \d+ \d+ \d+", actual)[0]
        assert normalize(actual) == normalize(intended), name


def test_memory_and_persistence_are_what_the_file_says(redis_server):
    def get(name):
        return redis_server.cli("CONFIG", "GET", name).splitlines()[1:]

    assert get("maxmemory") == [str(50 * 1024 * 1024)]
    assert get("maxmemory-policy") == ["allkeys-lru"]
    assert get("save") in ([""], [])
    assert get("appendonly") == ["no"]
    assert get("databases") == ["2"]
    assert get("protected-mode") == ["yes"]


def test_acl_file_is_private_and_holds_no_password(redis_server):
    mode = stat.S_IMODE(redis_server.acl_path.stat().st_mode)
    assert mode == 0o600
    assert redis_server.acl_path.stat().st_uid == redis_server.owner.pw_uid
    text = redis_server.acl_path.read_text()
    secrets = [redis_server.admin_password] + [u[1] for u in redis_server.users.values()]
    for secret in secrets:
        assert secret not in text


def acl_list(redis_server) -> dict[str, str]:
    lines = redis_server.cli("ACL", "LIST").splitlines()
    return {line.split()[1]: line for line in lines}


def test_acl_list_has_exactly_the_intended_users(redis_server):
    users = acl_list(redis_server)
    app_users = {u[0] for u in redis_server.users.values()}
    assert set(users) == {"default", "admin"} | app_users
    assert " off " in users["default"] + " " and " on " not in users["default"]
    assert "+@all" not in users["default"]
    admin_hash = hashlib.sha256(redis_server.admin_password.encode()).hexdigest()
    assert f" on #{admin_hash} ~* &* +@all" in users["admin"]
    for user, password, prefix, _db in redis_server.users.values():
        line = users[user]
        digest = hashlib.sha256(password.encode()).hexdigest()
        assert f" on #{digest} " in line
        # one key pattern and one channel pattern: its own prefix, nothing else
        assert re.findall(r" ~(\S+)", line) == [f"{prefix}:*"]
        assert re.findall(r" &(\S+)", line) == [f"{prefix}:*"]
        assert "+@all" not in line


def test_env_file_prefix_matches_django_key_format(redis_server):
    # Django's cache key is KEY_PREFIX:VERSION:key, so prefix "prod" writes "prod:1:..."
    user, password, prefix, db = redis_server.users["production"]
    assert (user, prefix, db) == ("aiia_prod", "prod", 0)
    assert redis_server.users["staging"][0::2] == ("aiia_staging", "staging")
    assert redis_server.users["staging"][3] == 1
    key = f"{prefix}:1:views.decorators.cache.page"
    assert redis_server.cli("-n", str(db), "SET", key, "x", user=user) == "OK"
    assert redis_server.cli("-n", str(db), "GET", key, user=user) == "x"


def test_staging_cannot_read_or_write_production_keys(redis_server):
    prod_user, _, prod_prefix, prod_db = redis_server.users["production"]
    stg_user, _, stg_prefix, stg_db = redis_server.users["staging"]
    key = f"{prod_prefix}:1:secret"
    assert redis_server.cli("-n", str(prod_db), "SET", key, "prod-only", user=prod_user) == "OK"
    # selecting production's db does not help: the key pattern decides
    for db in (prod_db, stg_db):
        for cmd in (["GET", key], ["SET", key, "x"], ["DEL", key], ["EXISTS", key],
                    ["TTL", key], ["DUMP", key], ["RENAME", key, f"{stg_prefix}:1:x"]):  # fmt: skip
            reply = redis_server.cli("-n", str(db), *cmd, user=stg_user)
            assert reply.startswith("NOPERM"), (db, cmd, reply)
    assert redis_server.cli("-n", str(prod_db), "GET", key, user=prod_user) == "prod-only"
    # and the other way round
    reply = redis_server.cli("-n", str(stg_db), "GET", f"{stg_prefix}:1:x", user=prod_user)
    assert reply.startswith("NOPERM")


DENIED = [
    ["FLUSHALL"],
    ["FLUSHDB"],
    ["CONFIG", "GET", "maxmemory"],
    ["CONFIG", "SET", "maxmemory", "0"],
    ["CONFIG", "REWRITE"],
    ["KEYS", "*"],
    ["SCAN", "0"],
    ["RANDOMKEY"],
    ["DEBUG", "SLEEP", "0"],
    ["SHUTDOWN", "NOSAVE"],
    ["SAVE"],
    ["BGSAVE"],
    ["SWAPDB", "0", "1"],
    ["REPLICAOF", "127.0.0.1", "1"],
    ["ACL", "SETUSER", "x", "on", "+@all"],
    ["MODULE", "LIST"],
    ["CLIENT", "KILL", "TYPE", "normal"],
    ["CLIENT", "LIST"],
    ["INFO"],
    ["EVAL", "return 1", "0"],
    ["SORT", "prod:1:list"],
]


@pytest.mark.parametrize("env", ["production", "staging"])
@pytest.mark.parametrize("cmd", DENIED, ids=lambda c: "-".join(c[:2]).lower())
def test_app_users_are_denied_dangerous_commands(redis_server, env, cmd):
    user = redis_server.users[env][0]
    # what the ACL says, asked without running the command
    verdict = redis_server.cli("ACL", "DRYRUN", user, *cmd)
    assert "no permissions" in verdict, verdict
    reply = redis_server.cli(*cmd, user=user)
    if cmd[0] == "DEBUG":
        # enable-debug-command no refuses DEBUG to everyone before the ACL is asked
        assert reply.startswith("ERR DEBUG command not allowed"), reply
    else:
        assert reply.startswith("NOPERM"), reply
    assert redis_server.cli("PING") == "PONG"  # and the server is still there


def test_dryrun_allows_what_it_should(redis_server):
    """The denials above are not a broken DRYRUN: allowed commands come back OK."""
    user, _, prefix, _ = redis_server.users["production"]
    assert redis_server.cli("ACL", "DRYRUN", user, "SET", f"{prefix}:1:a", "b") == "OK"
    denied = redis_server.cli("ACL", "DRYRUN", user, "SET", "staging:1:a", "b")
    assert "no permissions" in denied


def test_app_user_has_what_django_cache_needs(redis_server):
    user, _, prefix, db = redis_server.users["staging"]
    k = f"{prefix}:1:k"

    def run(*args):
        return redis_server.cli("-n", str(db), *args, user=user)

    assert run("SET", k, "1", "PX", "60000") == "OK"
    assert run("SET", k, "1", "NX") == ""  # nil: exists already
    assert run("INCRBY", k, "2") == "3"
    assert run("MGET", k, f"{prefix}:1:none", k).splitlines() == ["3", "", "3"]
    assert run("EXPIRE", k, "30") == "1"
    assert run("PERSIST", k) == "1"
    assert run("EXISTS", k) == "1"
    assert run("DEL", k) == "1"
    assert run("PING") == "PONG"


def test_no_way_in_without_a_password(redis_server):
    plain = subprocess.run(
        ["redis-cli", "-h", redis_server.host, "-p", str(redis_server.port), "PING"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert "NOAUTH" in plain.stdout + plain.stderr
    assert "WRONGPASS" in redis_server.cli("PING", user="default", password="")
    assert "WRONGPASS" in redis_server.cli("PING", user="admin", password="not-it")
    user = redis_server.users["production"][0]
    assert "WRONGPASS" in redis_server.cli("PING", user=user, password="not-it")


def test_full_cache_evicts_instead_of_failing_writes(redis_server):
    """Write twice maxmemory through the production user: every write succeeds."""
    user, password, prefix, db = redis_server.users["production"]
    client = redis.Redis(
        host=redis_server.host, port=redis_server.port, db=db, username=user, password=password
    )
    before = int(redis_server.cli("INFO", "stats").split("evicted_keys:")[1].split()[0])
    value = b"x" * 100_000
    count = 1000  # 100 MB of values against a 50 MB maxmemory
    try:
        for start in range(0, count, 50):
            pipe = client.pipeline(transaction=False)
            for i in range(start, start + 50):
                pipe.set(f"{prefix}:1:fill:{i}", value)
            assert all(pipe.execute())  # an OOM error would raise here
        info = redis_server.cli("INFO", "memory")
        used = int(re.search(r"used_memory:(\d+)", info)[1])
        evicted = int(redis_server.cli("INFO", "stats").split("evicted_keys:")[1].split()[0])
        assert evicted - before > count / 3
        assert used <= 50 * 1024 * 1024 * 1.05
        # plain values: an assertion on the client's own calls prints the client, password
        # and all
        kept = client.dbsize()
        assert 0 < kept < count
        # the newest writes are the ones kept (least recently used go first)
        newest = client.get(f"{prefix}:1:fill:{count - 1}")
        assert newest == value
    finally:
        redis_server.cli("-n", str(db), "FLUSHDB")
        client.close()


def test_healthcheck_script_passes_and_fails(redis_server):
    script = REDIS_DIR / "healthcheck.sh"
    base = {"PATH": os.environ["PATH"], "REDIS_HEALTH_HOST": redis_server.host,
            "REDIS_HEALTH_PORT": str(redis_server.port)}  # fmt: skip
    good = subprocess.run(
        ["sh", str(script)],
        env={**base, "REDIS_ADMIN_PASSWORD": redis_server.admin_password},
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(
        ["sh", str(script)],
        env={**base, "REDIS_ADMIN_PASSWORD": "wrong"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_restart_renders_again_and_serves(redis_server):
    redis_server.stop()
    redis_server.start()
    assert redis_server.cli("PING") == "PONG"
    assert set(acl_list(redis_server)) >= {"admin", "aiia_prod", "aiia_staging"}


# --- render-acl.sh refuses what would weaken access -------------------------------------


def render(tmp_path, **env) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ["PATH"], "REDIS_ADMIN_PASSWORD": "a1", "REDIS_PROD_PASSWORD": "p1",
            "REDIS_STAGING_PASSWORD": "s1"}  # fmt: skip
    full.update(env)
    full = {k: v for k, v in full.items() if v is not None}
    return subprocess.run(
        ["sh", str(REDIS_DIR / "render-acl.sh"), str(tmp_path / "users.acl")],
        env=full,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    "env, message",
    [
        pytest.param({"REDIS_ADMIN_PASSWORD": None}, "REDIS_ADMIN_PASSWORD", id="no-admin"),
        pytest.param({"REDIS_STAGING_PASSWORD": ""}, "REDIS_STAGING_PASSWORD", id="empty"),
        pytest.param({"REDIS_PROD_PASSWORD": "CHANGE_ME"}, "placeholder", id="placeholder"),
        pytest.param({"REDIS_PROD_KEY_PREFIX": "*"}, "may only use", id="glob-prefix"),
        pytest.param({"REDIS_STAGING_KEY_PREFIX": "prod"}, "different key prefixes", id="same"),
        pytest.param({"REDIS_STAGING_USER": "a b"}, "may only use", id="bad-user"),
    ],
)
def test_render_acl_refuses(tmp_path, env, message):
    proc = render(tmp_path, **env)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "users.acl").exists()


def test_render_acl_reads_password_files(tmp_path):
    secret = tmp_path / "staging.secret"
    secret.write_text("from-a-file")
    proc = render(tmp_path, REDIS_STAGING_PASSWORD=None, REDIS_STAGING_PASSWORD_FILE=str(secret))
    assert proc.returncode == 0, proc.stderr
    digest = hashlib.sha256(b"from-a-file").hexdigest()
    assert f"user aiia_staging on #{digest} " in (tmp_path / "users.acl").read_text()


def test_render_acl_local_development_has_a_passwordless_default_user_only(tmp_path):
    proc = render(tmp_path, ENVIRONMENT="local", REDIS_ADMIN_PASSWORD=None,
                  REDIS_PROD_PASSWORD=None, REDIS_STAGING_PASSWORD=None)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "users.acl").read_text() == "user default on nopass ~* &* +@all\n"
    # the same empty passwords outside local development are refused
    proc = render(tmp_path, ENVIRONMENT="production", REDIS_ADMIN_PASSWORD=None,
                  REDIS_PROD_PASSWORD=None, REDIS_STAGING_PASSWORD=None)  # fmt: skip
    assert proc.returncode != 0
