"""Task protocol 2 state machines (sans-I/O): bytes in, checked messages out, for each side.

``ServerSession`` turns what a client sends into a request, input pieces, the input's
end and cancels, enforcing their order and the input limits; ``ClientSession`` turns what
a server sends into events, enforcing accepted-first and exactly one terminal event.
Neither touches a socket: the drivers in ``server2`` and ``client2`` feed them.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pnode.errors import DecodeError
from p2pnode.protocols.task.messages2 import (
    MAX_MESSAGE_SIZE,
    MAX_TOTAL_INPUT,
    Accepted,
    Cancel,
    ClientMessage,
    Completed,
    Failed,
    OutputChunk,
    Part,
    Request,
    ServerEvent,
    accepted_body,
    decode_client_message,
    decode_server_event,
    encode,
)
from p2pnode.wire.framing import FrameDecoder
from p2pnode.wire.varint import encode_uvarint


class InputTooLargeError(DecodeError):
    """The client's input went beyond the server's total input limit (``too_large``)."""


@dataclass(slots=True)
class InputPiece:
    """A piece of input: a new part, or (``append``) the continuation of the last one."""

    part: Part
    append: bool


class InputEnd:
    """The client's input is complete."""


def frame(message: ClientMessage | ServerEvent) -> bytes:
    """A message as it goes on the wire: uvarint length, then the MessagePack body."""
    body = encode(message)
    return encode_uvarint(len(body)) + body


def accepted_frame(task_id: str) -> bytes:
    """``frame(Accepted(task_id))``, without building the message (every task sends one)."""
    body = accepted_body(task_id)
    return encode_uvarint(len(body)) + body


ClientEvent = Request | InputPiece | InputEnd | Cancel


class ServerSession:
    """The server's view of one task stream.

    ``receive_data`` returns, in order: the ``Request`` (once), then ``InputPiece``s and
    one ``InputEnd`` (at once when the request has ``more`` false), and any ``Cancel``.
    A protocol violation raises DecodeError (``bad_request``); input beyond
    ``max_total_input`` raises InputTooLargeError; an oversized message raises
    MessageTooLargeError (``too_large``).
    """

    def __init__(
        self, max_message_size: int = MAX_MESSAGE_SIZE, max_total_input: int = MAX_TOTAL_INPUT
    ) -> None:
        self._frames = FrameDecoder(max_message_size)
        self.max_total_input = max_total_input
        self.request: Request | None = None
        self.input_done = False
        self.input_bytes = 0
        self.cancelled = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held."""
        return self._frames.buffered

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        events: list[ClientEvent] = []
        for body in self._frames.receive_data(data):
            message = decode_client_message(body)
            if message is not None:
                self._accept(message, events)
        return events

    def receive_eof(self) -> None:
        """The client closed its write side: DecodeError unless its input was complete."""
        if self.request is None:
            raise DecodeError("the stream ended before a whole request arrived")
        if not self.input_done:
            raise DecodeError("the stream ended before the input did (no input with end: true)")

    def _accept(self, message: ClientMessage, events: list[ClientEvent]) -> None:
        if isinstance(message, Request):  # (the common message first)
            if self.request is not None:
                raise DecodeError("a second request on the same stream: one task per stream")
            self.request = message
            events.append(message)
            size = self.input_bytes
            for part in message.input:
                size += part.size
                events.append(InputPiece(part, False))
            self._count(size)
            if not message.more:
                self.input_done = True
                events.append(InputEnd())
            return
        if isinstance(message, Cancel):
            if self.request is None:
                raise DecodeError("cancel before the request")
            if not self.cancelled:  # idempotent: the first one counts
                self.cancelled = True
                events.append(message)
            return
        if self.request is None:
            raise DecodeError("the first message must be a request")
        if self.input_done:
            return  # after the input is complete, only cancel means something
        if message.part is not None:
            self._count(self.input_bytes + message.part.size)
            events.append(InputPiece(message.part, message.append))
        if message.end:
            self.input_done = True
            events.append(InputEnd())

    def _count(self, input_bytes: int) -> None:
        self.input_bytes = input_bytes
        if input_bytes > self.max_total_input:
            raise InputTooLargeError(f"the input exceeds {self.max_total_input} bytes")


class ClientSession:
    """The client's view of one task stream: checked events, then the terminal one.

    DecodeError for events out of order: progress or output before ``accepted``, any
    event after the terminal one, a ``completed`` for another task id, an output part
    appended to nothing or to a part of another type.
    """

    def __init__(self, task_id: str, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.task_id = task_id
        self._frames = FrameDecoder(max_message_size)
        self.accepted = False
        self.terminal: Completed | Failed | None = None
        self._last_output: str | None = None  # type of the last output part

    @property
    def done(self) -> bool:
        return self.terminal is not None

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        events: list[ServerEvent] = []
        for body in self._frames.receive_data(data):
            event = decode_server_event(body)
            if event is not None:
                self._check(event)
                events.append(event)
        return events

    def receive_eof(self) -> None:
        if self.terminal is None:
            raise DecodeError(f"task {self.task_id}: the peer closed the stream without answering")

    def _check(self, event: ServerEvent) -> None:
        if self.terminal is not None:
            raise DecodeError(
                f"task {self.task_id}: the peer sent {type(event).__name__.lower()} after "
                "the terminal event"
            )
        if isinstance(event, Completed):  # (the common events first)
            if event.id != self.task_id:
                raise DecodeError(f"task {self.task_id}: the peer answered for task {event.id!r}")
            self.terminal = event
            return
        if isinstance(event, Accepted):
            if self.accepted:
                raise DecodeError(f"task {self.task_id}: accepted twice")
            self.accepted = True
            return
        if isinstance(event, Failed):  # may come first: a refusal ("" when it had no id)
            if event.id not in (self.task_id, ""):
                raise DecodeError(f"task {self.task_id}: the peer answered for task {event.id!r}")
            self.terminal = event
            return
        if not self.accepted:
            raise DecodeError(
                f"task {self.task_id}: the peer sent {type(event).__name__.lower()} "
                "before accepting the task"
            )
        if isinstance(event, OutputChunk):
            if event.append and self._last_output != event.part.type:
                raise DecodeError(
                    f"task {self.task_id}: an output {event.part.type} part appended to "
                    f"{self._last_output or 'nothing'}"
                )
            self._last_output = event.part.type
