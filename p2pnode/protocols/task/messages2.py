"""Task protocol 2, ``/p2pnode/task/2.0.0`` (sans-I/O): parts, messages, limits, the codec.

Every message is a uvarint length and a MessagePack map with a ``type`` key; unknown
keys and unknown message types are ignored. See ``docs/task-protocol-2.md``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from p2pnode.errors import DecodeError

PROTOCOL_ID_V2 = "/p2pnode/task/2.0.0"
MAX_MESSAGE_SIZE = 1024 * 1024
MAX_PARTS_PER_MESSAGE = 64
MAX_TOTAL_INPUT = 1 << 30
MAX_BUFFERED_INPUT = 64 * 1024 * 1024
MAX_TASK_ID = 128
MAX_METADATA = 64 * 1024
MAX_JSON_DEPTH = 64
CHUNK_SIZE = 256 * 1024  # bytes per input/output message when data is split

DEFAULT_MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "bytes": "application/octet-stream",
    "json": "application/json",
}


class Part(msgspec.Struct, omit_defaults=True):
    """A piece of input or output: text, bytes with a media type, or JSON-compatible data."""

    type: str
    text: str | None = None
    data: bytes | None = None
    value: Any = None
    media_type: str | None = None

    @classmethod
    def of_text(cls, text: str, media_type: str | None = None) -> Part:
        return cls("text", text=text, media_type=media_type)

    @classmethod
    def of_bytes(cls, data: bytes, media_type: str | None = None) -> Part:
        return cls("bytes", data=bytes(data), media_type=media_type)

    @classmethod
    def of_json(cls, value: Any, media_type: str | None = None) -> Part:
        return cls("json", value=value, media_type=media_type)

    @property
    def media(self) -> str:
        """The media type, or the default of the part's type."""
        return self.media_type or DEFAULT_MEDIA_TYPES.get(self.type, "application/octet-stream")

    @property
    def size(self) -> int:
        """Bytes of content (text as UTF-8; JSON as encoded)."""
        if self.type == "text":
            text = self.text or ""
            return len(text) if text.isascii() else len(text.encode())  # isascii() is O(1)
        if self.type == "bytes":
            return len(self.data or b"")
        return len(_encoder.encode(self.value))

    def as_bytes(self) -> bytes:
        """The content as bytes: text as UTF-8, JSON as compact JSON."""
        if self.type == "bytes":
            return self.data or b""
        if self.type == "text":
            return (self.text or "").encode()
        return msgspec.json.encode(self.value)


class Request(msgspec.Struct, tag_field="type", tag="request", omit_defaults=True):
    id: str
    kind: str = "default"
    input: list[Part] = msgspec.field(default_factory=list)
    more: bool = False
    metadata: dict[str, Any] | None = None
    timeout_ms: int | None = None
    stream: bool = False


class InputChunk(msgspec.Struct, tag_field="type", tag="input", omit_defaults=True):
    part: Part | None = None
    append: bool = False
    end: bool = False


class Cancel(msgspec.Struct, tag_field="type", tag="cancel"):
    pass


class Accepted(msgspec.Struct, tag_field="type", tag="accepted", omit_defaults=True):
    """The task was admitted; its handler starts."""

    id: str = ""


class Progress(msgspec.Struct, tag_field="type", tag="progress", omit_defaults=True):
    """How far a task is (a handler yields these to report progress)."""

    fraction: float | None = None
    message: str | None = None


TaskProgress = Progress  # what a handler yields


class OutputChunk(msgspec.Struct, tag_field="type", tag="output", omit_defaults=True):
    """A piece of output; ``append`` continues the previous output part."""

    part: Part
    append: bool = False


class Completed(msgspec.Struct, tag_field="type", tag="completed", omit_defaults=True):
    """Terminal: the task is done; ``parts`` is output not already sent in OutputChunks."""

    id: str
    parts: list[Part] = msgspec.field(default_factory=list)
    latency_ms: int = 0
    cached: bool = False


class Failed(msgspec.Struct, tag_field="type", tag="failed", omit_defaults=True):
    """Terminal: the task was refused or failed."""

    id: str
    code: str
    message: str
    latency_ms: int | None = None


ClientMessage = Request | InputChunk | Cancel
ServerEvent = Accepted | Progress | OutputChunk | Completed | Failed


class _TypeProbe(msgspec.Struct):
    type: Any = None


_encoder = msgspec.msgpack.Encoder()
_client_decoder = msgspec.msgpack.Decoder(ClientMessage)
_server_decoder = msgspec.msgpack.Decoder(ServerEvent)
_probe = msgspec.msgpack.Decoder(_TypeProbe)
_CLIENT_TYPES = {"request", "input", "cancel"}
_SERVER_TYPES = {"accepted", "progress", "output", "completed", "failed"}


def encode(message: ClientMessage | ServerEvent) -> bytes:
    """MessagePack body of a message (without its length prefix)."""
    return _encoder.encode(message)


# msgspec writes the tag first, then the fields: the ``accepted`` body up to its id
_ACCEPTED_HEAD = (
    b"\x82" + _encoder.encode("type") + _encoder.encode("accepted") + _encoder.encode("id")
)


def accepted_body(task_id: str) -> bytes:
    """``encode(Accepted(task_id))`` without building the message (every task sends one)."""
    if not task_id:
        return _encoder.encode(Accepted())  # an empty id is left out of the map
    return _ACCEPTED_HEAD + _encoder.encode(task_id)


def _bin_header(size: int) -> bytes:
    if size < 0x100:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 0x10000:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


_OUTPUT_HEAD = b"\x83" + _encoder.encode("type") + _encoder.encode("output")
_APPEND_KEY = _encoder.encode("append")
_BYTES_PART_HEAD = _encoder.encode("part")
_TYPE_BYTES = _encoder.encode("type") + _encoder.encode("bytes")
_MEDIA_KEY = _encoder.encode("media_type")
_DATA_KEY = _encoder.encode("data")


def output_chunk_head(data_size: int, append: bool, media_type: str | None) -> bytes:
    """The body of an ``output`` event for a bytes part, up to (not with) its data.

    ``head + data`` is the whole MessagePack body, with the data last, so a large chunk
    is written as it is, never copied into an encoded message.
    """
    return b"".join(
        (
            _OUTPUT_HEAD,
            _APPEND_KEY,
            b"\xc3" if append else b"\xc2",
            _BYTES_PART_HEAD,
            b"\x83" if media_type is not None else b"\x82",
            _TYPE_BYTES,
            (_MEDIA_KEY + _encoder.encode(media_type)) if media_type is not None else b"",
            _DATA_KEY,
            _bin_header(data_size),
        )
    )


def _decode(decoder: Any, known: set[str], body: bytes, side: str) -> Any:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        kind = _type_of(body)
        if isinstance(kind, str) and kind not in known:
            return None  # a newer peer's message: ignored
        raise DecodeError(f"invalid task {side} message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"invalid task {side} message: {exc}") from None
    except RecursionError:
        raise DecodeError(f"invalid task {side} message: nested too deep") from None
    except Exception as exc:  # peer bytes must never crash us
        raise DecodeError(f"invalid task {side} message: {type(exc).__name__}: {exc}") from None


def _type_of(body: bytes) -> Any:
    try:
        return _probe.decode(body).type
    except Exception:
        return None


def decode_client_message(body: bytes) -> ClientMessage | None:
    """A request, input or cancel (checked); None for a message type we do not know."""
    try:
        message = _client_decoder.decode(body)
    except Exception:  # why, or a newer peer's message to ignore
        message = _decode(_client_decoder, _CLIENT_TYPES, body, "client")
    if isinstance(message, Request):
        if not 0 < len(message.id.encode()) <= MAX_TASK_ID:
            raise DecodeError(f"task id must be 1 to {MAX_TASK_ID} bytes")
        if message.timeout_ms is not None and message.timeout_ms <= 0:
            raise DecodeError("timeout_ms must be positive")
        if message.metadata is not None and len(_encoder.encode(message.metadata)) > MAX_METADATA:
            raise DecodeError(f"metadata exceeds {MAX_METADATA} bytes")
        check_parts(message.input)
    elif isinstance(message, InputChunk) and message.part is not None:
        check_parts([message.part])
    return message


def decode_server_event(body: bytes) -> ServerEvent | None:
    """A server event; None for an event type we do not know (ignored)."""
    try:
        return _server_decoder.decode(body)
    except Exception:  # why, or a newer peer's event to ignore
        return _decode(_server_decoder, _SERVER_TYPES, body, "server")  # type: ignore[no-any-return]


def check_parts(parts: list[Part]) -> None:
    """DecodeError unless every part is well formed (a server refuses unknown part types)."""
    if len(parts) > MAX_PARTS_PER_MESSAGE:
        raise DecodeError(f"more than {MAX_PARTS_PER_MESSAGE} parts in one message")
    for part in parts:
        if part.type == "text":
            if part.text is None:
                raise DecodeError("a text part has no text")
        elif part.type == "bytes":
            if part.data is None:
                raise DecodeError("a bytes part has no data")
        elif part.type == "json":
            if _depth(part.value) > MAX_JSON_DEPTH:
                raise DecodeError(f"a json part is nested deeper than {MAX_JSON_DEPTH}")
        else:
            raise DecodeError(f"unknown part type {part.type!r}: use text, bytes or json")


def _depth(value: Any) -> int:
    """Nesting depth of a decoded value, without recursion."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item)
    return deepest


class PartAssembler:
    """Builds parts from pieces, each new or ``append``-ed to the last, joining each part's
    pieces once at the end (appending to bytes one chunk at a time would copy quadratically).
    """

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self._pieces: list[list[Any] | None] = []  # str or bytes pieces; None: not appendable

    def add(self, part: Part, append: bool = False) -> None:
        """Add a piece; DecodeError if it cannot be appended to the part before it."""
        if not append:
            self._parts.append(part)
            piece = part.text if part.type == "text" else part.data
            self._pieces.append(None if piece is None else [piece])
            return
        if not self._parts:
            raise DecodeError("an appended part has no part before it")
        last, pieces = self._parts[-1], self._pieces[-1]
        piece = part.text if part.type == "text" else part.data
        if last.type != part.type or pieces is None or piece is None:
            raise DecodeError(f"cannot append a {part.type} part to a {last.type} part")
        pieces.append(piece)

    @property
    def has_parts(self) -> bool:
        return bool(self._parts)

    def parts(self) -> list[Part]:
        """The parts so far, each with its pieces joined."""
        for part, pieces in zip(self._parts, self._pieces, strict=True):
            if pieces is not None and len(pieces) > 1:
                joined = "".join(pieces) if part.type == "text" else b"".join(pieces)
                if isinstance(joined, str):
                    part.text = joined
                else:
                    part.data = joined
                pieces[:] = [joined]
        return self._parts


def split_part(part: Part, size: int = CHUNK_SIZE) -> list[tuple[Part, bool]]:
    """``part`` as (piece, append) pairs of at most ``size`` bytes each (text split by chars)."""
    if part.type == "bytes" and part.data is not None and len(part.data) > size:
        data = memoryview(part.data)
        return [
            (Part("bytes", data=bytes(data[i : i + size]), media_type=part.media_type), i > 0)
            for i in range(0, len(data), size)
        ]
    if part.type == "text" and part.text is not None and len(part.text) > size // 4:
        step = size // 4  # at most 4 UTF-8 bytes per character
        text = part.text
        return [
            (Part("text", text=text[i : i + step], media_type=part.media_type), i > 0)
            for i in range(0, len(text), step)
        ]
    return [(part, False)]
