"""/health/: is this process able to reach PostgreSQL (through PgBouncer) and Redis?

Answered by the first middleware in the chain, before the HTTPS redirect, the
ALLOWED_HOSTS check, sessions and auth: Docker's health check and the deploy script call
it over plain http with Host 127.0.0.1, localhost or a container name, and it must not
create sessions or touch the cache's session keys.

Both probes run at the same time and each is bounded: the database probe in a
long-lived thread of its own (PgBouncer can hold a query in its queue for minutes when
PostgreSQL is down, and libpq has no read timeout), the cache probe by the Redis
client's socket timeouts (settings.CACHES).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from queue import SimpleQueue
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings
from django.core.cache import caches
from django.db import connections
from django.http import HttpResponse, JsonResponse

log = logging.getLogger("aiia.health")

HEALTH_PATHS = frozenset({"/health/", "/health"})
# longer than libpq's connect_timeout (3 s) so a refused or slow connect reports its own
# error; short enough for Docker's health check timeout (5 s)
DATABASE_TIMEOUT_S = 4.0


class ProbeBusy(RuntimeError):
    """The previous probe of this process is still waiting for its answer."""


class ProbeThread:
    """Runs one callable at a time in one daemon thread per process.

    The thread keeps its own Django connection between probes (a thread-local, reused for
    CONN_MAX_AGE), and a probe stuck in PgBouncer's queue cannot pile up threads: while
    one is still running, the next health request reports "busy" instead of queueing.
    """

    def __init__(self, func: Callable[[], object], name: str) -> None:
        self._func = func
        self._name = name
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: SimpleQueue = SimpleQueue()
        self._current: Future | None = None

    def _loop(self, queue: SimpleQueue) -> None:
        while True:
            future, func = queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)

    def submit(self, func: Callable[[], object] | None = None) -> Future:
        """A future for one run of the callable (or `func`); ProbeBusy while one runs."""
        with self._lock:
            # started lazily, and again after a fork (gunicorn's preload_app)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._queue = SimpleQueue()
                self._current = None
                threading.Thread(
                    target=self._loop, args=(self._queue,), name=self._name, daemon=True
                ).start()
            if self._current is not None and not self._current.done():
                raise ProbeBusy("the previous probe has not finished yet")
            future: Future = Future()
            self._current = future
            self._queue.put((future, func or self._func))
            return future


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


_database_probe = ProbeThread(_probe_database, "health-database")


def close_probe_connection(timeout: float = DATABASE_TIMEOUT_S) -> None:
    """Close the probe thread's database connection (tests drop their database after)."""
    _database_probe.submit(connections.close_all).result(timeout)


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
    if isinstance(error, ProbeBusy):
        return "busy"
    return type(error).__name__


def _result(name: str, started: float, error: BaseException | None) -> dict:
    _record(name, error is None, error)
    result: dict = {"ok": error is None, "ms": round((time.monotonic() - started) * 1000, 1)}
    if error is not None:
        # the class only: the message (hosts, users) goes to the log, not to the internet
        result["error"] = _error_name(error)
    return result


def run_checks() -> dict:
    """Both probes at once: the database in its thread, the cache meanwhile in this one."""
    started = time.monotonic()
    db_error: BaseException | None = None
    future: Future | None = None
    try:
        future = _database_probe.submit()
    except ProbeBusy as exc:
        db_error = exc

    cache_error: BaseException | None = None
    try:
        _probe_cache()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        cache_error = exc
    cache_result = _result("cache", started, cache_error)

    if future is not None:
        remaining = max(0.0, DATABASE_TIMEOUT_S - (time.monotonic() - started))
        try:
            future.result(remaining)
        except TimeoutError:  # concurrent.futures' TimeoutError is this one
            db_error = TimeoutError(f"no answer within {DATABASE_TIMEOUT_S:g}s")
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
            db_error = exc
    db_result = _result("database", started, db_error)

    checks = {"database": db_result, "cache": cache_result}
    return {
        "status": "ok" if all(c["ok"] for c in checks.values()) else "fail",
        "checks": checks,
        "version": settings.APP_VERSION,
        "environment": settings.ENVIRONMENT,
    }


def health_response(method: str) -> HttpResponse:
    body = run_checks()
    status = 200 if body["status"] == "ok" else 503
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
        return health_response(request.method)
