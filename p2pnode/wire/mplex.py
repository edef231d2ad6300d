"""mplex (``/mplex/6.7.0``, libp2p specs ``mplex/README.md``) as a sans-I/O muxer session.

A frame is ``varint(stream_id << 3 | flag)``, ``varint(length)``, payload. Each side
numbers the streams it opens itself, so one number can name two streams: one we
opened and one the peer opened. The flag says which: the ``*Initiator`` flags are
sent by the side that opened the stream, the ``*Receiver`` flags by the other.
Stream keys here are ``number * 2`` for streams we opened and ``number * 2 + 1``
for streams the peer opened.

mplex has no flow control. Received data a stream has not consumed is bounded by
``MplexConfig.max_stream_buffer``; a stream that exceeds it is reset (only that one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum

from p2pnode.errors import (
    ConnectionClosedError,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    StreamClosedError,
)
from p2pnode.wire.muxer import (
    Buffer,
    CreditPool,
    MuxerEvent,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    note_refusal,
)
from p2pnode.wire.varint import decode_uvarint, encode_uvarint

log = logging.getLogger(__name__)

PROTOCOL_ID = "/mplex/6.7.0"


class MplexFlag(IntEnum):
    """The frame kinds; see the module docstring for initiator/receiver."""

    NEW_STREAM = 0
    MESSAGE_RECEIVER = 1
    MESSAGE_INITIATOR = 2
    CLOSE_RECEIVER = 3
    CLOSE_INITIATOR = 4
    RESET_RECEIVER = 5
    RESET_INITIATOR = 6


@dataclass(frozen=True, slots=True)
class MplexConfig:
    """Limits of an mplex session."""

    max_stream_buffer: int = 4 * 1024 * 1024
    max_message_size: int = 1024 * 1024
    max_inbound_streams: int = 256
    max_outbound_message: int = 64 * 1024


class _Stream:
    __slots__ = ("buffered", "local_closed", "remote_closed")

    def __init__(self) -> None:
        self.buffered = 0
        self.local_closed = False
        self.remote_closed = False


def _frame(number: int, flag: int, payload: Buffer = b"") -> bytes:
    return encode_uvarint(number << 3 | flag) + encode_uvarint(len(payload)) + bytes(payload)


class MplexSession:
    """An mplex session; satisfies :class:`~p2pnode.muxer.MuxerSession`."""

    protocol_id = PROTOCOL_ID

    def __init__(
        self,
        *,
        is_initiator: bool,
        config: MplexConfig | None = None,
        credit: CreditPool | None = None,
    ) -> None:
        self.is_initiator = is_initiator
        self.config = config or MplexConfig()
        # shared with the peer's other connections: unread data of every stream is held in it
        self._credit = credit
        self._streams: dict[int, _Stream] = {}
        self._inbound = 0
        self._next_number = 0
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._going_away = False
        self._error: RemoteProtocolError | None = None

    @property
    def stream_count(self) -> int:
        """Streams currently known to the session."""
        return len(self._streams)

    # -- receiving ---------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[MuxerEvent]:
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        events: list[MuxerEvent] = []
        view = memoryview(buffer)
        pos = 0
        end = len(buffer)
        try:
            while pos < end:
                header = decode_uvarint(view, pos)
                if header is None:
                    break
                tag, after_tag = header
                length_field = decode_uvarint(view, after_tag)
                if length_field is None:
                    break
                length, start = length_field
                if length > self.config.max_message_size:
                    raise DecodeError(
                        f"mplex frame of {length} bytes exceeds {self.config.max_message_size}"
                    )
                if end - start < length:
                    break
                pos = start + length
                self._handle_frame(tag >> 3, tag & 7, view, start, pos, events)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        finally:
            view.release()
        del buffer[:pos]
        return events

    def _handle_frame(
        self,
        number: int,
        flag: int,
        view: memoryview,
        start: int,
        end: int,
        events: list[MuxerEvent],
    ) -> None:
        if flag == MplexFlag.NEW_STREAM:
            self._accept(number * 2 + 1, events)
            return
        if flag > MplexFlag.RESET_INITIATOR:
            raise DecodeError(f"unknown mplex flag {flag}")
        # Odd flags come from the side that did not open the stream: that is us for *_RECEIVER.
        key = number * 2 + (1 if flag % 2 == 0 else 0)
        stream = self._streams.get(key)
        if stream is None:
            # A stream already reset or closed here (frames may still be in flight), or one
            # that never existed: neither harms another stream, so only note it.
            log.debug("ignoring mplex flag %d for unknown stream %d", flag, number)
            return
        if flag in (MplexFlag.MESSAGE_RECEIVER, MplexFlag.MESSAGE_INITIATOR):
            if stream.remote_closed:
                self._reset(key, events, "peer sent data after closing the stream")
                return
            size = end - start
            if stream.buffered + size > self.config.max_stream_buffer:
                self._reset(
                    key, events, f"receive buffer over {self.config.max_stream_buffer} bytes"
                )
                return
            credit = self._credit
            if credit is not None and size and not credit.reserve(size):
                self._reset(key, events, "the peer's receive memory (all its connections) is full")
                return
            stream.buffered += size
            if size:
                events.append(StreamData(key, bytes(view[start:end])))
        elif flag in (MplexFlag.CLOSE_RECEIVER, MplexFlag.CLOSE_INITIATOR):
            if not stream.remote_closed:
                stream.remote_closed = True
                events.append(StreamEnded(key))
                if stream.local_closed:
                    self._forget(key)
        else:
            self._forget(key)
            events.append(StreamReset(key, "reset by the peer"))

    def _accept(self, key: int, events: list[MuxerEvent]) -> None:
        if key in self._streams:
            raise RemoteProtocolError(f"peer opened mplex stream {key // 2} twice")
        if self._going_away or self._inbound >= self.config.max_inbound_streams:
            self._out.append(_frame(key // 2, MplexFlag.RESET_RECEIVER))
            if not self._going_away:
                note_refusal(events, key, self.config.max_inbound_streams)
            return
        self._streams[key] = _Stream()
        self._inbound += 1
        events.append(StreamOpened(key))

    def _reset(self, key: int, events: list[MuxerEvent], reason: str) -> None:
        self._send_flag(key, MplexFlag.RESET_RECEIVER)
        self._forget(key)
        events.append(StreamReset(key, reason))

    def _forget(self, key: int) -> None:
        stream = self._streams.pop(key, None)
        if stream is None:
            return
        if key % 2:
            self._inbound -= 1
        if self._credit is not None and stream.buffered:
            self._credit.release(stream.buffered)
            stream.buffered = 0  # a late consumed() for it finds no stream

    def _send_flag(self, key: int, receiver_flag: int, payload: Buffer = b"") -> None:
        # The *_INITIATOR flag is the *_RECEIVER flag + 1; we initiated even keys.
        flag = receiver_flag + 1 if key % 2 == 0 else receiver_flag
        self._out.append(_frame(key // 2, flag, payload))

    # -- acting on streams ---------------------------------------------------------------

    @property
    def can_open_stream(self) -> bool:
        return True  # mplex streams need no acknowledgement

    def open_stream(self) -> int:
        if self._error is not None or self._going_away:
            raise ConnectionClosedError("the mplex session is closing: open a new connection")
        number = self._next_number
        self._next_number += 1
        key = number * 2
        self._streams[key] = _Stream()
        self._out.append(_frame(number, MplexFlag.NEW_STREAM, str(number).encode()))
        return key

    def send(self, stream_id: int, data: Buffer) -> int:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(f"mplex stream {stream_id} is closed for writing")
        size = len(data)
        chunk = self.config.max_outbound_message
        if size <= chunk:
            self._send_flag(stream_id, MplexFlag.MESSAGE_RECEIVER, data)
        else:
            view = memoryview(data)
            for offset in range(0, size, chunk):
                self._send_flag(
                    stream_id, MplexFlag.MESSAGE_RECEIVER, view[offset : offset + chunk]
                )
        return size

    def send_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        return self.config.max_message_size

    def consumed(self, stream_id: int, size: int) -> bool:
        stream = self._streams.get(stream_id)
        if stream is not None:
            if size > stream.buffered:
                raise LocalProtocolError("consumed more mplex data than was received")
            stream.buffered -= size
            if self._credit is not None:
                self._credit.release(size)
        return False  # no flow control, so nothing to tell the peer

    def close_stream(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.local_closed = True
        self._send_flag(stream_id, MplexFlag.CLOSE_RECEIVER)
        if stream.remote_closed:
            self._forget(stream_id)

    def reset_stream(self, stream_id: int) -> None:
        if stream_id in self._streams:
            self._send_flag(stream_id, MplexFlag.RESET_RECEIVER)
            self._forget(stream_id)

    def ping(self) -> int | None:
        return None  # mplex has no ping frame

    def go_away(self, code: int = 0) -> None:
        self._going_away = True  # mplex has no GoAway frame: refuse new streams from now on

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def release_credit(self) -> None:
        """Give back the credit the unread data of every stream holds; the session is done."""
        credit, self._credit = self._credit, None
        if credit is not None:
            credit.release(sum(stream.buffered for stream in self._streams.values()))
