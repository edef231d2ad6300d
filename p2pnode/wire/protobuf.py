"""The few protobuf wire-format pieces libp2p messages need (no generated code).

Only wire types 0 (varint) and 2 (length-delimited) are used by the messages we
speak (PublicKey, PrivateKey, NoiseHandshakePayload, Identify); other wire types
are skipped when decoding so that unknown fields are ignored, as protobuf requires.
"""

from __future__ import annotations

from collections.abc import Iterator

from p2pnode.errors import DecodeError
from p2pnode.wire.varint import decode_uvarint, encode_uvarint

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5


def encode_varint_field(field: int, value: int) -> bytes:
    """One varint field (wire type 0)."""
    return encode_uvarint(field << 3 | VARINT) + encode_uvarint(value)


def encode_bytes_field(field: int, value: bytes | str) -> bytes:
    """One length-delimited field (wire type 2); str is encoded as UTF-8."""
    raw = value.encode() if isinstance(value, str) else value
    return encode_uvarint(field << 3 | LENGTH_DELIMITED) + encode_uvarint(len(raw)) + raw


def iter_fields(data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)``; raise DecodeError on malformed input.

    Varint values are ints, length-delimited values are bytes; fixed-width values
    are returned as raw bytes so callers can ignore them.
    """
    data = bytes(data)
    pos = 0
    end = len(data)
    while pos < end:
        tag = data[pos]
        if tag < 0x80:  # one-byte keys and lengths (most fields) skip the varint decoder
            pos += 1
        else:
            tag, pos = _varint_at(data, pos, "field key")
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise DecodeError("protobuf field number 0 is invalid")
        if wire_type == VARINT:
            value, pos = _varint_at(data, pos, "varint")
            yield field, wire_type, value
        elif wire_type == LENGTH_DELIMITED:
            if pos < end and data[pos] < 0x80:
                length = data[pos]
                pos += 1
            else:
                length, pos = _varint_at(data, pos, "length")
            if pos + length > end:
                raise DecodeError("protobuf field runs past the end of the message")
            yield field, wire_type, data[pos : pos + length]
            pos += length
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
            if pos + size > end:
                raise DecodeError("truncated protobuf fixed-width field")
            yield field, wire_type, data[pos : pos + size]
            pos += size
        else:
            raise DecodeError(f"unsupported protobuf wire type {wire_type}")


def _varint_at(data: bytes, pos: int, what: str) -> tuple[int, int]:
    decoded = decode_uvarint(data, pos)
    if decoded is None:
        raise DecodeError(f"truncated protobuf {what}")
    return decoded
