"""Unsigned-varint length-prefixed messages (sans-I/O), as identify and the task protocol use.

:class:`FrameDecoder` checks the announced length against its limit as soon as
the prefix is complete, so an oversized message is refused without being read.
"""

from __future__ import annotations

from p2pnode.errors import DecodeError
from p2pnode.wire.varint import decode_uvarint, encode_uvarint


class MessageTooLargeError(DecodeError):
    """A length prefix announced more bytes than the receiver accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into length-prefixed messages of at most ``max_size`` bytes."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._expected: int | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buffer)

    @property
    def in_message(self) -> bool:
        """True when part of a message (its prefix or some of its body) has arrived."""
        return bool(self._buffer) or self._expected is not None

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Feed bytes; return every message completed by them."""
        self._buffer += data
        messages: list[bytes] = []
        buffer = self._buffer
        pos = 0
        while True:
            if self._expected is None:
                header = decode_uvarint(buffer, pos)
                if header is None:
                    if len(buffer) - pos >= 9:
                        raise DecodeError("length prefix is not a valid varint")
                    break
                size, pos = header
                if size > self.max_size:
                    raise MessageTooLargeError(size, self.max_size)
                self._expected = size
            end = pos + self._expected
            if end > len(buffer):
                break
            messages.append(bytes(buffer[pos:end]))
            pos = end
            self._expected = None
        del buffer[:pos]
        return messages
