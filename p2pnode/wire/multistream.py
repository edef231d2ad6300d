"""multistream-select 1.0 (sans-I/O): agree on a protocol for a connection or a stream.

Each message is a varint length, then a UTF-8 line ending in ``\\n`` (counted in
the length). Both sides first send the header ``/multistream/1.0.0``; the dialer
proposes protocols one at a time and the listener echoes the one it accepts or
answers ``na``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from p2pnode.errors import DecodeError, ProtocolNotSupportedError
from p2pnode.wire.varint import decode_uvarint, encode_uvarint

PROTOCOL_HEADER = "/multistream/1.0.0"
NOT_AVAILABLE = "na"
LIST = "ls"
MAX_MESSAGE_SIZE = 1024
MAX_PROPOSALS = 32


def encode_message(line: str) -> bytes:
    """One multistream message: varint length, the line, a newline."""
    raw = line.encode() + b"\n"
    return encode_uvarint(len(raw)) + raw


_HEADER = encode_message(PROTOCOL_HEADER)
_HEADER_SIZE = len(_HEADER)
_NA = encode_message(NOT_AVAILABLE)


def _check_header(message: str) -> None:
    if message != PROTOCOL_HEADER:
        raise DecodeError(
            f"peer does not speak multistream-select 1.0 (got {message[:64]!r} as header)"
        )


class _Negotiation:
    """What both sides share: the received bytes cut into messages, the outcome, the
    bytes after it."""

    # defaults on the class: one negotiation per stream sets only what changes
    _header_seen = False
    _leftover = b""
    selected: str | None = None

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def done(self) -> bool:
        """True once a protocol was agreed."""
        return self.selected is not None

    def leftover(self) -> bytes:
        """Bytes received after the agreement; they belong to the selected protocol."""
        return self._leftover

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.selected is not None:
            raise DecodeError("negotiation already finished")
        buffer = self._buffer
        buffer += data
        if not self._header_seen and buffer.startswith(_HEADER):  # at once, unparsed
            del buffer[:_HEADER_SIZE]
            self._header_seen = True

    def _next_message(self) -> str | None:
        buffer = self._buffer
        if buffer and buffer[0] < 0x80:  # a one-byte length: most messages
            size, start = buffer[0], 1
        else:
            size, start = _long_length(buffer)
            if not start:
                return None
        if size > MAX_MESSAGE_SIZE:
            raise DecodeError(
                f"multistream message of {size} bytes exceeds {MAX_MESSAGE_SIZE}: "
                "the peer does not speak multistream-select"
            )
        end = start + size
        if len(buffer) < end:
            return None
        if size == 0 or buffer[end - 1] != 0x0A:
            raise DecodeError("multistream message does not end with a newline")
        raw = bytes(buffer[start : end - 1])
        del buffer[:end]
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise DecodeError("multistream message is not UTF-8") from None

    def _select(self, protocol: str) -> None:
        self.selected = protocol
        self._leftover = bytes(self._buffer)
        self._buffer.clear()


def _long_length(buffer: bytearray) -> tuple[int, int]:
    """A message's length prefix and its size; (0, 0) while it is incomplete."""
    try:
        header = decode_uvarint(buffer)
    except DecodeError as exc:
        raise DecodeError(
            f"peer does not speak multistream-select: bad length prefix ({exc})"
        ) from None
    if header is None:
        if len(buffer) >= 2:  # a valid length (< MAX_MESSAGE_SIZE) takes at most 2 bytes
            raise DecodeError("multistream length prefix is too long")
        return 0, 0
    return header


class MultistreamDialer(_Negotiation):
    """The side that proposes protocols, in order of preference.

    With ``optimistic=True`` (one protocol only) the caller may send application
    data right after :meth:`initial_bytes` without waiting; a refusal then raises.
    """

    def __init__(self, protocols: Sequence[str], *, optimistic: bool = False) -> None:
        if not protocols:
            raise ValueError("offer at least one protocol")
        if optimistic and len(protocols) != 1:
            raise ValueError("optimistic negotiation needs exactly one protocol")
        super().__init__()
        self._protocols = list(protocols)
        self._optimistic = optimistic
        self._index = 0

    def initial_bytes(self) -> bytes:
        """The header and the first proposal, to send in one write."""
        return _HEADER + encode_message(self._protocols[0])

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the listener's bytes; return what to send next (the next proposal, or b"")."""
        self._feed(data)
        out = b""
        while (message := self._next_message()) is not None:
            if not self._header_seen:
                _check_header(message)
                self._header_seen = True
                continue
            proposed = self._protocols[self._index]
            if message == proposed:
                self._select(proposed)
                break
            if message != NOT_AVAILABLE:
                raise DecodeError(f"unexpected multistream answer {message[:64]!r} to {proposed}")
            self._index += 1
            if self._optimistic or self._index == len(self._protocols):
                raise ProtocolNotSupportedError(
                    f"peer supports none of {', '.join(self._protocols)}"
                )
            out += encode_message(self._protocols[self._index])
        return out


class MultistreamListener(_Negotiation):
    """The side that accepts one of the dialer's proposals."""

    _header_sent = False
    _refusals = 0
    _listing: Sequence[str] = ()

    def __init__(self, supported: Callable[[str], bool] | Collection[str]) -> None:
        self._buffer = bytearray()  # all of _Negotiation.__init__, without a call per stream
        if callable(supported):
            self._supports = supported
        else:
            self._listing = sorted(supported)
            self._supports = set(supported).__contains__

    def initial_bytes(self) -> bytes:
        """Our header, for callers that want to send it before the dialer's arrives."""
        self._header_sent = True
        return _HEADER

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the dialer's bytes; return our answers."""
        self._feed(data)
        out = bytearray()
        if self._header_seen and not self._header_sent:
            out += _HEADER
            self._header_sent = True
        while (message := self._next_message()) is not None:
            if not self._header_seen:
                _check_header(message)
                self._header_seen = True
                if not self._header_sent:
                    out += _HEADER
                    self._header_sent = True
                continue
            if message == LIST:
                listing = b"".join(encode_message(p) for p in self._listing) + b"\n"
                out += encode_uvarint(len(listing)) + listing
            elif self._supports(message):
                out += encode_message(message)
                self._select(message)
                break
            else:
                self._refusals += 1
                if self._refusals > MAX_PROPOSALS:
                    raise DecodeError(f"peer made more than {MAX_PROPOSALS} refused proposals")
                out += _NA
        return bytes(out)
