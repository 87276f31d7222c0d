"""The age v1 format's constants, errors and encodings (unpadded base64, HKDF)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

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


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)
