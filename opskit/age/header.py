"""The age header: stanzas, the MAC, reading it from a source; unwrapping the file key."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from opskit.age.format import (
    _B64_CHARS,
    COLUMNS,
    MAX_HEADER_SIZE,
    VERSION_LINE,
    HeaderError,
    NoMatchError,
    _b64decode,
    _b64encode,
    _hkdf,
)
from opskit.age.keys import (
    Identity,
    ScryptIdentity,
    Stanza,
)

# --------------------------------------------------------------------------- header


def _encode_stanza(stanza: Stanza) -> bytes:
    body = _b64encode(stanza.body)
    lines = [body[i : i + COLUMNS] for i in range(0, len(body), COLUMNS)]
    if not lines or len(lines[-1]) == COLUMNS:
        lines.append(b"")  # the body always ends with a line shorter than 64 columns
    return b"-> " + " ".join(stanza.args).encode("ascii") + b"\n" + b"\n".join(lines) + b"\n"


def _header_mac(file_key: bytes, header_up_to_dashes: bytes) -> bytes:
    mac_key = _hkdf(file_key, None, b"header")
    return hmac.new(mac_key, header_up_to_dashes, hashlib.sha256).digest()


def _encode_header(stanzas: Sequence[Stanza], file_key: bytes) -> bytes:
    header = VERSION_LINE + b"\n" + b"".join(_encode_stanza(s) for s in stanzas) + b"---"
    return header + b" " + _b64encode(_header_mac(file_key, header)) + b"\n"


@dataclass(frozen=True)
class _Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes


_ARGUMENT = re.compile(rb"[\x21-\x7e]+")
_MAC_LINE = re.compile(rb"--- ([A-Za-z0-9+/]{43})\n")


def _read_header(source: _Source) -> _Header:
    raw = bytearray()

    def next_line() -> bytes:
        limit = MAX_HEADER_SIZE - len(raw)
        line = source.readline(limit)
        raw.extend(line)
        if not line.endswith(b"\n"):
            if len(line) >= limit:
                raise HeaderError("malformed header: larger than 1 MiB; this is not an age file")
            raise HeaderError(
                "the file is truncated: it ends inside the header; the copy is incomplete"
            )
        return line

    first = source.readline(len(VERSION_LINE) + 2)
    raw.extend(first)
    if first != VERSION_LINE + b"\n":
        if not first:
            raise HeaderError("the input is empty: this is not an age file (nothing to decrypt)")
        if first == VERSION_LINE:
            raise HeaderError(
                "the file is truncated: it ends inside the header; the copy is incomplete"
            )
        if first.startswith(VERSION_LINE + b"\r"):
            raise HeaderError(
                "the header has Windows line endings (CRLF): the file was altered by a "
                "text-mode transfer; copy it again in binary mode"
            )
        if first.startswith(b"age-encryption.org/"):
            raise HeaderError(
                "unsupported age format version: only age-encryption.org/v1 is supported"
            )
        raise HeaderError(
            "not an age file: it does not start with 'age-encryption.org/v1'; "
            "check that this is the encrypted backup and not another file"
        )

    stanzas: list[Stanza] = []
    line = next_line()
    while line.startswith(b"-> "):
        arguments = line[3:-1].split(b" ")
        if not all(_ARGUMENT.fullmatch(a) for a in arguments):
            raise HeaderError(
                "malformed header: a stanza argument is empty or has characters outside "
                "printable ASCII"
            )
        body_lines = []
        while True:
            body_line = next_line()[:-1]
            if len(body_line) > COLUMNS or not _B64_CHARS.fullmatch(body_line):
                raise HeaderError(
                    "malformed header: a stanza body line is not base64 of at most 64 columns"
                )
            body_lines.append(body_line)
            if len(body_line) < COLUMNS:
                break
        body = _b64decode(b"".join(body_lines), "a stanza body")
        stanzas.append(Stanza(tuple(a.decode("ascii") for a in arguments), body))
        line = next_line()

    if not line.startswith(b"---"):
        raise HeaderError(
            "malformed header: expected a stanza ('-> ...') or the MAC line ('--- ...')"
        )
    if not stanzas:
        raise HeaderError("malformed header: it has no recipient stanzas")
    match = _MAC_LINE.fullmatch(line)
    if not match:
        raise HeaderError("malformed header: the MAC line is not '--- ' and 43 base64 characters")
    mac = _b64decode(match.group(1), "the header MAC")
    mac_input = bytes(raw[: len(raw) - len(line) + 3])
    return _Header(tuple(stanzas), mac, mac_input)


def _unwrap_file_key(stanzas: Sequence[Stanza], identities: Sequence[Identity]) -> bytes:
    if any(s.type == "scrypt" for s in stanzas) and len(stanzas) != 1:
        raise HeaderError(
            "malformed header: a passphrase (scrypt) stanza must be the only stanza; "
            "this file was not made by a conforming tool or was tampered with"
        )
    for identity in identities:
        file_key = identity.unwrap(stanzas)
        if file_key is not None:
            return file_key
    raise NoMatchError(
        [s.type for s in stanzas],
        identity_count=sum(not isinstance(i, ScryptIdentity) for i in identities),
        passphrase_tried=any(isinstance(i, ScryptIdentity) for i in identities),
    )


# --------------------------------------------------------------------------- input


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes | None: ...


class _Source:
    """A reader with a small look-ahead buffer, so the header can be read line by line
    without losing the payload bytes that came with the same read."""

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._raw.read(8192)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def peek(self, size: int) -> bytes:
        while len(self._buffer) < size and self._fill():
            pass
        return bytes(self._buffer[:size])

    def readline(self, limit: int) -> bytes:
        """Up to and including the next LF, or at most ``limit`` bytes, or what is left."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) >= limit:
                return self._take(limit)
            start = len(self._buffer)
            if not self._fill():
                return self._take(len(self._buffer))

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int) -> bytes:
        """Exactly ``size`` bytes, fewer only at the end of the input."""
        if self._buffer:
            if len(self._buffer) >= size:
                return self._take(size)
            head = self._take(len(self._buffer))
            return head + self._read_raw(size - len(head))
        return self._read_raw(size)

    def _read_raw(self, size: int) -> bytes:
        if self._eof:
            return b""
        data = self._raw.read(size) or b""
        if len(data) == size:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            more = self._raw.read(size - got)
            if not more:
                self._eof = True
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)
