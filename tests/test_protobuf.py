"""The protobuf wire pieces: what is encoded decodes back, and garbage is a DecodeError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import DecodeError
from p2pnode.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)

fields = st.lists(
    st.tuples(
        st.integers(1, 5000),  # field numbers past 15 take a two-byte key
        st.one_of(st.integers(0, 2**63 - 1), st.binary(max_size=300)),  # lengths past 127
    ),
    max_size=8,
)


@given(fields)
def test_fields_decode_to_what_was_encoded(message: list[tuple[int, int | bytes]]) -> None:
    encoded = b"".join(
        encode_varint_field(number, value)
        if isinstance(value, int)
        else encode_bytes_field(number, value)
        for number, value in message
    )
    expected = [
        (number, VARINT if isinstance(value, int) else LENGTH_DELIMITED, value)
        for number, value in message
    ]
    assert list(iter_fields(encoded)) == expected


@given(st.integers(1, 5000), st.binary(min_size=1, max_size=300), st.data())
def test_a_field_cut_short_is_a_decode_error(
    number: int, value: bytes, data: st.DataObject
) -> None:
    encoded = encode_bytes_field(number, value)
    cut = data.draw(st.integers(1, len(encoded) - 1))
    with pytest.raises(DecodeError):
        list(iter_fields(encoded[:cut]))


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        for number, wire_type, _ in iter_fields(data):
            assert number > 0 and wire_type in (0, 1, 2, 5)
