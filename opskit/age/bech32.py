"""Bech32 (BIP 173), the encoding of age keys: age1... and AGE-SECRET-KEY-1..."""

from __future__ import annotations

from collections.abc import Sequence

from opskit.age.format import (
    KeyFormatError,
)

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
