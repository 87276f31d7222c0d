"""The STREAM payload: Decryptor and Encryptor, and the decrypt/encrypt helpers."""

from __future__ import annotations

import hmac
import io
import os
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from opskit.age.armor import (
    _ArmorReader,
    _ArmorWriter,
    _looks_armored,
    _Writable,
)
from opskit.age.format import (
    _READ_SIZE,
    CHUNK_SIZE,
    DEFAULT_WORK_FACTOR,
    ENCRYPTED_CHUNK_SIZE,
    FILE_KEY_SIZE,
    MAX_WORK_FACTOR,
    PAYLOAD_NONCE_SIZE,
    TAG_SIZE,
    HeaderError,
    HMACError,
    PayloadError,
    _hkdf,
)
from opskit.age.header import (
    _encode_header,
    _header_mac,
    _read_header,
    _Source,
    _unwrap_file_key,
)
from opskit.age.keys import (
    Identity,
    Recipient,
    _identities_for,
    _recipients_for,
)

# --------------------------------------------------------------------------- decryption


class Decryptor(io.RawIOBase):
    """A readable stream of the plaintext of an age file.

    The header is read and a file key unwrapped when the object is created (raising
    ``HeaderError``, ``NoMatchError``, ``HMACError`` or ``ArmorError``). The payload is
    then read one 64 KiB chunk at a time; a chunk's plaintext is released only after it
    authenticated, and a file that ends without a valid final chunk raises
    ``PayloadError``. Data after the final chunk is reported on the read after that
    chunk was released (as the reference implementation does). Memory use is a few
    chunks, whatever the file size.

    ``armor=None`` detects the ASCII armor; ``True`` or ``False`` insist on one form.
    Closing a Decryptor does not close ``src``.
    """

    def __init__(
        self,
        src: BinaryIO,
        identities: Sequence[str | Identity] | None = None,
        passphrase: str | Callable[[], str] | None = None,
        *,
        armor: bool | None = None,
        max_work_factor: int = MAX_WORK_FACTOR,
    ) -> None:
        super().__init__()
        keys = _identities_for(identities, passphrase, max_work_factor)
        source = _Source(src)
        if armor is None:
            armor = _looks_armored(source)
        if armor:
            source = _Source(_ArmorReader(source))
        header = _read_header(source)
        file_key = _unwrap_file_key(header.stanzas, keys)
        if not hmac.compare_digest(_header_mac(file_key, header.mac_input), header.mac):
            raise HMACError(
                "the header MAC is wrong: the header was modified after encryption "
                "(corruption or tampering); restore this backup from another copy"
            )
        nonce = source.read(PAYLOAD_NONCE_SIZE)
        if len(nonce) != PAYLOAD_NONCE_SIZE:
            raise HeaderError(
                "the file is truncated: it ends before the payload starts; the copy is incomplete"
            )
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._source = source
        self._counter = 0
        self._finished = False
        self._error: PayloadError | None = None
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = self._next_chunk()
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def chunks(self) -> Iterator[bytes]:
        """The remaining plaintext, one authenticated chunk (at most 64 KiB) at a time."""
        if self._pending:
            yield bytes(self._pending)
            self._pending = memoryview(b"")
        while (chunk := self._next_chunk()) is not None:
            if chunk:
                yield chunk

    def _next_chunk(self) -> bytes | None:
        if self._error is not None:
            raise self._error
        if self._finished:
            return None
        try:
            return self._decrypt_chunk()
        except PayloadError as exc:
            self._error = exc
            raise

    def _decrypt_chunk(self) -> bytes:
        index = self._counter
        chunk = self._source.read(ENCRYPTED_CHUNK_SIZE)
        if not chunk:
            if index == 0:
                raise PayloadError(
                    "the file is truncated: the payload has no chunks; the copy is incomplete"
                )
            raise PayloadError(
                f"the file is truncated after chunk {index - 1} ({index * CHUNK_SIZE} bytes "
                "of plaintext): the final chunk is missing; the copy is incomplete"
            )
        if len(chunk) < TAG_SIZE:
            raise PayloadError(
                f"chunk {index} is shorter than its authentication tag: the file is truncated"
            )
        counter = index.to_bytes(11, "big")
        plaintext = None
        if len(chunk) == ENCRYPTED_CHUNK_SIZE:  # a full chunk may or may not be the last one
            plaintext = self._open(counter + b"\x00", chunk)
        last = plaintext is None
        if last:
            plaintext = self._open(counter + b"\x01", chunk)
        if plaintext is None:
            raise PayloadError(
                f"chunk {index} failed authentication: the file is corrupted or truncated "
                f"(the first {index * CHUNK_SIZE} bytes of plaintext were intact); "
                "restore this backup from another copy"
            )
        if last and not plaintext and index:
            raise PayloadError(
                "the final chunk is empty, which age forbids: the file was not made by a "
                "conforming tool or was tampered with"
            )
        self._counter += 1
        if last:
            self._finished = True
            if self._source.read(1):
                # This chunk is authentic and is released; the next read reports the garbage.
                self._error = PayloadError(
                    f"data follows the final chunk ({index}): the file has trailing garbage "
                    "or two files were concatenated"
                )
        return plaintext

    def _open(self, nonce: bytes, chunk: bytes) -> bytes | None:
        try:
            return self._aead.decrypt(nonce, chunk, None)
        except InvalidTag:
            return None


def decrypt(
    src: BinaryIO,
    dst: BinaryIO,
    identities: Sequence[str | Identity] | None = None,
    passphrase: str | Callable[[], str] | None = None,
    *,
    armor: bool | None = None,
    max_work_factor: int = MAX_WORK_FACTOR,
) -> int:
    """Decrypt ``src`` into ``dst``, chunk by chunk; returns the plaintext size.

    On ``PayloadError`` ``dst`` holds exactly the chunks that authenticated; callers
    writing to a file should remove it (see the command line tool).
    """
    decryptor = Decryptor(src, identities, passphrase, armor=armor, max_work_factor=max_work_factor)
    total = 0
    for chunk in decryptor.chunks():
        dst.write(chunk)
        total += len(chunk)
    return total


# --------------------------------------------------------------------------- encryption


class Encryptor:
    """Encrypts a stream written to it in pieces; writes the age file to ``dst``.

    The header goes out at construction, then each full 64 KiB chunk as soon as more
    data follows it. ``close()`` writes the final chunk (and the armor's END line):
    until then the output is an incomplete file that no decryptor accepts. Used as a
    context manager, an exception inside the block leaves the output incomplete on
    purpose, so a failed backup can never pass for a good one. ``dst`` is not closed.
    """

    def __init__(
        self,
        dst: BinaryIO,
        recipients: Sequence[str | Recipient] | None = None,
        passphrase: str | None = None,
        *,
        armor: bool = False,
        work_factor: int = DEFAULT_WORK_FACTOR,
    ) -> None:
        wrappers = _recipients_for(recipients, passphrase, work_factor)
        file_key = os.urandom(FILE_KEY_SIZE)
        stanzas = [stanza for r in wrappers for stanza in r.wrap(file_key)]
        nonce = os.urandom(PAYLOAD_NONCE_SIZE)
        self._out: _Writable = _ArmorWriter(dst) if armor else dst
        self._armor = self._out if isinstance(self._out, _ArmorWriter) else None
        self._out.write(_encode_header(stanzas, file_key) + nonce)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        self.plaintext_size = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed Encryptor")
        view = memoryview(data).cast("B")
        size = len(view)
        self.plaintext_size += size
        # A chunk is sealed only once more data follows it: the last chunk is flagged.
        position = 0
        if self._buffer:
            position = min(CHUNK_SIZE - len(self._buffer), size)
            self._buffer += view[:position]
            if position == size:
                return size
            self._seal(self._buffer, last=False)  # full, and more data follows
            self._buffer.clear()
        while size - position > CHUNK_SIZE:
            self._seal(view[position : position + CHUNK_SIZE], last=False)
            position += CHUNK_SIZE
        self._buffer += view[position:]
        return size

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> None:
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._out.write(self._aead.encrypt(nonce, chunk, None))
        self._counter += 1

    def close(self) -> None:
        """Write the final chunk. Idempotent."""
        if self._closed:
            return
        self._seal(self._buffer, last=True)
        self._buffer.clear()
        if self._armor is not None:
            self._armor.close()
        self._closed = True

    def abort(self) -> None:
        """Stop without the final chunk: the output stays an incomplete, rejected file."""
        self._closed = True
        self._buffer.clear()

    def __enter__(self) -> Encryptor:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encrypt(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[str | Recipient] | None = None,
    passphrase: str | None = None,
    armor: bool = False,
    *,
    work_factor: int = DEFAULT_WORK_FACTOR,
) -> int:
    """Encrypt everything readable from ``src`` into ``dst``; returns the plaintext size.

    Give ``recipients`` (``age1...`` strings) or a ``passphrase``, not both.
    """
    with Encryptor(dst, recipients, passphrase, armor=armor, work_factor=work_factor) as encryptor:
        while data := src.read(_READ_SIZE):
            encryptor.write(data)
    return encryptor.plaintext_size
