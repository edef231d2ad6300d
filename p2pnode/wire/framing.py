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
    """Splits a byte stream into length-prefixed messages of at most ``max_size`` bytes.

    A message that arrives in pieces is joined once, when its last piece comes (pieces
    of immutable ``bytes`` are held without a copy until then), so a large message costs
    one copy however many reads it spans.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._head = b""  # an incomplete length prefix
        self._expected: int | None = None  # body size of the message being received
        self._pieces: list[bytes | memoryview] = []
        self._have = 0  # bytes of the body in _pieces

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._head) + self._have

    @property
    def in_message(self) -> bool:
        """True when part of a message (its prefix or some of its body) has arrived."""
        return bool(self._head) or self._expected is not None

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Feed bytes; return every message completed by them."""
        if self._expected is None and not self._head and type(data) is bytes:
            return self._whole_messages(data)
        return self._receive_view(data, [])

    def _whole_messages(self, data: bytes) -> list[bytes]:
        """The common case, nothing pending: messages sliced straight out of ``data``."""
        messages: list[bytes] = []
        pos, end = 0, len(data)
        limit = self.max_size
        while pos < end:
            size = data[pos]
            start = pos + 1
            if size >= 0x80:
                if start < end and 0 < data[start] < 0x80:  # two bytes (128 B to 16 KiB)
                    size = (size & 0x7F) | (data[start] << 7)
                    start += 1
                else:
                    header = decode_uvarint(data, pos)
                    if header is None:
                        break  # the prefix continues in a later read
                    size, start = header
            if size > limit:
                raise MessageTooLargeError(size, limit)
            stop = start + size
            if stop > end:
                break
            messages.append(data[start:stop])
            pos = stop
        if pos < end:
            return self._receive_view(memoryview(data)[pos:], messages, keep=True)
        return messages

    def _receive_view(
        self, data: bytes | bytearray | memoryview, messages: list[bytes], keep: bool = False
    ) -> list[bytes]:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        keep = keep or isinstance(data, bytes)  # immutable: pieces may point into it
        while view:
            if self._expected is None:
                view = self._read_prefix(view)
                if self._expected is None:
                    break
            need = self._expected - self._have
            if len(view) < need:
                self._pieces.append(view if keep else bytes(view))
                self._have += len(view)
                break
            if self._pieces:
                self._pieces.append(view[:need])
                messages.append(b"".join(self._pieces))
                self._pieces = []
            else:
                messages.append(bytes(view[:need]))
            view = view[need:]
            self._expected = None
            self._have = 0
        if self._expected == 0:  # an empty message needs no more bytes
            messages.append(b"")
            self._expected = None
        return messages

    def _read_prefix(self, view: memoryview) -> memoryview:
        """Take a length prefix from (the head and) ``view``; what is left of ``view``."""
        head = self._head
        joined: bytes | memoryview = head + bytes(view[:9]) if head else view
        header = decode_uvarint(joined, 0)
        if header is None:
            if len(joined) >= 9:
                raise DecodeError("length prefix is not a valid varint")
            self._head = bytes(joined)
            return view[len(view) :]
        size, pos = header
        self._head = b""
        if size > self.max_size:
            raise MessageTooLargeError(size, self.max_size)
        self._expected = size
        return view[pos - len(head) :]
