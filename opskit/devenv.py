"""The local development environment: `.env` from the example, certificates for dev names.

`inv setup` calls these. Nothing here overwrites a file the operator already has: an
existing `.env` is left exactly as it is (it may hold their own values), and the local CA
is kept once made (a browser told to trust it keeps working).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from dotenv import dotenv_values

from opskit import settings as settings_mod
from opskit import tls

ENV_FILE = ".env"
EXAMPLE = settings_mod.EXAMPLES["local"]
CERT_DIR = "certs"
# localhost for `inv dev`; the guide's names, so a local nginx can serve the real vhosts
# (with a hosts-file entry) under a certificate the local CA signed
DEV_HOSTNAMES = (
    "localhost",
    "127.0.0.1",
    "::1",
    "eduaiia.com",
    "www.eduaiia.com",
    "staging.eduaiia.com",
    "devstatus.eduaiia.com",
)
# secrets filled in when the example leaves them empty (placeholders are always filled)
GENERATED_WHEN_EMPTY = frozenset({"DJANGO_SECRET_KEY", "DJANGO_SUPERUSER_PASSWORD"})
LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def new_secret(key: str) -> str:
    # Django wants 50+ characters for SECRET_KEY; a password typed at /admin can be shorter
    return secrets.token_urlsafe(64 if key == "DJANGO_SECRET_KEY" else 18)


def render_env(example: str, make: Callable[[str], str] = new_secret) -> tuple[str, list[str]]:
    """The example's text with every secret placeholder (and empty generated key) filled.

    Returns the new text and the keys that were filled, in file order. Comments, order and
    every other value stay as in the example.
    """
    out, filled = [], []
    for line in example.splitlines():
        match = LINE.match(line)
        if match:
            key, value = match["key"], match["value"].strip()
            placeholder = key in settings_mod.SECRET_KEYS and settings_mod.PLACEHOLDER_RE.search(
                value
            )
            if placeholder or (key in GENERATED_WHEN_EMPTY and not value):
                line = f"{key}={make(key)}"
                filled.append(key)
        out.append(line)
    return "\n".join(out) + "\n", filled


def write_new(path: Path, text: str) -> None:
    """Create `path` with mode 0600; FileExistsError when it exists (never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def create_env(root: Path) -> list[str] | None:
    """Write root/.env from the local example; the keys generated, or None when it exists."""
    target = root / ENV_FILE
    if target.exists():
        return None
    text, filled = render_env((root / EXAMPLE).read_text(encoding="utf-8"))
    try:
        write_new(target, text)
    except FileExistsError:
        return None
    return filled


def certificates(root: Path) -> tls.LocalCertificates:
    return tls.ensure_local_certificates(root / CERT_DIR, DEV_HOSTNAMES)


def environment_of(root: Path) -> str | None:
    """ENVIRONMENT of root/.env when that file exists and names a known one."""
    path = root / ENV_FILE
    if not path.is_file():
        return None
    value = (dotenv_values(path, interpolate=False).get("ENVIRONMENT") or "").strip()
    return value if value in settings_mod.ENVIRONMENTS else None
