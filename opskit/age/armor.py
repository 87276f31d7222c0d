"""The ASCII armor (-----BEGIN AGE ENCRYPTED FILE-----), read and written as a stream."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Protocol

from opskit.age.format import (
    ARMOR_BEGIN,
    ARMOR_BYTES_PER_LINE,
    ARMOR_END,
    ARMOR_MAX_WHITESPACE,
    COLUMNS,
    ArmorError,
)
from opskit.age.header import (
    _Readable,
    _Source,
)

_WHITESPACE = b" \t\n\r\v\f"
_ARMOR_FULL_LINES = re.compile(rb"(?:[A-Za-z0-9+/]{64}\r?\n)+")
_ARMOR_FULL_LINE = re.compile(rb"[A-Za-z0-9+/]{64}")
_ARMOR_LAST_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_ARMOR_READ_SIZE = 256 * 1024
_ARMOR_MAX_LINE = ARMOR_MAX_WHITESPACE


def _looks_armored(source: _Source) -> bool:
    head = source.peek(ARMOR_MAX_WHITESPACE + len(ARMOR_BEGIN)).lstrip(_WHITESPACE)
    return head.startswith(b"-----")


class _ArmorReader:
    """Strict PEM decoding of an armored age file, a block at a time.

    Accepts what age accepts: LF or CRLF line ends, 64-column lines with a shorter (or
    full) last one, canonical padded base64, whitespace only before and after the block.
    """

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw
        self._buffer = bytearray()
        self._decoded = bytearray()
        self._eof = False
        self._started = False
        self._done = False

    def read(self, size: int) -> bytes:
        if not self._started:
            self._read_begin_line()
        while len(self._decoded) < size and not self._done:
            self._decode_more()
        data = bytes(self._decoded[:size])
        del self._decoded[:size]
        return data

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._raw.read(_ARMOR_READ_SIZE)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def _next_line(self) -> bytes | None:
        """The next line without its LF (or CRLF); at the end what is left, then None."""
        start = 0
        while True:
            end = self._buffer.find(b"\n", start, _ARMOR_MAX_LINE)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                break
            if len(self._buffer) >= _ARMOR_MAX_LINE:
                raise ArmorError("invalid armor: a line is far longer than 64 columns")
            start = len(self._buffer)
            if not self._fill():
                if not self._buffer:
                    return None
                line = bytes(self._buffer)
                self._buffer.clear()
                break
        return line[:-1] if line.endswith(b"\r") else line

    def _read_begin_line(self) -> None:
        self._started = True
        whitespace = 0
        while True:
            line = self._next_line()
            if line is None:
                raise ArmorError("invalid armor: the input is empty or only whitespace")
            if line.strip(_WHITESPACE):
                break
            whitespace += len(line) + 1
            if whitespace > ARMOR_MAX_WHITESPACE:
                raise ArmorError("invalid armor: too much whitespace before the BEGIN line")
        if line != ARMOR_BEGIN:
            raise ArmorError(
                "invalid armor: the first line is not '-----BEGIN AGE ENCRYPTED FILE-----'"
            )

    def _decode_more(self) -> None:
        if len(self._buffer) < _ARMOR_READ_SIZE:
            self._fill()
        match = _ARMOR_FULL_LINES.match(self._buffer)
        if match:  # fast path: a run of complete 64-column lines
            end = match.end()
            text = bytes(self._buffer[:end]).translate(None, b"\r\n")
            del self._buffer[:end]
            self._decoded += binascii.a2b_base64(text, strict_mode=True)
            return
        line = self._body_line()
        if _ARMOR_FULL_LINE.fullmatch(line):  # a full line that straddled a read
            self._decoded += binascii.a2b_base64(line, strict_mode=True)
            return
        if line == ARMOR_END:
            self._finish()
            return
        self._decoded += self._decode_last_line(line)
        if self._body_line() != ARMOR_END:
            raise ArmorError(
                "invalid armor: a line shorter than 64 columns must be the last one, "
                "followed by '-----END AGE ENCRYPTED FILE-----'"
            )
        self._finish()

    def _body_line(self) -> bytes:
        line = self._next_line()
        if line is None:
            raise ArmorError(
                "invalid armor: the file ends before '-----END AGE ENCRYPTED FILE-----'; "
                "it is truncated"
            )
        return line

    @staticmethod
    def _decode_last_line(line: bytes) -> bytes:
        if not line:
            raise ArmorError("invalid armor: empty line inside the armored block")
        if len(line) > COLUMNS:
            raise ArmorError("invalid armor: a line is longer than 64 columns")
        if len(line) % 4 or not _ARMOR_LAST_LINE.fullmatch(line):
            raise ArmorError(
                "invalid armor: a line has characters outside base64, whitespace, or "
                "missing padding"
            )
        try:
            data = binascii.a2b_base64(line, strict_mode=True)
        except binascii.Error:
            raise ArmorError("invalid armor: malformed base64 padding") from None
        if base64.b64encode(data) != line:
            raise ArmorError("invalid armor: the base64 is not canonical")
        return data

    def _finish(self) -> None:
        self._done = True
        trailing = len(self._buffer)
        while True:
            if self._buffer.strip(_WHITESPACE):
                raise ArmorError(
                    "invalid armor: data after '-----END AGE ENCRYPTED FILE-----'; "
                    "only whitespace may follow the armored block"
                )
            if trailing > ARMOR_MAX_WHITESPACE:
                raise ArmorError("invalid armor: too much whitespace after the END line")
            self._buffer.clear()
            if not self._fill():
                return
            trailing += len(self._buffer)


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _ArmorWriter:
    def __init__(self, dst: _Writable) -> None:
        self._dst = dst
        self._buffer = bytearray()
        dst.write(ARMOR_BEGIN + b"\n")

    def write(self, data: bytes) -> None:
        self._buffer += data
        whole = len(self._buffer) - len(self._buffer) % ARMOR_BYTES_PER_LINE
        if whole:
            self._emit(bytes(self._buffer[:whole]))
            del self._buffer[:whole]

    def _emit(self, data: bytes) -> None:
        text = binascii.b2a_base64(data, newline=False)
        lines = [text[i : i + COLUMNS] for i in range(0, len(text), COLUMNS)]
        self._dst.write(b"\n".join(lines) + b"\n")

    def close(self) -> None:
        if self._buffer:
            self._emit(bytes(self._buffer))
            self._buffer.clear()
        self._dst.write(ARMOR_END + b"\n")
