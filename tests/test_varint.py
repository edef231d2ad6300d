"""Unsigned varints (multiformats unsigned-varint)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import DecodeError
from p2pnode.wire.varint import MAX_VARINT, decode_uvarint, decode_uvarint_exact, encode_uvarint

# The examples of the unsigned-varint spec.
SPEC_EXAMPLES = [
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (255, "ff01"),
    (300, "ac02"),
    (16384, "808001"),
]


@pytest.mark.parametrize(("value", "encoded"), SPEC_EXAMPLES)
def test_spec_examples(value: int, encoded: str) -> None:
    assert encode_uvarint(value).hex() == encoded
    assert decode_uvarint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)


def test_incomplete_is_none_and_offsets_work() -> None:
    assert decode_uvarint(b"\x80") is None
    assert decode_uvarint(b"") is None
    assert decode_uvarint(b"\x00\xac\x02", 1) == (300, 3)
    with pytest.raises(DecodeError, match="truncated"):
        decode_uvarint_exact(b"\x80\x80")


def test_non_minimal_and_overlong_are_refused() -> None:
    with pytest.raises(DecodeError, match="minimal"):
        decode_uvarint(b"\x81\x00")
    with pytest.raises(DecodeError, match="longer than 9"):
        decode_uvarint(b"\xff" * 9 + b"\x01")
    with pytest.raises(ValueError):
        encode_uvarint(MAX_VARINT + 1)
    with pytest.raises(ValueError):
        encode_uvarint(-1)


@given(st.integers(0, MAX_VARINT))
def test_round_trip(value: int) -> None:
    encoded = encode_uvarint(value)
    assert len(encoded) <= 9
    assert decode_uvarint(encoded) == (value, len(encoded))


@given(st.binary(max_size=16))
def test_any_bytes_give_a_value_none_or_decode_error(data: bytes) -> None:
    try:
        result = decode_uvarint(data)
    except DecodeError:
        return
    if result is not None:
        value, end = result
        assert encode_uvarint(value) == data[:end]
