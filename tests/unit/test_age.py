"""opskit.age and its command line: round trips, failures, streaming, keys."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import re
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from opskit import age

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHUNK = age.CHUNK_SIZE
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * 2**20 + 123]
FAST_WORK_FACTOR = 10  # keeps scrypt tests quick; the format is the same as with 18

# Known answer from the age specification (c2sp.org/age, X25519 recipient type).
SPEC_IDENTITY = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
SPEC_RECIPIENT = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"


def data(size: int, seed: int = 0) -> bytes:
    return random.Random(f"{seed}:{size}").randbytes(size)


def encrypt_bytes(plaintext: bytes, recipients=None, passphrase=None, **kwargs) -> bytes:
    out = io.BytesIO()
    assert age.encrypt(io.BytesIO(plaintext), out, recipients, passphrase, **kwargs) == len(
        plaintext
    )
    return out.getvalue()


def decrypt_bytes(ciphertext: bytes, identities=None, passphrase=None, **kwargs) -> bytes:
    out = io.BytesIO()
    size = age.decrypt(io.BytesIO(ciphertext), out, identities, passphrase, **kwargs)
    assert size == len(out.getvalue())
    return out.getvalue()


def header_length(ciphertext: bytes) -> int:
    return ciphertext.index(b"\n", ciphertext.index(b"\n--- ") + 1) + 1


def payload_length(plaintext_size: int) -> int:
    chunks = max(1, -(-plaintext_size // CHUNK))
    return age.PAYLOAD_NONCE_SIZE + plaintext_size + chunks * age.TAG_SIZE


@pytest.fixture(scope="module")
def keypair() -> tuple[str, str]:
    return age.generate_identity()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s}B")
def test_x25519_round_trip(keypair, size):
    identity, recipient = keypair
    plaintext = data(size)
    ciphertext = encrypt_bytes(plaintext, [recipient])
    assert ciphertext.startswith(b"age-encryption.org/v1\n-> X25519 ")
    assert len(ciphertext) - header_length(ciphertext) == payload_length(size)
    assert decrypt_bytes(ciphertext, [identity]) == plaintext


def test_every_file_gets_a_fresh_file_key_and_nonce(keypair):
    _, recipient = keypair
    first, second = (encrypt_bytes(b"same", [recipient]) for _ in range(2))
    assert first != second
    assert first[header_length(first) :][:16] != second[header_length(second) :][:16]


def test_multiple_recipients_each_open_the_file():
    pairs = [age.generate_identity() for _ in range(3)]
    plaintext = data(100_000)
    ciphertext = encrypt_bytes(plaintext, [recipient for _, recipient in pairs])
    assert ciphertext[: header_length(ciphertext)].count(b"\n-> X25519 ") == 3
    for identity, _ in pairs:
        assert decrypt_bytes(ciphertext, [identity]) == plaintext
    stranger, _ = age.generate_identity()
    assert decrypt_bytes(ciphertext, [stranger, pairs[2][0]]) == plaintext
    with pytest.raises(age.NoMatchError):
        decrypt_bytes(ciphertext, [stranger])


@pytest.mark.parametrize("size", [0, 1, CHUNK + 1], ids=lambda s: f"{s}B")
def test_passphrase_round_trip(size):
    plaintext = data(size)
    ciphertext = encrypt_bytes(plaintext, passphrase="correct horse", work_factor=FAST_WORK_FACTOR)
    header = ciphertext[: header_length(ciphertext)].decode()
    assert re.search(r"^-> scrypt [A-Za-z0-9+/]{22} 10$", header, re.MULTILINE), header
    assert header.count("\n-> ") == 1
    assert decrypt_bytes(ciphertext, passphrase="correct horse") == plaintext
    assert decrypt_bytes(ciphertext, passphrase=lambda: "correct horse") == plaintext


def test_passphrase_defaults_to_ages_work_factor():
    ciphertext = encrypt_bytes(b"x", passphrase="pw")
    assert re.search(rb"\n-> scrypt \S+ 18\n", ciphertext[: header_length(ciphertext)])


def test_wrong_passphrase_says_so():
    ciphertext = encrypt_bytes(b"x", passphrase="right", work_factor=FAST_WORK_FACTOR)
    with pytest.raises(age.NoMatchError, match="wrong passphrase"):
        decrypt_bytes(ciphertext, passphrase="wrong")


def test_passphrase_file_opened_with_a_key_says_to_use_the_passphrase(keypair):
    ciphertext = encrypt_bytes(b"x", passphrase="pw", work_factor=FAST_WORK_FACTOR)
    with pytest.raises(age.NoMatchError, match="protected by a passphrase"):
        decrypt_bytes(ciphertext, [keypair[0]])


def test_passphrase_is_asked_only_for_passphrase_files(keypair):
    def ask() -> str:
        raise AssertionError("the passphrase was asked for a file encrypted to a key")

    identity, recipient = keypair
    assert decrypt_bytes(encrypt_bytes(b"k", [recipient]), [identity], ask) == b"k"


def test_passphrase_and_recipients_do_not_mix(keypair):
    with pytest.raises(ValueError, match="only one"):
        encrypt_bytes(b"x", [keypair[1]], "pw")


def test_nothing_to_encrypt_to():
    with pytest.raises(ValueError, match="recipient or a passphrase"):
        encrypt_bytes(b"x")


def test_work_factor_above_the_limit_is_refused_before_any_scrypt():
    ciphertext = encrypt_bytes(b"x", passphrase="pw", work_factor=FAST_WORK_FACTOR)

    def ask() -> str:
        raise AssertionError("asked for a passphrase of a file that is refused anyway")

    with pytest.raises(age.HeaderError, match="work factor 10 is above the limit of 9"):
        decrypt_bytes(ciphertext, passphrase=ask, max_work_factor=9)


def test_unknown_stanzas_are_ignored_and_64_column_bodies_round_trip(keypair):
    class Grease:
        def wrap(self, file_key: bytes) -> list[age.Stanza]:
            return [age.Stanza(("example.com/grease", "a", "!~"), bytes(range(48)))]

    identity, recipient = keypair
    ciphertext = encrypt_bytes(b"payload", [Grease(), recipient])
    header = ciphertext[: header_length(ciphertext)].decode()
    body = base64.b64encode(bytes(range(48))).decode()
    assert f"\n-> example.com/grease a !~\n{body}\n\n-> X25519 " in header
    assert decrypt_bytes(ciphertext, [identity]) == b"payload"


# --------------------------------------------------------------------------- armor


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 100_000], ids=lambda s: f"{s}B")
def test_armor_round_trip(keypair, size):
    identity, recipient = keypair
    plaintext = data(size)
    armored = encrypt_bytes(plaintext, [recipient], armor=True)
    text = armored.decode("ascii")
    lines = text.split("\n")
    assert lines[0] == "-----BEGIN AGE ENCRYPTED FILE-----"
    assert lines[-2:] == ["-----END AGE ENCRYPTED FILE-----", ""]
    body = lines[1:-2]
    assert all(len(line) == 64 for line in body[:-1])
    assert 0 < len(body[-1]) <= 64
    assert decrypt_bytes(armored, [identity]) == plaintext  # detected
    assert decrypt_bytes(armored, [identity], armor=True) == plaintext
    crlf = armored.replace(b"\n", b"\r\n")
    assert decrypt_bytes(b"\n  \n" + crlf + b"\r\n\t\n", [identity]) == plaintext


def test_armor_passphrase_round_trip():
    armored = encrypt_bytes(b"secret", passphrase="pw", armor=True, work_factor=FAST_WORK_FACTOR)
    assert decrypt_bytes(armored, passphrase="pw") == b"secret"


def test_insisting_on_the_wrong_form_fails(keypair):
    identity, recipient = keypair
    with pytest.raises(age.ArmorError):
        decrypt_bytes(encrypt_bytes(b"x", [recipient]), [identity], armor=True)
    with pytest.raises(age.HeaderError, match="not an age file"):
        decrypt_bytes(encrypt_bytes(b"x", [recipient], armor=True), [identity], armor=False)


def test_armor_with_garbage_after_it_fails(keypair):
    identity, recipient = keypair
    armored = encrypt_bytes(b"x", [recipient], armor=True)
    with pytest.raises(age.ArmorError, match="only whitespace"):
        decrypt_bytes(armored + b"PS: more text\n", [identity])


# --------------------------------------------------------------------------- failures


def test_wrong_key_error_says_what_to_do(keypair):
    _, recipient = keypair
    ciphertext = encrypt_bytes(b"x", [recipient])
    stranger, _ = age.generate_identity()
    with pytest.raises(age.NoMatchError) as caught:
        decrypt_bytes(ciphertext, [stranger])
    assert str(caught.value) == (
        "wrong key: the identity does not match this file; "
        "use the identity whose public key the backup was encrypted to"
    )
    assert str(caught.value.with_source("backup.key")).startswith(
        "wrong key: the identity in backup.key does not match this file"
    )
    with pytest.raises(age.NoMatchError, match="none of the 2 identities matches"):
        decrypt_bytes(ciphertext, [stranger, age.generate_identity()[0]])
    with pytest.raises(age.NoMatchError, match="no identity was given"):
        decrypt_bytes(ciphertext, [])


def test_not_an_age_file():
    with pytest.raises(age.HeaderError, match="not an age file"):
        decrypt_bytes(b"PGDMP\x01\x0e\x00" + bytes(100), [SPEC_IDENTITY])
    with pytest.raises(age.HeaderError, match="empty"):
        decrypt_bytes(b"", [SPEC_IDENTITY])


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (b"age-encryption.org/v1", "truncated"),
        (b"age-encryption.org/v1\n-> X25519 abc\n", "truncated"),
        (b"age-encryption.org/v2\n-> X25519 abc\n", "unsupported age format version"),
        (b"age-encryption.org/v1\n--- " + b"A" * 43 + b"\n", "no recipient stanzas"),
    ],
    ids=["version line only", "cut in a stanza", "version 2", "no stanzas"],
)
def test_header_problems_are_named(start, message):
    with pytest.raises(age.HeaderError, match=message):
        decrypt_bytes(start, [SPEC_IDENTITY])


def test_crlf_mangled_header_gets_a_hint(keypair):
    identity, recipient = keypair
    ciphertext = encrypt_bytes(b"x", [recipient])
    with pytest.raises(age.HeaderError, match="CRLF"):
        decrypt_bytes(ciphertext.replace(b"\n", b"\r\n", 1), [identity])


@pytest.fixture(scope="module")
def four_chunks(keypair) -> tuple[bytes, bytes]:
    """Plaintext of 3 full chunks and a partial one, and its ciphertext."""
    plaintext = data(3 * CHUNK + 1000, seed=4)
    return plaintext, encrypt_bytes(plaintext, [keypair[1]])


def released_before(error: type[age.AgeError], ciphertext: bytes, identity: str) -> bytes:
    out = io.BytesIO()
    with pytest.raises(error):
        age.decrypt(io.BytesIO(ciphertext), out, [identity])
    return out.getvalue()


@pytest.mark.parametrize(
    ("cut", "error", "released_chunks"),
    [
        ("in the header", age.HeaderError, 0),
        ("before the nonce", age.HeaderError, 0),
        ("after the nonce", age.PayloadError, 0),
        ("inside chunk 1", age.PayloadError, 1),
        ("after chunk 1", age.PayloadError, 2),
        ("last byte", age.PayloadError, 3),
    ],
)
def test_truncated_file(keypair, four_chunks, cut, error, released_chunks):
    plaintext, ciphertext = four_chunks
    start = header_length(ciphertext)
    encrypted = CHUNK + age.TAG_SIZE
    end = {
        "in the header": start - 10,
        "before the nonce": start,
        "after the nonce": start + 16,
        "inside chunk 1": start + 16 + encrypted + 100,
        "after chunk 1": start + 16 + 2 * encrypted,
        "last byte": len(ciphertext) - 1,
    }[cut]
    released = released_before(error, ciphertext[:end], keypair[0])
    assert released == plaintext[: released_chunks * CHUNK]


def test_truncated_at_a_chunk_boundary_says_truncated(keypair, four_chunks):
    _, ciphertext = four_chunks
    end = header_length(ciphertext) + 16 + 2 * (CHUNK + age.TAG_SIZE)
    with pytest.raises(age.PayloadError, match="truncated after chunk 1"):
        decrypt_bytes(ciphertext[:end], [keypair[0]])


def flip(ciphertext: bytes, position: int) -> bytes:
    return ciphertext[:position] + bytes([ciphertext[position] ^ 0x01]) + ciphertext[position + 1 :]


def test_flipped_payload_byte_releases_only_the_chunks_before_it(keypair, four_chunks):
    plaintext, ciphertext = four_chunks
    position = header_length(ciphertext) + 16 + 2 * (CHUNK + age.TAG_SIZE) + 5
    flipped = flip(ciphertext, position)
    released = released_before(age.PayloadError, flipped, keypair[0])
    assert released == plaintext[: 2 * CHUNK]
    with pytest.raises(age.PayloadError, match="chunk 2 failed authentication"):
        decrypt_bytes(flipped, [keypair[0]])


def test_flipped_nonce_byte_releases_nothing(keypair, four_chunks):
    _, ciphertext = four_chunks
    flipped = flip(ciphertext, header_length(ciphertext) + 3)
    assert released_before(age.PayloadError, flipped, keypair[0]) == b""


def test_flipped_header_mac_is_an_hmac_error(keypair, four_chunks):
    _, ciphertext = four_chunks
    mac_start = ciphertext.index(b"\n--- ") + 5
    changed = b"B" if ciphertext[mac_start : mac_start + 1] == b"A" else b"A"
    tampered = ciphertext[:mac_start] + changed + ciphertext[mac_start + 1 :]
    assert tampered != ciphertext
    assert released_before(age.HMACError, tampered, keypair[0]) == b""


def test_changed_header_line_breaks_the_mac(keypair):
    identity, recipient = keypair
    ciphertext = encrypt_bytes(b"x", [recipient, age.generate_identity()[1]])
    first = ciphertext.index(b"\n-> X25519 ") + 1
    second = ciphertext.index(b"\n-> X25519 ", first) + 1
    end = ciphertext.index(b"\n--- ") + 1
    swapped = ciphertext[:first] + ciphertext[second:end] + ciphertext[first:second]
    swapped += ciphertext[end:]
    with pytest.raises(age.HMACError):
        decrypt_bytes(swapped, [identity])


def test_trailing_garbage_after_a_full_final_chunk(keypair):
    identity, recipient = keypair
    plaintext = data(2 * CHUNK)
    ciphertext = encrypt_bytes(plaintext, [recipient]) + b"\0"
    # The final chunk authenticated, so it is released, and then the garbage is reported.
    assert released_before(age.PayloadError, ciphertext, identity) == plaintext
    with pytest.raises(age.PayloadError, match="data follows the final chunk"):
        decrypt_bytes(ciphertext, [identity])


def test_trailing_garbage_after_a_short_final_chunk(keypair, four_chunks):
    # The garbage reads as part of the last chunk, which then fails to authenticate.
    plaintext, ciphertext = four_chunks
    released = released_before(age.PayloadError, ciphertext + b"\0", keypair[0])
    assert released == plaintext[: 3 * CHUNK]


# --------------------------------------------------------------------------- streaming


class RecordingSink:
    """A binary sink that keeps only a hash, the size and the largest single write."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self.largest_write = 0

    def write(self, chunk: bytes) -> int:
        self.hash.update(chunk)
        self.size += len(chunk)
        self.largest_write = max(self.largest_write, len(chunk))
        return len(chunk)


class GeneratedSource:
    """A readable stream of `size` pseudo-random bytes made on demand (never all at once)."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.hash = hashlib.sha256()
        self._random = random.Random(size)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        block = self._random.randbytes(size)
        self.remaining -= size
        self.bytes_read += size
        self.hash.update(block)
        return block


class CountingReader(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._data.readinto(buffer)
        self.bytes_read += n
        return n


def test_encryptor_writes_chunk_by_chunk_while_data_arrives(keypair):
    identity, recipient = keypair
    sink = io.BytesIO()
    encryptor = age.Encryptor(sink, [recipient])
    plaintext = data(10 * CHUNK + 17, seed=7)
    rng = random.Random(7)
    position = 0
    while position < len(plaintext):
        step = rng.choice([1, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])
        encryptor.write(plaintext[position : position + step])
        position += step
    # Every chunk but the last (sealed only by close, as it carries the final flag) is out.
    sealed = -(-len(plaintext) // CHUNK) - 1
    written = len(sink.getvalue())
    assert written == header_length(sink.getvalue()) + 16 + sealed * (CHUNK + age.TAG_SIZE)
    encryptor.close()
    encryptor.close()  # idempotent
    assert decrypt_bytes(sink.getvalue(), [identity]) == plaintext


def test_streaming_keeps_memory_flat(keypair, tmp_path):
    identity, recipient = keypair
    size = 32 * 2**20
    source = GeneratedSource(size)
    encrypted = tmp_path / "big.age"
    tracemalloc.start()
    try:
        with encrypted.open("wb") as dst:
            age.encrypt(source, dst, [recipient])
        _, encrypt_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = RecordingSink()
        with encrypted.open("rb") as src:
            age.decrypt(src, sink, [identity])
        _, decrypt_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.size == size
    assert sink.hash.digest() == source.hash.digest()
    assert sink.largest_write <= CHUNK
    # A few 64 KiB chunks and a 1 MiB read buffer, not the 32 MiB file.
    assert encrypt_peak < 4 * 2**20, encrypt_peak
    assert decrypt_peak < 4 * 2**20, decrypt_peak


def test_decryptor_releases_the_first_chunk_before_reading_the_rest(keypair):
    identity, recipient = keypair
    plaintext = data(20 * CHUNK, seed=9)
    source = CountingReader(encrypt_bytes(plaintext, [recipient]))
    chunks = age.Decryptor(source, [identity]).chunks()
    assert next(chunks) == plaintext[:CHUNK]
    assert source.bytes_read < 3 * (CHUNK + age.TAG_SIZE)
    assert b"".join(chunks) == plaintext[CHUNK:]


def test_decryptor_is_a_readable_stream(keypair):
    identity, recipient = keypair
    plaintext = data(3 * CHUNK + 5, seed=11)
    ciphertext = encrypt_bytes(plaintext, [recipient], armor=True)
    with io.BufferedReader(age.Decryptor(io.BytesIO(ciphertext), [identity])) as reader:
        assert reader.read(10) == plaintext[:10]
        assert reader.read() == plaintext[10:]
        assert reader.read() == b""


def test_failed_encryption_leaves_an_incomplete_file(keypair):
    identity, recipient = keypair
    sink = io.BytesIO()
    with pytest.raises(RuntimeError), age.Encryptor(sink, [recipient]) as encryptor:
        encryptor.write(data(2 * CHUNK))
        raise RuntimeError("pg_dump died")
    with pytest.raises(age.PayloadError, match="truncated"):
        decrypt_bytes(sink.getvalue(), [identity])


# --------------------------------------------------------------------------- keys


def test_spec_known_answer():
    assert age.recipient_from_identity(SPEC_IDENTITY) == SPEC_RECIPIENT
    assert str(age.parse_identity(SPEC_IDENTITY)) == SPEC_IDENTITY
    assert str(age.parse_recipient(SPEC_RECIPIENT)) == SPEC_RECIPIENT


def test_generated_keys_are_consistent():
    identity, recipient = age.generate_identity()
    assert identity.startswith("AGE-SECRET-KEY-1") and identity == identity.upper()
    assert recipient.startswith("age1") and len(recipient) == 62
    assert age.recipient_from_identity(identity) == recipient
    assert identity not in repr(age.parse_identity(identity))


@pytest.mark.parametrize("length", [0, 1, 5, 20, 32, 33, 100])
@pytest.mark.parametrize("hrp", ["age", "age-secret-key-", "x"])
def test_bech32_round_trip(hrp, length):
    payload = data(length, seed=length)
    encoded = age.bech32_encode(hrp, payload)
    assert age.bech32_decode(encoded) == (hrp, payload)
    assert age.bech32_decode(encoded.upper()) == (hrp, payload)


@pytest.mark.parametrize(
    "valid",
    [
        "A12UEL5L",
        "a12uel5l",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
        "?1ezyfcl",
    ],
)
def test_bech32_bip173_valid_strings(valid):
    hrp, _ = age.bech32_decode(valid)
    assert hrp == valid[: valid.rfind("1")].lower()


@pytest.mark.parametrize(
    "invalid",
    [
        "A12uEL5L",  # mixed case
        "a12uel5m",  # checksum
        "pzry9x0s0muk",  # no separator
        "1pzry9x0s0muk",  # empty human-readable part
        "x1b4n0q5v",  # 'b' is not in the alphabet
        "li1dgmt3",  # checksum too short
        "",
    ],
)
def test_bech32_invalid_strings(invalid):
    with pytest.raises(age.KeyFormatError):
        age.bech32_decode(invalid)


def test_key_case_rules_follow_age():
    with pytest.raises(age.KeyFormatError):
        age.parse_identity(SPEC_IDENTITY.lower())
    with pytest.raises(age.KeyFormatError, match="lowercase"):
        age.parse_recipient(SPEC_RECIPIENT.upper())


def test_key_errors_never_repeat_the_secret():
    typo = SPEC_IDENTITY[:-1] + ("Q" if SPEC_IDENTITY[-1] != "Q" else "P")
    with pytest.raises(age.KeyFormatError) as caught:
        age.parse_identity(typo)
    assert "checksum" in str(caught.value)
    assert SPEC_IDENTITY[16:40] not in str(caught.value)
    with pytest.raises(age.KeyFormatError) as caught:
        age.parse_identity_file(f"# mine\n{typo}\n")
    assert str(caught.value).startswith("line 2: ")
    assert SPEC_IDENTITY[16:40] not in str(caught.value)


def test_identity_file_parsing():
    second, _ = age.generate_identity()
    text = (
        "# created: 2024-01-01T00:00:00Z\r\n"
        f"# public key: {SPEC_RECIPIENT}\r\n"
        f"{SPEC_IDENTITY}\r\n"
        "\n"
        f"   {second}  \n"
    )
    assert age.parse_identity_file(text) == [SPEC_IDENTITY, second]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# nothing here\n\n", "no identities found"),
        (f"{SPEC_RECIPIENT}\n", "public key"),
        ("AGE-SECRET-KEY-PQ-1HZLGZUPT4ETPKDEV8HSGFDCYZ4E522W0A7PU2LHT8EH9W6YLNC3SW78XKG\n", "post"),
        ("age-encryption.org/v1\n-> scrypt ...\n", "itself age-encrypted"),
    ],
    ids=["empty", "public key", "post-quantum", "encrypted"],
)
def test_identity_file_errors(text, message):
    with pytest.raises(age.KeyFormatError, match=message):
        age.parse_identity_file(text)


def test_recipients_file_parsing():
    _, other = age.generate_identity()
    assert age.parse_recipients_file(f"# team\n{SPEC_RECIPIENT}\n\n{other}\n") == [
        SPEC_RECIPIENT,
        other,
    ]
    with pytest.raises(age.KeyFormatError, match="line 2"):
        age.parse_recipients_file(f"{SPEC_RECIPIENT}\nssh-ed25519 AAAA...\n")


# --------------------------------------------------------------------------- command line


def cli(*args: str | Path, stdin: bytes = b"", env: dict[str, str] | None = None, cwd=None):
    environment = {k: v for k, v in os.environ.items() if k != "AGE_PASSPHRASE"}
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "opskit.age", *map(str, args)],
        input=stdin,
        capture_output=True,
        env=environment,
        cwd=cwd or ROOT,
        start_new_session=True,  # no controlling terminal, as under cron
        timeout=120,
    )


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("keys") / "backup.key"
    result = cli("keygen", "-o", path)
    assert result.returncode == 0, result.stderr
    recipient = result.stderr.decode().removeprefix("Public key: ").strip()
    return path, recipient


def test_cli_keygen_writes_a_private_key_file(key_file):
    path, recipient = key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"# created: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", lines[0])
    assert lines[1] == f"# public key: {recipient}"
    assert age.recipient_from_identity(lines[2]) == recipient


def test_cli_keygen_never_overwrites(key_file):
    path, _ = key_file
    before = path.read_bytes()
    result = cli("keygen", "-o", path)
    assert result.returncode == 1
    assert result.stderr.decode().startswith("opskit.age: error: ")
    assert "already exists" in result.stderr.decode()
    assert path.read_bytes() == before


def test_cli_keygen_to_stdout_and_y(key_file):
    result = cli("keygen")
    assert result.returncode == 0
    identity = result.stdout.decode().splitlines()[2]
    assert result.stderr.decode() == f"Public key: {age.recipient_from_identity(identity)}\n"
    path, recipient = key_file
    assert cli("keygen", "-y", path).stdout.decode() == f"{recipient}\n"


def test_cli_encrypt_and_decrypt_files(key_file, tmp_path):
    path, recipient = key_file
    plaintext = data(3 * CHUNK + 3)
    (tmp_path / "dump").write_bytes(plaintext)
    other = age.generate_identity()[1]
    result = cli("-r", recipient, "-r", other, "-o", tmp_path / "dump.age", tmp_path / "dump")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    result = cli("-d", "-i", path, "-o", tmp_path / "back", tmp_path / "dump.age")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back").read_bytes() == plaintext
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "dump", "dump.age"]


def test_cli_pipes_and_armor(key_file, tmp_path):
    path, recipient = key_file
    (tmp_path / "team.txt").write_text(f"# backup key\n{recipient}\n")
    encrypted = cli("-a", "-R", tmp_path / "team.txt", stdin=b"hello\n")
    assert encrypted.returncode == 0, encrypted.stderr
    assert encrypted.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    decrypted = cli("-d", "-i", path, stdin=encrypted.stdout)
    assert (decrypted.returncode, decrypted.stdout) == (0, b"hello\n")


def test_cli_passphrase_from_the_environment(tmp_path):
    env = {"AGE_PASSPHRASE": "a long passphrase"}
    encrypted = cli("-p", "-o", tmp_path / "p.age", stdin=b"secret data", env=env)
    assert encrypted.returncode == 0, encrypted.stderr
    assert b"\n-> scrypt " in (tmp_path / "p.age").read_bytes()
    decrypted = cli("-d", tmp_path / "p.age", env=env)
    assert (decrypted.returncode, decrypted.stdout) == (0, b"secret data")
    wrong = cli("-d", tmp_path / "p.age", env={"AGE_PASSPHRASE": "guess"})
    assert wrong.returncode == 1
    assert wrong.stderr.decode().startswith("opskit.age: error: wrong passphrase")


def test_cli_passphrase_without_terminal_or_environment_fails(tmp_path):
    result = cli("-p", stdin=b"data")
    assert result.returncode == 1
    assert "AGE_PASSPHRASE" in result.stderr.decode()
    assert result.stdout == b""


def test_cli_wrong_key_fails_without_leaving_output(key_file, tmp_path):
    _, recipient = key_file
    encrypted = cli("-r", recipient, stdin=b"data").stdout
    (tmp_path / "dump.age").write_bytes(encrypted)
    stranger = tmp_path / "other.key"
    assert cli("keygen", "-o", stranger).returncode == 0
    result = cli("-d", "-i", stranger, "-o", tmp_path / "out", tmp_path / "dump.age")
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"opskit.age: error: wrong key: the identity in {stranger} does not match this file; "
        "use the identity whose public key the backup was encrypted to\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.age", "other.key"]


def test_cli_truncated_file_keeps_the_previous_output(key_file, tmp_path):
    path, recipient = key_file
    encrypted = cli("-r", recipient, stdin=data(5 * CHUNK)).stdout
    (tmp_path / "dump.age").write_bytes(encrypted[:-100])
    (tmp_path / "out").write_bytes(b"yesterday's good restore")
    result = cli("-d", "-i", path, "-o", tmp_path / "out", tmp_path / "dump.age")
    assert result.returncode == 1
    assert "truncated" in result.stderr.decode()
    assert (tmp_path / "out").read_bytes() == b"yesterday's good restore"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump.age", "out"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to encrypt to"),
        (("-r", "age1notakey"), "invalid recipient"),
        (("-d", "-r", SPEC_RECIPIENT), "-r and -R are for encrypting"),
        (("-p", "-r", SPEC_RECIPIENT), "cannot be combined"),
        (("-r", SPEC_RECIPIENT, "/nonexistent/file"), "cannot open input file"),
        (("--bogus",), "unrecognized arguments"),
    ],
    ids=["no recipient", "bad recipient", "decrypt with -r", "-p with -r", "no input", "usage"],
)
def test_cli_usage_errors(args, message):
    result = cli(*args, stdin=b"data")
    assert result.returncode == 1
    assert "opskit.age: error: " in result.stderr.decode()
    assert message in result.stderr.decode()
