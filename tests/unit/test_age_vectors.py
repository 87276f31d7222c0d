"""opskit.age against the C2SP age conformance vectors (tests/fixtures/age-vectors/).

Each vector must end with the right outcome (success or the right kind of failure) and
release exactly the plaintext the vector expects: on a payload failure, the chunks
that authenticated before it and nothing more.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest

from opskit import age

pytestmark = pytest.mark.unit

TESTKIT = Path(__file__).resolve().parents[1] / "fixtures" / "age-vectors"
POST_QUANTUM_PREFIX = "AGE-SECRET-KEY-PQ-"
POST_QUANTUM_REASON = "post-quantum hybrid identities (AGE-SECRET-KEY-PQ-) are not implemented"
EXPECTED_POST_QUANTUM_VECTORS = 19
EXPECTED_VECTORS = 143

OUTCOMES: dict[str, type[age.AgeError] | None] = {
    "success": None,
    "no match": age.NoMatchError,
    "HMAC failure": age.HMACError,
    "header failure": age.HeaderError,
    "payload failure": age.PayloadError,
    "armor failure": age.ArmorError,
}


@dataclass(frozen=True)
class Vector:
    name: str
    fields: dict[str, list[str]]
    body: bytes

    def first(self, key: str) -> str | None:
        values = self.fields.get(key)
        return values[0] if values else None

    @property
    def identities(self) -> list[str]:
        return self.fields.get("identity", [])

    @property
    def post_quantum(self) -> bool:
        return any(i.startswith(POST_QUANTUM_PREFIX) for i in self.identities)


def load_vector(path: Path) -> Vector:
    """Header lines `key: value`, an empty line, then the age file (maybe zlib'd)."""
    header, separator, body = path.read_bytes().partition(b"\n\n")
    assert separator, f"{path.name}: no blank line between the vector header and the file"
    fields: dict[str, list[str]] = {}
    for line in header.decode("utf-8").splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return Vector(path.name, fields, body)


def vector_files() -> list[Path]:
    if not TESTKIT.is_dir():
        return []
    return sorted(p for p in TESTKIT.iterdir() if p.is_file() and p.name != "README.md")


VECTOR_FILES = vector_files()


def test_testkit_is_present():
    assert TESTKIT.is_dir(), (
        f"age conformance vectors not found at {TESTKIT}: the project carries them in "
        "tests/fixtures/age-vectors/ (restore it with git checkout)"
    )
    assert len(VECTOR_FILES) == EXPECTED_VECTORS, [p.name for p in VECTOR_FILES]


def test_skipped_vectors_are_exactly_the_post_quantum_ones(record_property):
    skipped = [v.name for v in map(load_vector, VECTOR_FILES) if v.post_quantum]
    record_property("age_vectors_skipped", len(skipped))
    print(f"\nage vectors skipped ({POST_QUANTUM_REASON}): {len(skipped)}: {', '.join(skipped)}")
    assert len(skipped) == EXPECTED_POST_QUANTUM_VECTORS, skipped


@pytest.mark.parametrize("path", VECTOR_FILES, ids=[p.name for p in VECTOR_FILES])
def test_vector(path: Path):
    vector = load_vector(path)
    if vector.post_quantum:
        pytest.skip(f"{vector.name}: {POST_QUANTUM_REASON}")
    expect = vector.first("expect")
    assert expect in OUTCOMES, f"{vector.name}: unknown expectation {expect!r}"
    expected_error = OUTCOMES[expect]

    keys: list[str | age.Identity] = list(vector.identities)
    keys += [age.ScryptIdentity(p) for p in vector.fields.get("passphrase", [])]
    released = BytesIO()
    error: age.AgeError | None = None
    try:
        age.decrypt(BytesIO(vector.body), released, keys, armor=vector.first("armored") == "yes")
    except age.AgeError as exc:
        error = exc

    if expected_error is None:
        assert error is None, f"{vector.name}: expected success, got {error!r}"
    else:
        assert type(error) is expected_error, (
            f"{vector.name}: expected {expected_error.__name__}, got {error!r}"
        )
    payload = vector.first("payload")
    if payload is not None:
        assert hashlib.sha256(released.getvalue()).hexdigest() == payload, (
            f"{vector.name}: released {len(released.getvalue())} bytes of plaintext, "
            "not what the vector expects"
        )
    elif expect in ("header failure", "no match", "HMAC failure"):
        assert released.getvalue() == b"", "plaintext released although the header failed"
