"""What every sans-I/O stream multiplexer (yamux, mplex) offers the connection layer.

A muxer session takes the decrypted bytes of a connection and returns events;
calls that act on streams queue bytes which :meth:`MuxerSession.data_to_send`
hands back. It never touches a socket, a clock or a task. Stream keys are
opaque integers, unique within one session for the session's lifetime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

Buffer = bytes | bytearray | memoryview

# The events are plain (not frozen) slotted dataclasses: a frozen one's __init__ goes
# through object.__setattr__ for every field, and a session makes several per message.


@dataclass(slots=True)
class StreamOpened:
    """The peer opened a new stream."""

    stream_id: int


@dataclass(slots=True)
class StreamData:
    """Payload arrived on a stream. Report it with ``consumed`` once the application reads it."""

    stream_id: int
    data: bytes


@dataclass(slots=True)
class StreamEnded:
    """The peer half-closed the stream: it will send no more data."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The stream was reset, by the peer or by the session itself (e.g. buffer overflow)."""

    stream_id: int
    reason: str


@dataclass(slots=True)
class SendWindowOpened:
    """The peer granted more send credit on a stream (yamux flow control)."""

    stream_id: int


@dataclass(slots=True)
class PongReceived:
    """The answer to one of our pings (``opaque`` is the value ``ping()`` returned)."""

    opaque: int


@dataclass(slots=True)
class StreamRefused:
    """We reset ``count`` streams the peer opened, from ``stream_id`` on, over a limit: by
    default the ``limit`` inbound streams it already had open; ``reason`` names the limit
    (``peer_receive_memory``: the peer's receive credit, shared by all its connections,
    had only ``limit`` bytes left, less than a stream's initial window). Refusals in a row
    are one event (see :func:`note_refusal`): a flood of SYNs costs a counter each."""

    stream_id: int
    limit: int
    reason: str = "max_inbound_streams"
    count: int = 1


def note_refusal(
    events: list[MuxerEvent], stream_id: int, limit: int, reason: str = "max_inbound_streams"
) -> None:
    """Add a refusal to ``events``, counted in the last event if that one is a refusal too."""
    last = events[-1] if events else None
    if type(last) is StreamRefused and last.reason == reason:
        last.count += 1
    else:
        events.append(StreamRefused(stream_id, limit, reason))


@dataclass(slots=True)
class GoAwayReceived:
    """The peer will accept no new streams. ``code`` 0 is a normal shutdown."""

    code: int


MuxerEvent = (
    StreamOpened
    | StreamData
    | StreamEnded
    | StreamReset
    | SendWindowOpened
    | PongReceived
    | GoAwayReceived
    | StreamRefused
)


class CreditPool(Protocol):
    """Bytes a peer may make us hold, shared by all its sessions (see ``net.limits``).

    A session reserves the receive window of each stream (yamux) or each message it
    buffers (mplex) here, and releases it when the stream goes or the data is read.
    """

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit; False (nothing taken) if not."""
        ...

    def force(self, size: int) -> None:
        """Take ``size`` bytes even past the limit (for streams we open ourselves)."""
        ...

    def release(self, size: int) -> None: ...

    def room(self) -> int:
        """How many bytes ``reserve`` would take now."""
        ...


class MuxerSession(Protocol):
    """The interface of yamux and mplex sessions. See the module docstring."""

    protocol_id: str

    def receive_data(self, data: Buffer) -> list[MuxerEvent]:
        """Feed received bytes; return the events they produce.

        Raises :class:`~p2pnode.errors.RemoteProtocolError` when the peer broke
        the protocol; the session has then queued whatever goodbye the protocol
        has (e.g. yamux GoAway) and the connection should be closed.
        """
        ...

    def open_stream(self) -> int:
        """Open an outbound stream and return its key."""
        ...

    @property
    def can_open_stream(self) -> bool:
        """False while opening one more stream would exceed a backlog bound (e.g. yamux
        streams the peer has not acknowledged yet); True again once the peer catches up."""
        ...

    def send(self, stream_id: int, data: Buffer) -> int:
        """Queue up to ``len(data)`` bytes; return how many the send window allowed."""
        ...

    def send_window(self, stream_id: int) -> int:
        """How many bytes ``send`` would accept now on this stream."""
        ...

    def consumed(self, stream_id: int, size: int) -> bool:
        """The application has read ``size`` bytes of the stream's received data.

        Return True if that queued bytes for the peer (e.g. a window update).
        """
        ...

    def close_stream(self, stream_id: int) -> None:
        """Half-close: we will send no more on this stream."""
        ...

    def reset_stream(self, stream_id: int) -> None:
        """Abort the stream in both directions."""
        ...

    def ping(self) -> int | None:
        """Queue a ping; return its opaque value, or None if the muxer has no ping."""
        ...

    def go_away(self, code: int = 0) -> None:
        """Tell the peer we accept no new streams (and open none)."""
        ...

    def data_to_send(self) -> bytes:
        """Return and forget all bytes queued for the peer."""
        ...

    def release_credit(self) -> None:
        """The connection is gone: give back all credit its streams still hold."""
        ...

    @property
    def has_data_to_send(self) -> bool:
        """True if :meth:`data_to_send` would return bytes."""
        ...
