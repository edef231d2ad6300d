"""Yamux stream multiplexer, sans-I/O (hashicorp/yamux spec.md; libp2p ``/yamux/1.0.0``).

Every frame starts with a 12-byte big-endian header: version (0), type, flags,
stream id, length. ``length`` is the payload size of a Data frame, the window
delta of a WindowUpdate, the opaque value of a Ping and the error code of a GoAway.

Choices where the spec is silent (aligned with rust-yamux, js-libp2p and go-yamux):

* Every stream starts with a 256 KiB window in both directions. We grant more
  (up to ``YamuxConfig.max_receive_window``) in the WindowUpdate that carries our
  SYN or ACK, and return credit once the application has consumed half of it, so
  the bytes a peer can make us hold per stream never exceed that window.
* Inbound streams are acknowledged at once. A SYN beyond ``max_inbound_streams``
  or after our GoAway is refused with RST; the session lives on.
* Frames for streams that are gone (closed or reset) are ignored: they may have
  been in flight. A non-SYN frame for a stream id that was never opened (ids are
  allocated in increasing order) is a protocol error, except a bare RST.
* Data after the peer's FIN resets only that stream.
* Ping and GoAway are session-level whatever their stream id; a Ping SYN is
  answered at once, a Ping ACK becomes :class:`~p2pnode.muxer.PongReceived`.
* Session-level violations (bad version or type, receive window exceeded, SYN
  with our id parity or for a live stream, Data/WindowUpdate on stream 0, a Data
  length above anything we could accept) queue GoAway(protocol error) and raise
  :class:`~p2pnode.errors.RemoteProtocolError`; the session is dead afterwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from p2pnode.errors import (
    ConnectionClosedError,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    StreamClosedError,
    TooManyStreamsError,
)
from p2pnode.wire.muxer import (
    Buffer,
    CreditPool,
    GoAwayReceived,
    MuxerEvent,
    PongReceived,
    SendWindowOpened,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    note_refusal,
)

__all__ = [
    "CREDIT_FLOOR",
    "HEADER_SIZE",
    "INITIAL_WINDOW",
    "PROTOCOL_ID",
    "Flag",
    "FrameType",
    "GoAwayCode",
    "YamuxConfig",
    "YamuxSession",
    "encode_header",
]

PROTOCOL_ID = "/yamux/1.0.0"
HEADER_SIZE = 12
INITIAL_WINDOW = 256 * 1024
CREDIT_FLOOR = 64 * INITIAL_WINDOW  # of a shared CreditPool, never handed out as extra credit
_MAX_U32 = 0xFFFFFFFF


class FrameType(IntEnum):
    """The yamux frame types."""

    DATA = 0
    WINDOW_UPDATE = 1
    PING = 2
    GO_AWAY = 3


class Flag(IntFlag):
    """The yamux header flags."""

    SYN = 1
    ACK = 2
    FIN = 4
    RST = 8


class GoAwayCode(IntEnum):
    """The error codes of a GoAway frame."""

    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


# Plain ints for the hot path: comparing against IntEnum members is slower.
_DATA = 0
_WINDOW_UPDATE = 1
_PING = 2
_GO_AWAY = 3
_SYN = 1
_ACK = 2
_FIN = 4
_RST = 8

_HEADER = struct.Struct(">BBHII")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from


def encode_header(frame_type: int, flags: int, stream_id: int, length: int) -> bytes:
    """Encode one 12-byte yamux header (version 0)."""
    return _pack_header(0, frame_type, flags, stream_id, length)


@dataclass(frozen=True, slots=True)
class YamuxConfig:
    """Limits and window sizes of a yamux session.

    ``initial_window`` is the spec's fixed 256 KiB: both peers assume it for every
    new stream, so change it only to match a peer that does the same.
    ``max_receive_window`` is the credit we grant per stream (and so the most a
    peer can make us buffer per stream). ``max_frame_payload`` caps the Data frames
    we send (rust-yamux rejects bodies above 1 MiB). ``max_ack_backlog`` bounds our
    outbound streams the peer has not acknowledged yet (the libp2p spec's 256).
    """

    initial_window: int = INITIAL_WINDOW
    max_receive_window: int = 16 * 1024 * 1024
    max_inbound_streams: int = 256
    max_ack_backlog: int = 256
    max_frame_payload: int = 256 * 1024
    max_connection_window: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.initial_window <= self.max_receive_window <= _MAX_U32:
            raise LocalProtocolError(
                "YamuxConfig needs 0 < initial_window <= max_receive_window <= 2**32-1, got "
                f"{self.initial_window} and {self.max_receive_window}"
            )
        if not 0 < self.max_frame_payload <= 1024 * 1024:
            raise LocalProtocolError(
                f"YamuxConfig.max_frame_payload must be 1..1048576 bytes, got "
                f"{self.max_frame_payload}"
            )
        if self.max_inbound_streams < 0 or self.max_ack_backlog < 1:
            raise LocalProtocolError(
                "YamuxConfig needs max_inbound_streams >= 0 and max_ack_backlog >= 1"
            )


class _Stream:
    """Per-stream flow-control state.

    Invariant on the receive side: ``recv_window + unconsumed + pending_credit``
    equals the window we granted (until the peer's FIN, after which credit stops).
    """

    __slots__ = (
        "acked",
        "extra",
        "local_closed",
        "pending_credit",
        "recv_window",
        "remote_closed",
        "send_window",
        "threshold",
        "unconsumed",
    )

    def __init__(self, send_window: int, recv_window: int, acked: bool, extra: int) -> None:
        self.send_window = send_window  # bytes we may still send
        self.recv_window = recv_window  # bytes the peer may still send
        self.extra = extra  # credit granted beyond the initial window (from the session's budget)
        self.threshold = (recv_window + 1) >> 1  # credit given back in one WindowUpdate (>= 1)
        self.unconsumed = 0  # delivered in events, not yet reported by consumed()
        self.pending_credit = 0  # consumed, not yet returned in a WindowUpdate
        self.acked = acked
        self.local_closed = False
        self.remote_closed = False


class YamuxSession:
    """One side of a yamux connection; satisfies :class:`~p2pnode.muxer.MuxerSession`.

    ``is_client`` is True on the side that dialed the connection (it opens odd
    stream ids; the listener opens even ones).
    """

    protocol_id: str = PROTOCOL_ID

    def __init__(
        self,
        *,
        is_client: bool,
        config: YamuxConfig | None = None,
        credit: CreditPool | None = None,
    ) -> None:
        self.config = config if config is not None else YamuxConfig()
        # shared with the peer's other connections: each stream's whole window is held in it
        self._credit = credit
        # Taken from ``credit`` but held by no stream: the window of a stream that closed
        # while others stay open, kept (up to one full window) for the next stream, so a
        # busy session does not go to the shared pool for every stream. Given back when
        # the session's last stream goes, so an idle session holds nothing.
        self._lease = 0
        self.is_client = is_client
        self._initial_window = self.config.initial_window
        self._target_window = self.config.max_receive_window
        self._extra_credit = self._target_window - self._initial_window
        # what max_connection_window has left for the extra credit of new streams
        self._window_left = self.config.max_connection_window
        self._max_frame = self.config.max_frame_payload
        self._next_id = 1 if is_client else 2
        self._remote_parity = 0 if is_client else 1
        self._highest_remote_id = 0
        self._streams: dict[int, _Stream] = {}
        self._inbound_count = 0
        self._unacked_outbound = 0
        self._out: list[bytes | memoryview] = []
        self._pending_pong: int | None = None  # opaque value of the Ping SYN to answer
        self._rbuf = bytearray()
        self._error: str | None = None
        self._local_goaway = False
        self._remote_goaway: int | None = None
        self._next_ping = 1

    # -- receiving -------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[MuxerEvent]:
        """Feed received bytes; return the events they produce.

        Raises :class:`~p2pnode.errors.RemoteProtocolError` (GoAway queued) when the
        peer broke the protocol, and again on every later call.
        """
        if self._error is not None:
            raise RemoteProtocolError(self._error)
        view = memoryview(data).cast("B")  # each payload is copied out exactly once
        events: list[MuxerEvent] = []
        offset = 0
        if self._rbuf:
            offset = self._complete_pending(view, events)
            if self._rbuf:
                return events
        end = self._parse(view, offset, events)
        if end < len(view):
            # Only the tail of an incomplete frame is kept; whole frames never are.
            self._rbuf = bytearray(view[end:])
        return events

    def _parse(self, buf: memoryview, offset: int, events: list[MuxerEvent]) -> int:
        """Handle every complete frame in ``buf[offset:]``; return the offset after the last."""
        size = len(buf)
        streams = self._streams
        unpack = _unpack_header
        max_data = self._target_window
        data_event = StreamData
        # 12 is HEADER_SIZE, spelled out: a literal is cheaper than a global lookup here.
        while size - offset >= 12:
            version, frame_type, flags, stream_id, length = unpack(buf, offset)
            if frame_type or version:
                self._on_frame(version, frame_type, flags, stream_id, length, b"", events)
                offset += 12
                continue
            if length > max_data:
                self._data_too_long(length)
            start = offset + 12
            end = start + length
            if end > size:
                break
            stream = streams.get(stream_id)
            if (
                stream is not None
                and not flags
                and length <= stream.recv_window
                and not stream.remote_closed
            ):
                # Fast path: plain Data on an open stream.
                stream.recv_window -= length
                if length:
                    stream.unconsumed += length
                    events.append(data_event(stream_id, buf[start:end].tobytes()))
            else:
                payload = buf[start:end].tobytes()
                self._on_stream_frame(_DATA, flags, stream_id, length, payload, events)
            offset = end
        return offset

    def _complete_pending(self, data: memoryview, events: list[MuxerEvent]) -> int:
        """Move into the buffer only what completes its partial frame, and handle that frame.

        Returns how many bytes of ``data`` were used; the buffer is empty afterwards
        unless ``data`` ran out first.
        """
        rbuf = self._rbuf
        used = 0
        if len(rbuf) < 12:
            used = min(12 - len(rbuf), len(data))
            rbuf += data[:used]
            if len(rbuf) < 12:
                return used
        header: tuple[int, int, int, int, int] = _unpack_header(rbuf)
        version, frame_type, flags, stream_id, length = header
        if frame_type == _DATA and not version:
            if length > self._target_window:
                self._data_too_long(length)
            take = min(12 + length - len(rbuf), len(data) - used)
            rbuf += data[used : used + take]
            used += take
            if len(rbuf) < 12 + length:
                return used
            with memoryview(rbuf) as view:
                payload = view[12:].tobytes()
        else:
            payload = b""
        self._rbuf = bytearray()
        self._on_frame(version, frame_type, flags, stream_id, length, payload, events)
        return used

    def _data_too_long(self, length: int) -> None:
        self._protocol_error(
            f"Data frame of {length} bytes exceeds any window we grant ({self._target_window})",
            DecodeError,
        )

    def _on_frame(
        self,
        version: int,
        frame_type: int,
        flags: int,
        stream_id: int,
        length: int,
        payload: bytes,
        events: list[MuxerEvent],
    ) -> None:
        """Handle any complete frame (the slow path)."""
        if version:
            self._protocol_error(f"unsupported yamux version {version}", DecodeError)
        if frame_type <= _WINDOW_UPDATE:
            self._on_stream_frame(frame_type, flags, stream_id, length, payload, events)
        elif frame_type == _PING:
            if flags & _SYN:
                # At most one pong waits to be sent: a peer that pings without reading
                # gets an answer to its latest ping only, never a growing queue of them.
                self._pending_pong = length
            elif flags & _ACK:
                events.append(PongReceived(length))
        elif frame_type == _GO_AWAY:
            self._remote_goaway = length
            events.append(GoAwayReceived(length))
        else:
            self._protocol_error(f"unknown yamux frame type {frame_type}", DecodeError)

    def _on_stream_frame(
        self,
        frame_type: int,
        flags: int,
        stream_id: int,
        length: int,
        payload: bytes,
        events: list[MuxerEvent],
    ) -> None:
        """Handle a Data or WindowUpdate frame that is not a plain in-window Data frame."""
        if stream_id == 0:
            self._protocol_error("Data or WindowUpdate frame on stream 0 (the session id)")
        streams = self._streams
        if flags & _RST:
            stream = streams.pop(stream_id, None)
            if stream is not None:
                self._forget(stream_id, stream)
                events.append(StreamReset(stream_id, "reset by peer"))
            return
        if flags & _SYN:
            new_stream = self._accept_stream(
                stream_id, length if frame_type == _DATA else 0, events
            )
            if new_stream is None:
                return
            stream = new_stream
        else:
            found = streams.get(stream_id)
            if found is None:
                if not self._was_opened(stream_id):
                    self._protocol_error(f"frame for stream {stream_id}, which was never opened")
                return  # a stream we closed or reset; the frame was in flight
            stream = found
        if flags & _ACK and not stream.acked:
            stream.acked = True
            self._unacked_outbound -= 1
        if frame_type == _DATA:
            if length > stream.recv_window:
                self._protocol_error(
                    f"peer sent {length} bytes on stream {stream_id} with only "
                    f"{stream.recv_window} bytes of window left"
                )
            if stream.remote_closed:
                if length:
                    self._reset(stream_id, stream)
                    events.append(StreamReset(stream_id, "peer sent data after FIN"))
                    return
            elif length:
                stream.recv_window -= length
                stream.unconsumed += length
                events.append(StreamData(stream_id, payload))
        elif length:
            stream.send_window += length
            if not stream.local_closed:
                events.append(SendWindowOpened(stream_id))
        if flags & _FIN and not stream.remote_closed:
            stream.remote_closed = True
            events.append(StreamEnded(stream_id))
            if stream.local_closed:
                del streams[stream_id]
                self._forget(stream_id, stream)

    def _accept_stream(
        self, stream_id: int, data_length: int, events: list[MuxerEvent]
    ) -> _Stream | None:
        """Register an inbound SYN; return the new stream, or None if refused with RST."""
        if data_length > self._initial_window:
            # Our ACK's extra credit cannot cover data sent along with the SYN.
            self._protocol_error(
                f"SYN on stream {stream_id} carries {data_length} bytes, more than the "
                f"initial window of {self._initial_window}"
            )
        if stream_id & 1 != self._remote_parity:
            self._protocol_error(f"peer opened stream {stream_id}, an id of our parity")
        if stream_id in self._streams:
            self._protocol_error(f"peer sent SYN for stream {stream_id}, which is already open")
        if stream_id > self._highest_remote_id:
            self._highest_remote_id = stream_id
        if self._local_goaway or self._inbound_count >= self.config.max_inbound_streams:
            self._out.append(_pack_header(0, _WINDOW_UPDATE, _RST, stream_id, 0))
            if not self._local_goaway:
                note_refusal(events, stream_id, self.config.max_inbound_streams)
            return None
        extra = self._take_credit(True)
        if extra < 0:
            room = self._lease + (self._credit.room() if self._credit is not None else 0)
            self._out.append(_pack_header(0, _WINDOW_UPDATE, _RST, stream_id, 0))
            note_refusal(events, stream_id, room, "peer_receive_memory")
            return None
        initial = self._initial_window
        stream = _Stream(initial, initial + extra, True, extra)
        self._streams[stream_id] = stream
        self._inbound_count += 1
        self._out.append(_pack_header(0, _WINDOW_UPDATE, _ACK, stream_id, extra))
        events.append(StreamOpened(stream_id))
        return stream

    def _was_opened(self, stream_id: int) -> bool:
        if stream_id & 1 == self._remote_parity:
            return stream_id <= self._highest_remote_id
        return stream_id < self._next_id

    def _take_credit(self, inbound: bool) -> int:
        """Take a new stream's receive window; return its credit beyond the initial window.

        The extra credit is limited by what ``max_connection_window`` has left and, with a
        shared pool, by the pool's room; the window comes from the lease, or else the
        pool. -1 (nothing taken) refuses an inbound stream whose initial window does not
        fit in the pool; streams we open always get their initial window.
        """
        left = self._window_left
        extra = self._extra_credit
        if left < extra:
            extra = left >> 1
        lease = self._lease
        initial = self._initial_window
        if lease >= initial + extra:  # a busy session: no trip to the pool
            self._lease = lease - initial - extra
        elif self._credit is not None:
            room = self._credit.room() + lease
            if inbound and room < initial:
                return -1
            # extra credit leaves the initial windows of CREDIT_FLOOR // INITIAL_WINDOW
            # more streams free: a burst of new streams is not refused for what earlier
            # ones got
            spare = room - initial - CREDIT_FLOOR
            if spare < 2 * extra:
                extra = spare >> 1 if spare > 0 else 0
            need = initial + extra - lease
            if need > 0:
                self._lease = 0
                self._credit.force(need)  # within room, or our own stream's initial window
            else:
                self._lease = -need
        self._window_left = left - extra
        return extra

    def _forget(self, stream_id: int, stream: _Stream) -> None:
        """Update the counters for a stream just removed from the table."""
        extra = stream.extra
        self._window_left += extra
        credit = self._credit
        if credit is not None:
            # the lease keeps at most one full window, and none once no stream is left
            lease = self._lease + self._initial_window + extra
            if not self._streams:
                self._lease = 0
                credit.release(lease)
            elif lease <= self._target_window:
                self._lease = lease
            else:
                self._lease = self._target_window
                credit.release(lease - self._target_window)
        if stream_id & 1 == self._remote_parity:
            self._inbound_count -= 1
        elif not stream.acked:
            self._unacked_outbound -= 1

    def _reset(self, stream_id: int, stream: _Stream) -> None:
        del self._streams[stream_id]
        self._forget(stream_id, stream)
        self._out.append(_pack_header(0, _WINDOW_UPDATE, _RST, stream_id, 0))

    def _protocol_error(
        self, message: str, error: type[RemoteProtocolError] = RemoteProtocolError
    ) -> None:
        """Kill the session: queue GoAway(protocol error) and raise."""
        self._error = f"yamux peer broke the protocol: {message}; close the connection"
        self._rbuf = bytearray()
        if not self._local_goaway:
            self._local_goaway = True
            self._out.append(_pack_header(0, _GO_AWAY, 0, 0, GoAwayCode.PROTOCOL_ERROR))
        raise error(self._error)

    # -- sending ---------------------------------------------------------------

    @property
    def can_open_stream(self) -> bool:
        return self._unacked_outbound < self.config.max_ack_backlog

    def open_stream(self) -> int:
        """Open an outbound stream (queues WindowUpdate+SYN) and return its id."""
        if self._error is not None or self._local_goaway:
            raise ConnectionClosedError("yamux session is closing (GoAway sent); open none")
        if self._remote_goaway is not None:
            raise ConnectionClosedError(
                f"peer sent GoAway (code {self._remote_goaway}); open a new connection"
            )
        if self._unacked_outbound >= self.config.max_ack_backlog:
            raise TooManyStreamsError(
                f"{self._unacked_outbound} streams await the peer's ACK; retry after some do"
            )
        stream_id = self._next_id
        if stream_id > _MAX_U32:
            raise TooManyStreamsError("yamux stream ids exhausted; open a new connection")
        self._next_id = stream_id + 2
        extra = self._take_credit(False)
        initial = self._initial_window
        self._streams[stream_id] = _Stream(initial, initial + extra, False, extra)
        self._unacked_outbound += 1
        self._out.append(_pack_header(0, _WINDOW_UPDATE, _SYN, stream_id, extra))
        return stream_id

    def send(self, stream_id: int, data: Buffer) -> int:
        """Queue up to ``len(data)`` bytes as Data frames; return how many the window allowed."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(f"yamux stream {stream_id} is closed for sending")
        if self._error is not None:
            raise ConnectionClosedError("yamux session failed; close the connection")
        window = stream.send_window
        if type(data) is bytes:
            payload = data
            size = len(data)
            if size > window:
                size = window
        else:
            # One copy of what we send: the caller may reuse its bytearray/memoryview.
            view = memoryview(data)
            if view.itemsize != 1:
                view = view.cast("B")
            payload = view[:window].tobytes()
            size = len(payload)
        if not size:
            return 0
        stream.send_window = window - size
        if size <= self._max_frame:
            out = self._out
            out.append(_pack_header(0, _DATA, 0, stream_id, size))
            out.append(payload if size == len(payload) else memoryview(payload)[:size])
            return size
        out = self._out
        max_frame = self._max_frame
        view = memoryview(payload)
        for start in range(0, size, max_frame):
            chunk = view[start : min(start + max_frame, size)]
            out.append(_pack_header(0, _DATA, 0, stream_id, len(chunk)))
            out.append(chunk)
        return size

    def send_window(self, stream_id: int) -> int:
        """How many bytes ``send`` accepts now (0 if the stream is closed for sending)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        return stream.send_window

    def consumed(self, stream_id: int, size: int) -> bool:
        """Report ``size`` bytes read by the application; True if it queued a WindowUpdate."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return False  # closed or reset: no credit to return
        if not 0 <= size <= stream.unconsumed:
            raise LocalProtocolError(
                f"consumed({stream_id}, {size}) but only {stream.unconsumed} bytes are unread"
            )
        stream.unconsumed -= size
        if stream.remote_closed:
            return False  # the peer sends no more data; credit would be useless
        pending = stream.pending_credit + size
        if pending < stream.threshold:
            stream.pending_credit = pending
            return False
        stream.recv_window += pending
        stream.pending_credit = 0
        self._out.append(_pack_header(0, _WINDOW_UPDATE, 0, stream_id, pending))
        return True

    def close_stream(self, stream_id: int) -> None:
        """Half-close: queue WindowUpdate+FIN. A no-op if already closed or unknown."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            return
        stream.local_closed = True
        self._out.append(_pack_header(0, _WINDOW_UPDATE, _FIN, stream_id, 0))
        if stream.remote_closed:
            del self._streams[stream_id]
            self._forget(stream_id, stream)

    def reset_stream(self, stream_id: int) -> None:
        """Queue RST and forget the stream. A no-op if the stream is unknown."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._reset(stream_id, stream)

    def ping(self) -> int:
        """Queue a Ping SYN; return its opaque value (echoed in :class:`PongReceived`)."""
        if self._error is not None:
            raise ConnectionClosedError("yamux session failed; close the connection")
        opaque = self._next_ping
        self._next_ping = opaque + 1 if opaque < _MAX_U32 else 1
        self._out.append(_pack_header(0, _PING, _SYN, 0, opaque))
        return opaque

    def go_away(self, code: int = GoAwayCode.NORMAL) -> None:
        """Queue GoAway(``code``): we accept no new streams and open none. Idempotent."""
        if not 0 <= code <= _MAX_U32:
            raise LocalProtocolError(f"GoAway code must fit in 32 bits, got {code}")
        if self._local_goaway:
            return
        self._local_goaway = True
        self._out.append(_pack_header(0, _GO_AWAY, 0, 0, code))

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out) or self._pending_pong is not None

    def data_to_send(self) -> bytes:
        """Return and forget all bytes queued for the peer."""
        out = self._out
        if self._pending_pong is not None:
            out.append(_pack_header(0, _PING, _ACK, 0, self._pending_pong))
            self._pending_pong = None
        if not out:
            return b""
        self._out = []
        return b"".join(out)

    def release_credit(self) -> None:
        """Give back the credit every remaining stream holds; the session is done."""
        credit, self._credit = self._credit, None
        if credit is not None:
            initial = self._initial_window
            held = sum(initial + stream.extra for stream in self._streams.values())
            credit.release(self._lease + held)
            self._lease = 0

    # -- introspection (for tests and the connection layer) ----------------------

    @property
    def stream_count(self) -> int:
        """How many streams are open (in any half-closed state)."""
        return len(self._streams)

    @property
    def goaway_received(self) -> int | None:
        """The peer's GoAway code, or None if it sent none."""
        return self._remote_goaway
