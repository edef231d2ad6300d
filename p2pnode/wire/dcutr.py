"""DCUtR (``/libp2p/dcutr``), sans-I/O: the HolePunch message and both roles' state machines.

A relayed connection from peer A to peer B is upgraded to a direct one by a
synchronised TCP simultaneous open (specs ``relay/DCUtR.md``). B, the peer that
*received* the relayed connection, runs :class:`HolePunchInitiator`: it opens the
stream, sends CONNECT with its addresses, times the round trip until A's CONNECT
comes back, sends SYNC and dials A half a round trip later. A runs
:class:`HolePunchResponder`: it answers CONNECT with its own addresses and dials B
the moment SYNC arrives, so both SYNs are under way at about the same time.

The machines take bytes and the time (``now``, seconds on any monotonic clock) and
return :class:`Action` values for the I/O layer to carry out.

Which side is the *security* initiator of the punched connection: both sides called
``connect()``, so neither is the dialer in TCP's sense and they must agree up front.
The spec makes A the client and B the server. go-libp2p (``p2p/protocol/holepunch``)
does the same: A's stream handler dials with the simultaneous-connect flag as client,
B's hole puncher dials as server, and its TCP transport turns "server" into an
inbound-direction upgrade (Noise responder, multistream listener, yamux server).
go-libp2p before v0.41 had the roles the other way round (measured against v0.32.1:
its B dials as client on every attempt, its A as server), so both generations are
met by alternating: our B is server on attempts 1 and 3 and client on attempt 2, our
A (counting the exchanges on one relayed connection) client on 1 and 3 and server on
2. Two p2pnode peers agree on the first attempt; against either go generation one of
the first two attempts has opposite roles.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from p2pnode.errors import DecodeError, LocalProtocolError, MultiaddrError, RemoteProtocolError
from p2pnode.wire.framing import FrameDecoder, encode_frame
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)

PROTOCOL_ID = "/libp2p/dcutr"
MAX_MESSAGE_SIZE = 4 * 1024  # the spec's limit on one encoded message, length prefix excluded
# One attempt and two retries, each with its own CONNECT/SYNC exchange on a new stream
# (spec: the inbound peer retries twice; go-libp2p's maxRetries is 3 attempts in all).
MAX_ATTEMPTS = 3

_FIELD_TYPE = 1
_FIELD_OBS_ADDRS = 2


class MessageType(enum.IntEnum):
    """``HolePunch.Type``."""

    CONNECT = 100
    SYNC = 300


@dataclass(frozen=True, slots=True)
class HolePunch:
    """One DCUtR message: its type and (for CONNECT) binary multiaddrs."""

    type: MessageType
    obs_addrs: tuple[bytes, ...] = ()


class HolePunchError(RemoteProtocolError):
    """The peer broke the DCUtR exchange (wrong message, no address, data after the end)."""


def encode_holepunch(message: HolePunch) -> bytes:
    """The protobuf body of ``message`` (no length prefix)."""
    out = encode_varint_field(_FIELD_TYPE, int(message.type))
    for addr in message.obs_addrs:
        out += encode_bytes_field(_FIELD_OBS_ADDRS, addr)
    return out


def decode_holepunch(data: bytes | bytearray | memoryview) -> HolePunch:
    """Parse a HolePunch body; DecodeError if malformed, oversized or of an unknown type."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(
            f"DCUtR message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}"
        )
    kind: int | None = None
    addrs: list[bytes] = []
    for field, wire_type, value in iter_fields(data):
        if field == _FIELD_TYPE:
            if wire_type != VARINT or not isinstance(value, int):
                raise DecodeError("DCUtR message type is not a varint")
            kind = value
        elif field == _FIELD_OBS_ADDRS:
            if wire_type != LENGTH_DELIMITED or not isinstance(value, bytes):
                raise DecodeError("DCUtR ObsAddrs entry is not length-delimited")
            addrs.append(value)
        # other fields: ignored, as protobuf requires
    if kind is None:
        raise DecodeError("DCUtR message has no type (a required field)")
    try:
        message_type = MessageType(kind)
    except ValueError:
        raise DecodeError(f"unknown DCUtR message type {kind}") from None
    return HolePunch(message_type, tuple(addrs))


def encode_message(message: HolePunch) -> bytes:
    """``message`` as it goes on the stream: length-prefixed."""
    return encode_frame(encode_holepunch(message))


def is_relayed(addr: Multiaddr) -> bool:
    """True for an address through a circuit relay (``/p2p-circuit``)."""
    return any(name == "p2p-circuit" for name, _ in addr.components())


def dialable_addrs(raw: Sequence[bytes]) -> list[Multiaddr]:
    """The addresses of a CONNECT we can dial directly: well formed, plain TCP, not relayed.

    Malformed entries are skipped, not fatal (go-libp2p does the same), and relayed
    ones are of no use for a direct connection.
    """
    out: list[Multiaddr] = []
    for entry in raw:
        try:
            addr = Multiaddr.from_bytes(entry)
        except (MultiaddrError, DecodeError):
            continue
        if not is_relayed(addr) and addr.unsupported_part() is None and addr not in out:
            out.append(addr)
    return out


# -- actions: what the machines ask the I/O layer to do ------------------------------


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Open a new ``/libp2p/dcutr`` stream on the relayed connection, then call
    :meth:`HolePunchInitiator.stream_opened`."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` on the DCUtR stream."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseStream:
    """The exchange on this stream is over: close it."""


@dataclass(frozen=True, slots=True)
class DialAt:
    """Dial the peer at ``addrs`` at time ``when`` (the machine's clock), upgrading the
    connection as the security (Noise/muxer) initiator if ``as_initiator``."""

    addrs: tuple[Multiaddr, ...]
    when: float
    as_initiator: bool
    attempt: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Every attempt failed: keep the relayed connection."""

    attempts: int


Action = OpenStream | Send | CloseStream | DialAt | GiveUp


class State(enum.Enum):
    IDLE = "idle"  # initiator: waiting for a stream to be opened
    AWAIT_CONNECT = "await-connect"
    AWAIT_SYNC = "await-sync"  # responder only
    DIALING = "dialing"  # the exchange is over; the dial is due or under way
    DONE = "done"  # a direct connection was made (or, for the responder, the dial was handed out)
    FAILED = "failed"


def _own_addrs(addrs: Sequence[Multiaddr]) -> tuple[bytes, ...]:
    usable = tuple(dict.fromkeys(a.to_bytes() for a in addrs if not is_relayed(a)))
    if not usable:
        raise LocalProtocolError(
            "no direct address to offer for hole punching; listen on TCP and learn the "
            "observed address (identify) first"
        )
    return usable


class _Machine:
    """What both roles share: the frame decoder and the failure rule."""

    def __init__(self, own_addrs: Sequence[Multiaddr]) -> None:
        self._own = _own_addrs(own_addrs)
        self._decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        self.state = State.IDLE
        self.rtt: float | None = None  # the last round trip measured over the relay
        self.remote_addrs: tuple[Multiaddr, ...] = ()

    def _messages(self, data: bytes | bytearray | memoryview) -> list[HolePunch]:
        if self.state not in (State.AWAIT_CONNECT, State.AWAIT_SYNC):
            self._fail()
            raise HolePunchError(f"DCUtR data received after the exchange ended ({data!r:.40})")
        try:
            return [decode_holepunch(body) for body in self._decoder.receive_data(data)]
        except DecodeError:
            self._fail()
            raise

    def _connect_addrs(self, message: HolePunch) -> tuple[Multiaddr, ...]:
        addrs = tuple(dialable_addrs(message.obs_addrs))
        if not addrs:
            self._fail()
            raise HolePunchError("the peer's CONNECT has no direct TCP address to dial")
        return addrs

    def _unexpected(self, message: HolePunch, wanted: MessageType) -> HolePunchError:
        self._fail()
        return HolePunchError(f"expected a DCUtR {wanted.name}, got {message.type.name}")

    def _fail(self) -> None:
        self.state = State.FAILED

    def stream_ended(self) -> None:
        """The peer closed the stream; HolePunchError if it did so mid-exchange."""
        if self.state in (State.AWAIT_CONNECT, State.AWAIT_SYNC):
            self._fail()
            raise HolePunchError(f"the peer closed the DCUtR stream in state {self.state.value}")


class HolePunchInitiator(_Machine):
    """The role of the peer that received the relayed connection (B); see the module doc.

    ``start()`` asks for a stream; each attempt is one stream with CONNECT, CONNECT,
    SYNC, then a dial half a measured round trip later. The I/O layer reports the
    dial with :meth:`dial_succeeded` or :meth:`dial_failed`; a failed dial starts the
    next attempt at once, up to ``max_attempts``, as go-libp2p's hole puncher does.
    A protocol error (raised as HolePunchError or DecodeError) ends the whole hole
    punch without a retry, as there: the peer is not following the protocol.
    """

    def __init__(self, own_addrs: Sequence[Multiaddr], max_attempts: int = MAX_ATTEMPTS) -> None:
        super().__init__(own_addrs)
        if max_attempts < 1:
            raise LocalProtocolError("a hole punch needs at least one attempt")
        self.max_attempts = max_attempts
        self.attempt = 0
        self._sent_at = 0.0

    def start(self) -> list[Action]:
        """Begin the first attempt."""
        if self.state is not State.IDLE or self.attempt:
            raise LocalProtocolError("this hole punch has already started")
        self.attempt = 1
        return [OpenStream(1)]

    def stream_opened(self, now: float) -> list[Action]:
        """The stream for this attempt is open: send CONNECT and start the round-trip clock."""
        if self.state is not State.IDLE or not self.attempt:
            raise LocalProtocolError(f"no stream was asked for (state {self.state.value})")
        self.state = State.AWAIT_CONNECT
        self._decoder = FrameDecoder(MAX_MESSAGE_SIZE)
        self._sent_at = now
        return [Send(encode_message(HolePunch(MessageType.CONNECT, self._own)))]

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Action]:
        """Bytes from the stream; after the peer's CONNECT: SYNC, close, and the timed dial."""
        for message in self._messages(data):
            if self.state is not State.AWAIT_CONNECT:
                self._fail()
                raise HolePunchError(f"DCUtR {message.type.name} after the peer's CONNECT")
            if message.type is not MessageType.CONNECT:
                raise self._unexpected(message, MessageType.CONNECT)
            self.remote_addrs = self._connect_addrs(message)
            self.rtt = now - self._sent_at
            self.state = State.DIALING
        if self.state is not State.DIALING:
            return []
        if self._decoder.in_message:
            self._fail()
            raise HolePunchError("DCUtR data after the peer's CONNECT")
        assert self.rtt is not None
        return [
            Send(encode_message(HolePunch(MessageType.SYNC))),
            CloseStream(),
            DialAt(
                self.remote_addrs,
                now + self.rtt / 2,
                # see the module docstring: server, then client, then server
                as_initiator=self.attempt % 2 == 0,
                attempt=self.attempt,
            ),
        ]

    def dial_succeeded(self) -> None:
        """The direct connection is up: the hole punch is over."""
        self._expect_dialing()
        self.state = State.DONE

    def dial_failed(self) -> list[Action]:
        """The dial of this attempt failed: the next attempt's stream, or give up."""
        self._expect_dialing()
        if self.attempt >= self.max_attempts:
            self.state = State.FAILED
            return [GiveUp(self.attempt)]
        self.attempt += 1
        self.state = State.IDLE
        return [OpenStream(self.attempt)]

    def _expect_dialing(self) -> None:
        if self.state is not State.DIALING:
            raise LocalProtocolError(f"no dial is under way (state {self.state.value})")


class HolePunchResponder(_Machine):
    """The role of the peer that dialed through the relay (A), for one DCUtR stream.

    Answers CONNECT with our addresses and asks to dial, as the security initiator,
    the moment SYNC arrives. Any other order, or bytes after SYNC, is a HolePunchError.
    """

    def __init__(self, own_addrs: Sequence[Multiaddr], attempt: int = 1) -> None:
        super().__init__(own_addrs)
        self.state = State.AWAIT_CONNECT
        self.attempt = attempt  # the how-many-th exchange on this relayed connection
        self._sent_at = 0.0

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[Action]:
        """Bytes from the stream; the answer to send, or (on SYNC) the dial to make now."""
        actions: list[Action] = []
        for message in self._messages(data):
            if self.state is State.AWAIT_CONNECT:
                if message.type is not MessageType.CONNECT:
                    raise self._unexpected(message, MessageType.CONNECT)
                self.remote_addrs = self._connect_addrs(message)
                self.state = State.AWAIT_SYNC
                self._sent_at = now
                actions.append(Send(encode_message(HolePunch(MessageType.CONNECT, self._own))))
            elif self.state is State.AWAIT_SYNC:
                if message.type is not MessageType.SYNC:
                    raise self._unexpected(message, MessageType.SYNC)
                self.rtt = now - self._sent_at
                self.state = State.DIALING
            else:
                self._fail()
                raise HolePunchError(f"DCUtR {message.type.name} after SYNC")
        if self.state is State.DIALING and self._decoder.in_message:
            self._fail()
            raise HolePunchError("DCUtR data after SYNC")
        if self.state is State.DIALING:
            self.state = State.DONE
            # client on odd attempts, server on even ones (see the module docstring)
            client = self.attempt % 2 == 1
            actions += [CloseStream(), DialAt(self.remote_addrs, now, client, self.attempt)]
        return actions
