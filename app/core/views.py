"""The JSON API under /api/.

GET is public and read-only. POST needs a logged-in session (the admin login) whose user
holds the core.add_note permission, plus Django's CSRF token in the X-CSRFToken header:
the same rules as the admin, with no second credential to manage.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.csrf import csrf_failure as html_csrf_failure

from core.models import Note

DEFAULT_LIMIT = 20
# one page stays small in a 150 MB worker
MAX_LIMIT = 100
TITLE_MAX = Note._meta.get_field("title").max_length


def _error(message: str, status: int, **extra) -> JsonResponse:
    return JsonResponse({"error": message, **extra}, status=status)


def _not_allowed(allowed: str) -> JsonResponse:
    response = _error("method not allowed", 405)
    response["Allow"] = allowed
    return response


def notes(request: HttpRequest) -> JsonResponse:
    if request.method in ("GET", "HEAD"):
        return _list(request)
    if request.method == "POST":
        return _create(request)
    return _not_allowed("GET, HEAD, POST")


def note(request: HttpRequest, pk: int) -> JsonResponse:
    if request.method not in ("GET", "HEAD"):
        return _not_allowed("GET, HEAD")
    found = Note.objects.filter(pk=pk).first()
    if found is None:
        return _error("no such note", 404)
    return JsonResponse(found.as_dict())


def _list(request: HttpRequest) -> JsonResponse:
    raw = request.GET.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        return _error(f"limit must be a whole number from 1 to {MAX_LIMIT}", 400)
    if not 1 <= limit <= MAX_LIMIT:
        return _error(f"limit must be a whole number from 1 to {MAX_LIMIT}", 400)
    return JsonResponse({"results": [n.as_dict() for n in Note.objects.all()[:limit]]})


def _create(request: HttpRequest) -> JsonResponse:
    if not request.user.is_authenticated:
        return _error("log in first: POST needs a session (see /admin/login/)", 403)
    if not request.user.has_perm("core.add_note"):
        return _error("your account lacks the core.add_note permission", 403)
    if request.content_type != "application/json":
        return _error("send a JSON body with Content-Type: application/json", 415)
    try:
        data = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        return _error("the body is not valid JSON", 400)
    if not isinstance(data, dict):
        return _error('send an object: {"title": "...", "body": "..."}', 400)
    title, body = data.get("title"), data.get("body", "")
    problems = {}
    if not isinstance(title, str) or not title.strip():
        problems["title"] = "required, a non-empty string"
    elif len(title) > TITLE_MAX:
        problems["title"] = f"at most {TITLE_MAX} characters"
    if not isinstance(body, str):
        problems["body"] = "a string"
    if problems:
        return _error("invalid note", 400, fields=problems)
    created = Note.objects.create(title=title.strip(), body=body)
    return JsonResponse(created.as_dict(), status=201)


def csrf_failure(request: HttpRequest, reason: str = ""):
    """API clients get JSON; browsers keep Django's page."""
    if request.path_info.startswith("/api/"):
        return _error(f"CSRF check failed: {reason}", 403)
    return html_csrf_failure(request, reason=reason)
