"""Warm the application in gunicorn's master, before it forks its workers.

With `preload_app` the master imports Django and the project, and every worker shares
those pages copy-on-write. What Django builds lazily on the first requests (the URL
resolver's tables, the compiled admin templates, the form and widget classes, the
middleware chain's first request) would otherwise be built in each worker on its own,
as private memory. `warm()` builds it once in the master, by sending one request that
needs neither the database nor Redis (the admin login page, anonymous: no session is
read or written) straight to the WSGI application, and resolving every URL of the
project. gunicorn.conf.py calls it from `when_ready`, then freezes the collector's
objects before each fork.
"""

from __future__ import annotations

import io
import logging
import sys

log = logging.getLogger("aiia.warm")

# GET, anonymous, no query: the admin's login page renders the admin's base templates,
# its form and widgets, the context processors and the CSRF token
PAGES = ("/admin/login/",)
# resolved only (they query the database when requested)
ROUTES = ("/api/notes/", "/api/notes/1/", "/admin/", "/admin/core/note/")


def _host() -> str:
    from django.conf import settings

    for host in settings.ALLOWED_HOSTS:
        host = host.lstrip(".")
        if host and host != "*":
            return host
    return "localhost"


def _get(application, path: str) -> int:
    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": _host(),
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": _host(),
        "HTTP_X_FORWARDED_PROTO": "https",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    body = application(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return int(status[0].split()[0]) if status else 0


def warm(application) -> dict[str, int]:
    """Build Django's lazy state in this process; returns the status of each page.

    Never raises: a page that fails only stays cold (its worker builds it on first use).
    Whatever opened a database or cache connection closes it again, so no worker
    inherits a socket.
    """
    from django.core.cache import caches
    from django.db import connections
    from django.urls import Resolver404, get_resolver, resolve

    done: dict[str, int] = {}
    try:
        resolver = get_resolver()
        resolver.reverse_dict, resolver.namespace_dict, resolver.app_dict  # noqa: B018 - builds them
        for route in ROUTES:
            try:
                resolve(route)
            except Resolver404:
                pass
        for page in PAGES:
            done[page] = _get(application, page)
    except Exception:  # noqa: BLE001 - warming is an optimisation, never a failure
        log.exception("warming before the fork failed; the workers build it themselves")
    finally:
        connections.close_all()
        caches.close_all()
    return done
