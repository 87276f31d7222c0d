"""Small helpers for building commands safely and keeping secrets out of output."""

from __future__ import annotations

import shlex
from collections.abc import Iterable

MASK = "***"


class BuilderError(ValueError):
    """A value a builder will not put on a command line; the message says why."""


def sh(script: str, *args: str) -> list[str]:
    """`sh -c SCRIPT sh ARGS...`: a fixed script, every value passed as its own argument."""
    return ["sh", "-c", script, "sh", *[str(a) for a in args]]


class Secret:
    """A value that prints as *** everywhere: str(), repr(), f-strings and logs.

    Call `.reveal()` only at the one place that hands the value to a program (a file of
    mode 0600, a subprocess's stdin or environment), never into argv.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return MASK

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def join(argv: Iterable[str]) -> str:
    """One shell-safe command line from an argv list (every word quoted as needed)."""
    return shlex.join([str(a) for a in argv])
