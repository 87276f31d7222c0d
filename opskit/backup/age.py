"""The age v1 file format (https://age-encryption.org/v1) on top of ``cryptography``.

Backups are encrypted to X25519 public keys (``age1...``), so the server only ever holds
a public key, and any file written here opens with the standard ``age`` tool. An scrypt
passphrase can be used instead of keys. Both directions stream: plaintext goes in and
out in 64 KiB chunks, and decryption releases a chunk only after it authenticated.

    identity, recipient = generate_identity()
    with open("dump", "rb") as src, open("dump.age", "wb") as dst:
        encrypt(src, dst, recipients=[recipient])
    with open("dump.age", "rb") as src, open("dump", "wb") as dst:
        decrypt(src, dst, identities=[identity])

Incremental use: ``Encryptor`` (``write``/``close``) and ``Decryptor`` (a readable raw
stream that also yields chunks). Failures raise a subclass of ``AgeError`` whose message
says what is wrong and what to do about it.

Not implemented: the post-quantum hybrid recipients (``age1pq1...``) and plugins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "AgeError",
    "ArmorError",
    "Decryptor",
    "Encryptor",
    "HMACError",
    "HeaderError",
    "Identity",
    "KeyFormatError",
    "NoMatchError",
    "PayloadError",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "bech32_decode",
    "bech32_encode",
    "decrypt",
    "encrypt",
    "generate_identity",
    "parse_identity",
    "parse_identity_file",
    "parse_recipient",
    "parse_recipients_file",
    "recipient_from_identity",
]

VERSION_LINE = b"age-encryption.org/v1"
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
FILE_KEY_SIZE = 16
PAYLOAD_NONCE_SIZE = 16
# age's own default: about a second and 256 MiB of memory on current hardware.
DEFAULT_WORK_FACTOR = 18
# Refuse more when decrypting: 2**22 already needs 4 GiB of memory and minutes of CPU,
# so a higher factor in a file is an attack or a mistake (age uses the same limit).
MAX_WORK_FACTOR = 22
# Both the header's stanza bodies and the armor wrap base64 at 64 columns.
COLUMNS = 64
# A header is a few hundred bytes; this only bounds what a hostile file can make us buffer.
MAX_HEADER_SIZE = 1 << 20

ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
ARMOR_BYTES_PER_LINE = 48
# Whitespace allowed around the armor, bounded so that a stream of blanks cannot stall us.
ARMOR_MAX_WHITESPACE = 1024

X25519_HRP = "age"
X25519_IDENTITY_HRP = "age-secret-key-"
_X25519_LABEL = b"age-encryption.org/v1/X25519"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_READ_SIZE = 1 << 20


# --------------------------------------------------------------------------- errors


class AgeError(Exception):
    """Base class of every error raised for a bad key, a bad file or a wrong secret."""


class KeyFormatError(AgeError, ValueError):
    """A recipient, identity or key file is not in a form this module understands."""


class HeaderError(AgeError):
    """The file header is malformed, unsupported or truncated: the file is not usable."""


class NoMatchError(AgeError):
    """The header is fine, but none of the given identities or passphrases opens it."""

    def __init__(
        self,
        stanza_types: Sequence[str] = (),
        identity_count: int = 0,
        passphrase_tried: bool = False,
        source: str | None = None,
    ) -> None:
        self.stanza_types = tuple(stanza_types)
        self.identity_count = identity_count
        self.passphrase_tried = passphrase_tried
        self.source = source
        super().__init__(self._describe())

    def with_source(self, source: str) -> NoMatchError:
        """The same error, naming where the identities came from (e.g. the key file)."""
        return NoMatchError(self.stanza_types, self.identity_count, self.passphrase_tried, source)

    def _describe(self) -> str:
        types = set(self.stanza_types)
        where = f" in {self.source}" if self.source else ""
        if "scrypt" in types:
            if self.passphrase_tried:
                return (
                    "wrong passphrase: the passphrase does not open this file; "
                    "check it (and the keyboard layout) and try again"
                )
            return (
                "no identity matched any of the recipients: this file is protected by a "
                "passphrase, not by a key; decrypt it with the passphrase instead"
            )
        if "X25519" not in types:
            kinds = ", ".join(sorted(types)) or "none"
            return (
                "no identity matched any of the recipients: this file is encrypted to "
                f"recipient types this implementation does not support ({kinds}); "
                "decrypt it with the age tool and the matching identity or plugin"
            )
        if self.identity_count == 0:
            return (
                "no identity matched any of the recipients: this file is encrypted to "
                "public keys and no identity was given; pass the identity (secret key) file"
            )
        if self.identity_count == 1:
            which = f"the identity{where} does not match this file"
        else:
            which = f"none of the {self.identity_count} identities{where} matches this file"
        return f"wrong key: {which}; use the identity whose public key the backup was encrypted to"


class HMACError(AgeError):
    """The header MAC is wrong: the header was modified after encryption."""


class PayloadError(AgeError):
    """The encrypted payload is truncated, corrupted or has trailing data."""


class ArmorError(AgeError):
    """The ASCII armor (``-----BEGIN AGE ENCRYPTED FILE-----``) is malformed."""


# --------------------------------------------------------------------------- encodings


_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*")


def _b64encode(data: bytes) -> bytes:
    """Unpadded standard base64, as used throughout the age header."""
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(data: bytes, what: str) -> bytes:
    """Strict unpadded base64: canonical, no padding, nothing but the alphabet."""
    if not _B64_CHARS.fullmatch(data) or len(data) % 4 == 1:
        raise HeaderError(f"malformed header: {what} is not valid unpadded base64")
    decoded = binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    if _b64encode(decoded) != data:
        raise HeaderError(f"malformed header: {what} is not canonical base64")
    return decoded


_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_VALUES = {c: i for i, c in enumerate(_BECH32_CHARSET)}
_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: Sequence[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate(_BECH32_GENERATOR):
            if (top >> i) & 1:
                checksum ^= generator
    return checksum


def _bech32_hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Sequence[int], from_bits: int, to_bits: int, pad: bool) -> bytes:
    acc = bits = 0
    out = bytearray()
    max_value = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or (acc << (to_bits - bits)) & max_value:
        raise KeyFormatError("invalid Bech32 string: bad padding in the data part")
    return bytes(out)


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 (BIP 173, without its 90-character limit), in lowercase."""
    hrp = hrp.lower()
    values = list(_convert_bits(data, 8, 5, pad=True))
    polymod = _bech32_polymod([*_bech32_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode Bech32; returns the lowercase human-readable part and the data bytes."""
    if not text or any(not 33 <= ord(c) <= 126 for c in text):
        raise KeyFormatError("invalid Bech32 string: empty or contains non-printable characters")
    if text.lower() != text and text.upper() != text:
        raise KeyFormatError("invalid Bech32 string: mixes upper and lower case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1 or separator + 7 > len(text):
        raise KeyFormatError("invalid Bech32 string: separator '1' missing or misplaced")
    hrp, data_part = text[:separator], text[separator + 1 :]
    try:
        values = [_BECH32_VALUES[c] for c in data_part]
    except KeyError:
        raise KeyFormatError("invalid Bech32 string: character outside the alphabet") from None
    if _bech32_polymod(_bech32_hrp_expand(hrp) + values) != 1:
        raise KeyFormatError("invalid Bech32 string: checksum mismatch (typo or truncated key?)")
    return hrp, _convert_bits(values[:-6], 5, 8, pad=False)


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


# --------------------------------------------------------------------------- recipients


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza of the header: ``-> TYPE ARGS...`` and a binary body."""

    args: tuple[str, ...]
    body: bytes

    @property
    def type(self) -> str:
        return self.args[0]


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
        for stanza in stanzas:
            if stanza.type != "X25519":
                continue
            if len(stanza.args) != 2:
                raise HeaderError(
                    f"malformed X25519 stanza: {len(stanza.args) - 1} arguments instead of 1"
                )
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
        for stanza in stanzas:
            if stanza.type != "scrypt":
                continue
            if len(stanza.args) != 3:
                raise HeaderError(
                    f"malformed scrypt stanza: {len(stanza.args) - 1} arguments instead of 2"
                )
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
    identities = []
    for number, line in _key_file_lines(text):
        try:
            identities.append(str(parse_identity(line)))
        except KeyFormatError as exc:
            raise KeyFormatError(f"line {number}: {exc}") from None
    if not identities:
        raise KeyFormatError("no identities found (expected AGE-SECRET-KEY-1... lines)")
    return identities


def parse_recipients_file(text: str) -> list[str]:
    """The recipients in a recipients file: one ``age1...`` per line, ``#`` comments."""
    recipients = []
    for number, line in _key_file_lines(text):
        try:
            recipients.append(str(parse_recipient(line)))
        except KeyFormatError as exc:
            raise KeyFormatError(f"line {number}: {exc}") from None
    if not recipients:
        raise KeyFormatError("no recipients found (expected age1... lines)")
    return recipients


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
