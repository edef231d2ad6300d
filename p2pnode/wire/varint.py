"""Unsigned varints as specified by multiformats (``unsigned-varint``).

At most 9 bytes (63 bits); encodings must be minimal (no trailing zero byte).
"""

from __future__ import annotations

from p2pnode.errors import DecodeError

MAX_VARINT_BYTES = 9
MAX_VARINT = (1 << 63) - 1

# Single-byte encodings are by far the most common; precompute them.
_SMALL = tuple(bytes((i,)) for i in range(0x80))


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer below 2**63 as an unsigned varint."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    if 0x80 <= value < 0x4000:  # two bytes: most messages that are not tiny
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0 or value > MAX_VARINT:
        raise ValueError(f"varint value out of range 0..2**63-1: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``buf[offset:]``.

    Returns ``(value, offset_after)``, or ``None`` when the buffer ends before the
    varint does. Raises :class:`DecodeError` for an overlong or non-minimal varint.
    """
    end = len(buf)
    if offset < end:
        first = buf[offset]
        if first < 0x80:
            return first, offset + 1
    value = 0
    shift = 0
    pos = offset
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and pos - offset > 1:
                raise DecodeError("varint is not minimally encoded")
            return value, pos
        shift += 7
        if pos - offset >= MAX_VARINT_BYTES:
            raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    return None


def decode_uvarint_exact(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Decode a varint at the start of ``data``; a truncated varint is an error."""
    result = decode_uvarint(data)
    if result is None:
        raise DecodeError("truncated varint")
    return result
