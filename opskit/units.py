"""Memory sizes as docker, compose and the env files write them, in one parser.

`docker stats` prints `441.8MiB`, `1.2kB` and `0B`; compose and `docker run --memory`
take `144m` or `1g` (binary units, as docker reads them) or plain bytes.
"""

from __future__ import annotations

import re

MIB = 1024 * 1024
UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


class ParseError(ValueError):
    """Output of a tool that does not have the expected shape."""


def parse_size(text: str) -> int:
    """`441.8MiB`, `544KiB`, `0B`, `1.2GB`, `144m`, `150994944` -> bytes."""
    match = SIZE_RE.match(str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ParseError(f"expected a size such as 12.5MiB or 144m, got {text!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def size_mb(text: str) -> int | None:
    """Whole MiB of a size, None when it is not one."""
    try:
        return parse_size(text) // MIB
    except ParseError:
        return None
