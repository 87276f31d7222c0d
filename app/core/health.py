"""/health/: is this process able to reach PostgreSQL (through PgBouncer) and Redis?

Answered by the first middleware in the chain, before the HTTPS redirect, the
ALLOWED_HOSTS check, sessions and auth: Docker's health check and the deploy script call
it over plain http with Host 127.0.0.1, localhost or a container name, and it must not
create sessions or touch the cache's session keys.

The details (each dependency, timings, error class, version, environment) go only to
the probes that ask the container directly; a request that came through nginx gets
`{"status": "ok"}` or `{"status": "fail"}` with the same 200 or 503.

Both probes run at the same time and each is bounded: the database probe in a
long-lived thread of its own (PgBouncer can hold a query in its queue for minutes when
PostgreSQL is down, and libpq has no read timeout), the cache probe by the Redis
client's socket timeouts (settings.CACHES). Docker, the deploy gate, nginx and the
monitor all ask, often at once: requests of one process share the database probe that
is running, and reuse its result for a second, so they never compete for the database
and never report it down because they overlapped. The cache probe's result is reused
for a second as well, so a burst of probes costs Redis two commands per process and
second rather than two per request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from queue import SimpleQueue
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed
from django.db import connections
from django.dispatch import receiver
from django.http import HttpResponse, JsonResponse

log = logging.getLogger("aiia.health")

HEALTH_PATHS = frozenset({"/health/", "/health"})
# longer than libpq's connect_timeout (3 s) so a refused or slow connect reports its own
# error; short enough for Docker's health check timeout (5 s)
DATABASE_TIMEOUT_S = 4.0
# a burst of probes (Docker, the deploy gate, nginx, the monitor, a load test) costs one
# query per process and second; an outage or a recovery shows at most this much later,
# far inside Docker's health check interval and the deploy gate's polling
DATABASE_RESULT_TTL_S = 1.0
# the cache probe's result is shared the same way: its two Redis round trips per request
# were half the CPU of a /health/ answer (gunicorn behind the bench's nginx, 100
# connections: 0.8 against 1.8 stack CPU ms per answer without and with that probe,
# 1,219 against 433 answers/s)
CACHE_RESULT_TTL_S = 1.0


class _Run:
    """One run of a callable in the probe thread: when it started, how it ended."""

    def __init__(self, func: Callable[[], object]) -> None:
        self.func = func
        self.started = time.monotonic()
        self.finished: float | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    @property
    def ms(self) -> float:
        end = self.finished if self.finished is not None else time.monotonic()
        return round((end - self.started) * 1000, 1)


class ProbeThread:
    """Runs the database probe in one daemon thread per process, shared by every request.

    The thread keeps its own Django connection between probes (a thread-local, reused for
    CONN_MAX_AGE). A request that arrives while a probe runs waits for that probe's result
    instead of starting another, and a result stays fresh for `fresh_s`, so overlapping
    health checks never compete for the database. Every wait ends at the running probe's
    own deadline (`timeout_s` after it started): a probe stuck in PgBouncer's queue is
    reported as a timeout by everyone who asks, while the one thread keeps waiting for
    it, and no further thread or query is started until it returns.
    """

    def __init__(
        self, func: Callable[[], object], name: str, timeout_s: float, fresh_s: float
    ) -> None:
        self._func = func
        self._name = name
        self._timeout_s = timeout_s
        self._fresh_s = fresh_s
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: SimpleQueue = SimpleQueue()
        self._last: _Run | None = None

    @staticmethod
    def _loop(queue: SimpleQueue) -> None:
        while True:
            run = queue.get()
            try:
                run.func()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
                run.error = exc
            run.finished = time.monotonic()
            run.done.set()

    def _submit(self, func: Callable[[], object]) -> _Run:
        """Queue one run of `func`; the caller holds the lock."""
        # started lazily, and again after a fork (gunicorn's preload_app)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._queue = SimpleQueue()
            self._last = None
            threading.Thread(
                target=self._loop, args=(self._queue,), name=self._name, daemon=True
            ).start()
        run = _Run(func)
        self._queue.put(run)
        return run

    def _usable(self, run: _Run | None, now: float) -> bool:
        """Still running (so worth joining), or answered in time and recently."""
        if run is None:
            return False
        if run.finished is None:
            return True
        answered_in_time = run.finished - run.started <= self._timeout_s
        return answered_in_time and now - run.finished < self._fresh_s

    def join(self) -> _Run:
        """The probe running now or answered recently, else a new one started here."""
        with self._lock:
            run = self._last
            if self._pid != os.getpid() or not self._usable(run, time.monotonic()):
                run = self._last = self._submit(self._func)
        return run

    def outcome(self, run: _Run) -> tuple[float, BaseException | None]:
        """(ms, error) of `run`, waiting at most until its deadline (then a TimeoutError)."""
        if not run.done.wait(max(0.0, run.started + self._timeout_s - time.monotonic())):
            return run.ms, TimeoutError(f"no answer within {self._timeout_s:g}s")
        return run.ms, run.error

    def call(self, func: Callable[[], object], timeout_s: float) -> None:
        """Run `func` in the probe thread, after any probe still running; raise its error."""
        with self._lock:
            run = self._submit(func)
        if not run.done.wait(timeout_s):
            raise TimeoutError(f"the probe thread did not run {func!r} within {timeout_s:g}s")
        if run.error is not None:
            raise run.error


def _probe_database() -> None:
    connection = connections["default"]
    # drops a connection older than CONN_MAX_AGE and arms CONN_HEALTH_CHECKS, as Django
    # does at the start of every request
    connection.close_if_unusable_or_obsolete()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        with suppress(Exception):
            connection.close()
        raise


_database_probe = ProbeThread(
    _probe_database,
    "health-database",
    timeout_s=DATABASE_TIMEOUT_S,
    fresh_s=DATABASE_RESULT_TTL_S,
)


def close_probe_connection(timeout: float = DATABASE_TIMEOUT_S) -> None:
    """Close the probe thread's database connection (tests drop their database after)."""
    _database_probe.call(connections.close_all, timeout)


def _probe_cache() -> None:
    cache = caches["default"]
    # one key per process and thread, so concurrent probes never read each other's value
    key = f"health:{os.getpid()}:{threading.get_ident()}"
    token = uuid.uuid4().hex
    cache.set(key, token, timeout=30)
    if cache.get(key) != token:
        raise RuntimeError("a value written to the cache did not read back")


def secret_values(db_password: str, cache_location: str, secret_key: str) -> list[str]:
    """Every form in which a configured secret could show up in an error message."""
    password = urlsplit(cache_location).password or ""
    values = {db_password, secret_key, password, unquote(password)}
    values |= {quote(v, safe="") for v in list(values)}
    return sorted((v for v in values if v), key=len, reverse=True)


def redact(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every configured password and key replaced by ***."""
    if secrets is None:
        secrets = secret_values(
            settings.DATABASES["default"].get("PASSWORD", ""),
            settings.CACHES["default"].get("LOCATION", ""),
            settings.SECRET_KEY,
        )
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


_last_ok: dict[str, bool] = {}


def _record(name: str, ok: bool, error: BaseException | None) -> None:
    """Log when a check changes state, not on every probe of an outage."""
    was = _last_ok.get(name)
    _last_ok[name] = ok
    if ok and was is False:
        log.info("health: %s recovered", name)
    elif not ok and was is not False:
        log.warning("health: %s failing: %s", name, redact(f"{type(error).__name__}: {error}"))


def _error_name(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    return type(error).__name__


def _result(name: str, ms: float, error: BaseException | None) -> dict:
    _record(name, error is None, error)
    result: dict = {"ok": error is None, "ms": ms}
    if error is not None:
        # the class only: the message (hosts, users) goes to the log, not to the internet
        result["error"] = _error_name(error)
    return result


def _probe_cache_timed() -> tuple[float, BaseException | None]:
    started = time.monotonic()
    error: BaseException | None = None
    try:
        _probe_cache()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        error = exc
    return round((time.monotonic() - started) * 1000, 1), error


# (pid, when, (ms, error)) of this process's last cache probe
_cache_last: tuple[int, float, tuple[float, BaseException | None]] | None = None
_cache_probing = threading.Lock()


def _probe_cache_shared() -> tuple[float, BaseException | None]:
    """The cache probe's (ms, error), shared by the requests of this process.

    Probed again once the last result is CACHE_RESULT_TTL_S old, by one request; those
    arriving meanwhile reuse the last result. Bounded like the probe itself, by the Redis
    client's socket timeouts.
    """
    global _cache_last
    last = _cache_last if _cache_last is not None and _cache_last[0] == os.getpid() else None
    if last is not None and time.monotonic() - last[1] < CACHE_RESULT_TTL_S:
        return last[2]
    if not _cache_probing.acquire(blocking=False):
        # another request of this process is probing right now
        return last[2] if last is not None else _probe_cache_timed()
    try:
        result = _probe_cache_timed()
        _cache_last = (os.getpid(), time.monotonic(), result)
    finally:
        _cache_probing.release()
    return result


@receiver(setting_changed)
def _forget_cache_result(*, setting: str, **kwargs) -> None:
    """Tests that swap CACHES get a probe of the new cache, not the old one's result."""
    global _cache_last
    if setting == "CACHES":
        _cache_last = None


def run_checks() -> dict:
    """Both probes at once: the database in its thread, the cache meanwhile in this one.

    The database's `ms` is its probe's own duration (shared by every request that waited
    for it or reused it), or how long it had run when this request stopped waiting.
    """
    database = _database_probe.join()
    cache_result = _result("cache", *_probe_cache_shared())
    db_result = _result("database", *_database_probe.outcome(database))

    checks = {"database": db_result, "cache": cache_result}
    return {
        "status": "ok" if all(c["ok"] for c in checks.values()) else "fail",
        "checks": checks,
        "version": settings.APP_VERSION,
        "environment": settings.ENVIRONMENT,
    }


# Set by nginx on every request it proxies (nginx/templates/snippets/proxy.conf), and
# replaced there, so a client cannot remove them: a request carrying one came from the
# internet. Docker's health check, the deploy gate (from inside the nginx container),
# `inv healthcheck` and the monitor ask the container directly and carry neither; nginx
# leaves them off /health/ for the server's own addresses (nginx.conf, $forwarded_for).
PROXIED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")


def is_public(meta) -> bool:
    """Did this request come through the public proxy? Then it gets the status only."""
    return any(meta.get(h) for h in PROXIED_HEADERS)


def health_response(method: str, public: bool = False) -> HttpResponse:
    body = run_checks()
    status = 200 if body["status"] == "ok" else 503
    if public:
        # no version, environment, timings or error names for the internet
        body = {"status": body["status"]}
    if method == "HEAD":
        response = HttpResponse(status=status, content_type="application/json")
    else:
        response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    # the failure is already logged once per state change above
    response._has_been_logged = True
    return response


class HealthCheckMiddleware:
    """Answers /health/ itself; everything else goes down the chain untouched."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info not in HEALTH_PATHS:
            return self.get_response(request)
        if request.method not in ("GET", "HEAD"):
            response = JsonResponse({"error": "use GET or HEAD"}, status=405)
            response["Allow"] = "GET, HEAD"
            return response
        return health_response(request.method, public=is_public(request.META))
