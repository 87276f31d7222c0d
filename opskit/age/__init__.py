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

from opskit.age.bech32 import (
    bech32_decode,
    bech32_encode,
)
from opskit.age.format import (
    CHUNK_SIZE,
    PAYLOAD_NONCE_SIZE,
    TAG_SIZE,
    AgeError,
    ArmorError,
    HeaderError,
    HMACError,
    KeyFormatError,
    NoMatchError,
    PayloadError,
)
from opskit.age.keys import (
    Identity,
    Recipient,
    ScryptIdentity,
    ScryptRecipient,
    Stanza,
    X25519Identity,
    X25519Recipient,
    generate_identity,
    parse_identity,
    parse_identity_file,
    parse_recipient,
    parse_recipients_file,
    recipient_from_identity,
)
from opskit.age.stream import (
    Decryptor,
    Encryptor,
    decrypt,
    encrypt,
)

__all__ = [
    "CHUNK_SIZE",
    "PAYLOAD_NONCE_SIZE",
    "TAG_SIZE",
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
