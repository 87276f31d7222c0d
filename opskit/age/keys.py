"""Recipients and identities (X25519 and scrypt), their stanzas, and key files."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from opskit.age.bech32 import (
    bech32_decode,
    bech32_encode,
)
from opskit.age.format import (
    _SCRYPT_LABEL,
    _X25519_LABEL,
    _ZERO_NONCE,
    ARMOR_BEGIN,
    DEFAULT_WORK_FACTOR,
    MAX_WORK_FACTOR,
    VERSION_LINE,
    X25519_HRP,
    X25519_IDENTITY_HRP,
    HeaderError,
    KeyFormatError,
    _b64decode,
    _b64encode,
    _hkdf,
)

# --------------------------------------------------------------------------- recipients


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza of the header: ``-> TYPE ARGS...`` and a binary body."""

    args: tuple[str, ...]
    body: bytes

    @property
    def type(self) -> str:
        return self.args[0]


def _stanzas_of(stanzas: Sequence[Stanza], kind: str, arguments: int) -> Iterator[Stanza]:
    """The stanzas of one type, each checked to carry its number of arguments."""
    for stanza in stanzas:
        if stanza.type != kind:
            continue
        if len(stanza.args) != arguments + 1:
            raise HeaderError(
                f"malformed {kind} stanza: {len(stanza.args) - 1} arguments instead of {arguments}"
            )
        yield stanza


class Recipient(Protocol):
    """Something that wraps a file key into stanzas (the public side)."""

    def wrap(self, file_key: bytes) -> list[Stanza]: ...


class Identity(Protocol):
    """Something that unwraps a file key from stanzas (the secret side).

    ``unwrap`` returns the file key, ``None`` when no stanza is addressed to it, and
    raises ``HeaderError`` for a stanza of its type that is malformed.
    """

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None: ...


class X25519Recipient:
    """An ``age1...`` public key."""

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise KeyFormatError("an X25519 public key is 32 bytes")
        self.public_bytes = public_key
        self._public_key = X25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        return parse_recipient(text)

    def __str__(self) -> str:
        return bech32_encode(X25519_HRP, self.public_bytes)

    def __repr__(self) -> str:
        return f"X25519Recipient({str(self)!r})"

    def wrap(self, file_key: bytes) -> list[Stanza]:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        shared_secret = ephemeral.exchange(self._public_key)
        wrap_key = _hkdf(shared_secret, share + self.public_bytes, _X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(("X25519", _b64encode(share).decode("ascii")), body)]


class X25519Identity:
    """An ``AGE-SECRET-KEY-1...`` secret key."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_bytes = private_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        return parse_identity(text)

    def __str__(self) -> str:
        return bech32_encode(X25519_IDENTITY_HRP, self._private_key.private_bytes_raw()).upper()

    def __repr__(self) -> str:
        # Never show the secret, only which public key it belongs to.
        return f"X25519Identity(recipient={str(self.recipient)!r})"

    @property
    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public_bytes)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in _stanzas_of(stanzas, "X25519", 1):
            share = _b64decode(stanza.args[1].encode("ascii"), "the X25519 share")
            if len(share) != 32:
                raise HeaderError(
                    f"malformed X25519 stanza: the share is {len(share)} bytes, not 32"
                )
            if len(stanza.body) != 32:
                raise HeaderError(
                    f"malformed X25519 stanza: the wrapped file key is {len(stanza.body)} bytes, "
                    "not 32"
                )
            try:
                shared_secret = self._private_key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                shared_secret = bytes(32)
            if shared_secret == bytes(32):
                raise HeaderError(
                    "malformed X25519 stanza: the share is a low-order point; "
                    "the file is corrupt or was crafted to attack the reader"
                )
            wrap_key = _hkdf(shared_secret, share + self._public_bytes, _X25519_LABEL)
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue
        return None


class ScryptRecipient:
    """Encrypts the file key with a passphrase (must be the file's only recipient)."""

    def __init__(self, passphrase: str, work_factor: int = DEFAULT_WORK_FACTOR) -> None:
        if not passphrase:
            raise ValueError("an empty passphrase protects nothing; choose a passphrase")
        if not 1 <= work_factor <= MAX_WORK_FACTOR:
            raise ValueError(f"scrypt work factor must be between 1 and {MAX_WORK_FACTOR}")
        self._passphrase = passphrase
        self.work_factor = work_factor

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self.work_factor})"

    def wrap(self, file_key: bytes) -> list[Stanza]:
        salt = os.urandom(16)
        wrap_key = _scrypt(self._passphrase, salt, self.work_factor)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(("scrypt", _b64encode(salt).decode("ascii"), str(self.work_factor)), body)]


class ScryptIdentity:
    """Decrypts scrypt stanzas with a passphrase.

    ``passphrase`` may be a callable, asked only when the file really is passphrase
    protected (so a command line tool prompts only when needed).
    """

    def __init__(
        self, passphrase: str | Callable[[], str], max_work_factor: int = MAX_WORK_FACTOR
    ) -> None:
        self._passphrase = passphrase
        self.max_work_factor = max_work_factor

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self.max_work_factor})"

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in _stanzas_of(stanzas, "scrypt", 2):
            salt = _b64decode(stanza.args[1].encode("ascii"), "the scrypt salt")
            if len(salt) != 16:
                raise HeaderError(f"malformed scrypt stanza: the salt is {len(salt)} bytes, not 16")
            work_factor_text = stanza.args[2]
            if not re.fullmatch(r"[1-9][0-9]*", work_factor_text):
                raise HeaderError(
                    f"malformed scrypt stanza: work factor {work_factor_text[:20]!r} is not a "
                    "decimal number without leading zeros"
                )
            # Compare as text first: a 5000-digit number is not worth converting.
            if len(work_factor_text) > 2 or int(work_factor_text) > self.max_work_factor:
                raise HeaderError(
                    f"scrypt work factor {work_factor_text[:20]} is above the limit of "
                    f"{self.max_work_factor}: decrypting would take too much time and memory; "
                    "if you really made this file, raise the limit explicitly"
                )
            if len(stanza.body) != 32:
                raise HeaderError(
                    f"malformed scrypt stanza: the wrapped file key is {len(stanza.body)} bytes, "
                    "not 32"
                )
            passphrase = self._passphrase() if callable(self._passphrase) else self._passphrase
            wrap_key = _scrypt(passphrase, salt, int(work_factor_text))
            try:
                return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue
        return None


def _scrypt(passphrase: str, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase.encode("utf-8"))


# --------------------------------------------------------------------------- keys


def parse_recipient(text: str) -> X25519Recipient:
    """Parse an ``age1...`` public key."""
    text = text.strip()
    try:
        hrp, data = bech32_decode(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"invalid recipient {text!r}: {exc}") from None
    if text.lower() != text:
        raise KeyFormatError(f"invalid recipient {text!r}: age public keys are lowercase")
    if hrp != X25519_HRP:
        if hrp.startswith("age1"):
            raise KeyFormatError(
                f"unsupported recipient {text!r}: only X25519 keys (age1...) are supported "
                "here, not post-quantum or plugin recipients"
            )
        raise KeyFormatError(f"invalid recipient {text!r}: expected an age public key (age1...)")
    if len(data) != 32:
        raise KeyFormatError(f"invalid recipient {text!r}: the key is {len(data)} bytes, not 32")
    return X25519Recipient(data)


def parse_identity(text: str) -> X25519Identity:
    """Parse an ``AGE-SECRET-KEY-1...`` secret key. Errors never repeat the secret."""
    text = text.strip()
    if text.upper().startswith("AGE-SECRET-KEY-PQ-"):
        raise KeyFormatError(
            "unsupported identity: post-quantum keys (AGE-SECRET-KEY-PQ-...) are not "
            "supported here; use the age tool (1.3 or newer) for files encrypted to them"
        )
    if text.startswith("age1"):
        raise KeyFormatError(
            "this is a public key (age1...), not an identity: decryption needs the secret key "
            "(AGE-SECRET-KEY-1...)"
        )
    try:
        hrp, data = bech32_decode(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"invalid identity: {exc}") from None
    if hrp != X25519_IDENTITY_HRP or text.upper() != text:
        raise KeyFormatError("invalid identity: expected an uppercase AGE-SECRET-KEY-1... string")
    if len(data) != 32:
        raise KeyFormatError(f"invalid identity: the key is {len(data)} bytes, not 32")
    return X25519Identity(X25519PrivateKey.from_private_bytes(data))


def generate_identity() -> tuple[str, str]:
    """A new key pair as ``(AGE-SECRET-KEY-1..., age1...)``."""
    identity = X25519Identity.generate()
    return str(identity), str(identity.recipient)


def recipient_from_identity(identity: str) -> str:
    """The public key (``age1...``) that belongs to a secret key."""
    return str(parse_identity(identity).recipient)


def _key_file_lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


def parse_identity_file(text: str) -> list[str]:
    """The identities in an identity file (as written by age-keygen).

    One identity per line; blank lines and lines starting with ``#`` are ignored.
    Raises ``KeyFormatError`` naming the line (never its content) for anything else.
    """
    if text.startswith(VERSION_LINE.decode()) or text.lstrip().startswith(ARMOR_BEGIN.decode()):
        raise KeyFormatError(
            "the identity file is itself age-encrypted; decrypt it first (or use the age tool)"
        )
    return _parse_key_file(
        text, parse_identity, "no identities found (expected AGE-SECRET-KEY-1... lines)"
    )


def parse_recipients_file(text: str) -> list[str]:
    """The recipients in a recipients file: one ``age1...`` per line, ``#`` comments."""
    return _parse_key_file(text, parse_recipient, "no recipients found (expected age1... lines)")


def _parse_key_file(text: str, parse, none_found: str) -> list[str]:
    """Each key line parsed; an error names the line (never its content)."""
    keys = []
    for number, line in _key_file_lines(text):
        try:
            keys.append(str(parse(line)))
        except KeyFormatError as exc:
            raise KeyFormatError(f"line {number}: {exc}") from None
    if not keys:
        raise KeyFormatError(none_found)
    return keys


def _recipients_for(
    recipients: Sequence[str | Recipient] | None,
    passphrase: str | None,
    work_factor: int,
) -> list[Recipient]:
    if passphrase is not None:
        if recipients:
            raise ValueError(
                "a passphrase cannot be combined with recipients: age requires a passphrase "
                "stanza to be the only one; encrypt to keys or to a passphrase"
            )
        return [ScryptRecipient(passphrase, work_factor)]
    if not recipients:
        raise ValueError("nothing to encrypt to: give at least one recipient or a passphrase")
    return [parse_recipient(r) if isinstance(r, str) else r for r in recipients]


def _identities_for(
    identities: Sequence[str | Identity] | None,
    passphrase: str | Callable[[], str] | None,
    max_work_factor: int,
) -> list[Identity]:
    result: list[Identity] = [
        parse_identity(i) if isinstance(i, str) else i for i in identities or ()
    ]
    if passphrase is not None:
        result.append(ScryptIdentity(passphrase, max_work_factor))
    return result
