"""Code quality: ruff covers the guide's flake8 (lint) and black (format) in one tool."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _ruff(python: str | None) -> list[str]:
    # the ruff of the interpreter running inv (.venv), whatever PATH holds
    return [python or sys.executable, "-m", "ruff"]


def lint(paths: Sequence[str] = (".",), *, python: str | None = None) -> list[str]:
    return [*_ruff(python), "check", *paths]


def format_(
    paths: Sequence[str] = (".",), *, check: bool = False, python: str | None = None
) -> list[list[str]]:
    """Format like black and sort imports like isort (ruff's I rules)."""
    if check:
        return [
            [*_ruff(python), "format", "--check", "--diff", *paths],
            [*_ruff(python), "check", "--select", "I", *paths],
        ]
    return [
        [*_ruff(python), "check", "--select", "I", "--fix", *paths],
        [*_ruff(python), "format", *paths],
    ]
