"""Circuit relay v2 messages and the relay's bookkeeping (sans-I/O).

Two protocols carry these messages, each as uvarint-prefixed protobuf of at most
:data:`MAX_MESSAGE_SIZE` bytes: *hop* (a client and the relay: RESERVE a slot, CONNECT
to a peer holding one) and *stop* (the relay and the peer a circuit ends at). A
reservation comes with a voucher: a signed envelope in which the relay vouches that it
relays to the reserving peer until the expiry.

:class:`RelayBook` is the relay's side of the rules: who holds a reservation, how many
circuits each peer has open, what each circuit may carry. It takes ``now`` as an
argument and does no I/O.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from p2pnode.errors import DecodeError, IdentityError, RecordError
from p2pnode.wire.envelope import Envelope
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)

HOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL = "/libp2p/circuit/relay/0.2.0/stop"
MAX_MESSAGE_SIZE = 4096  # the spec's bound on one hop or stop message
VOUCHER_DOMAIN = "libp2p-relay-rsvp"
VOUCHER_PAYLOAD_TYPE = b"\x03\x02"


class HopType(enum.IntEnum):
    RESERVE = 0
    CONNECT = 1
    STATUS = 2


class StopType(enum.IntEnum):
    CONNECT = 0
    STATUS = 1


class Status(enum.IntEnum):
    """Why a hop or stop request was answered as it was."""

    UNUSED = 0
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


@dataclass(frozen=True, slots=True)
class Limit:
    """What a relayed circuit may carry: seconds, and bytes in each direction (None: no cap)."""

    duration: int | None = None
    data: int | None = None

    def describe(self) -> str:
        parts = []
        if self.duration is not None:
            parts.append(f"{self.duration} s")
        if self.data is not None:
            parts.append(f"{self.data // 1024} KiB per direction")
        return " and ".join(parts) or "no limit"


@dataclass(frozen=True, slots=True)
class RelayPeer:
    """A peer named in a hop or stop message, with the addresses given for it."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...] = ()


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted slot: its expiry (Unix seconds), the relay's addresses and the voucher."""

    expire: int
    addrs: tuple[Multiaddr, ...] = ()
    voucher: bytes | None = None


@dataclass(frozen=True, slots=True)
class HopMessage:
    type: HopType
    peer: RelayPeer | None = None
    reservation: Reservation | None = None
    limit: Limit | None = None
    status: Status | None = None


@dataclass(frozen=True, slots=True)
class StopMessage:
    type: StopType
    peer: RelayPeer | None = None
    limit: Limit | None = None
    status: Status | None = None


# -- encoding --------------------------------------------------------------------------


def _encode_peer(peer: RelayPeer) -> bytes:
    out = bytearray(encode_bytes_field(1, peer.peer_id.to_bytes()))
    for addr in peer.addrs:
        out += encode_bytes_field(2, addr.to_bytes())
    return bytes(out)


def _encode_reservation(reservation: Reservation) -> bytes:
    out = bytearray(encode_varint_field(1, reservation.expire))
    for addr in reservation.addrs:
        out += encode_bytes_field(2, addr.to_bytes())
    if reservation.voucher is not None:
        out += encode_bytes_field(3, reservation.voucher)
    return bytes(out)


def _encode_limit(limit: Limit) -> bytes:
    out = b""
    if limit.duration is not None:
        out += encode_varint_field(1, limit.duration)
    if limit.data is not None:
        out += encode_varint_field(2, limit.data)
    return out


def encode_hop(message: HopMessage) -> bytes:
    """The protobuf bytes of a hop message (without the length prefix)."""
    out = bytearray(encode_varint_field(1, message.type))
    if message.peer is not None:
        out += encode_bytes_field(2, _encode_peer(message.peer))
    if message.reservation is not None:
        out += encode_bytes_field(3, _encode_reservation(message.reservation))
    if message.limit is not None:
        out += encode_bytes_field(4, _encode_limit(message.limit))
    if message.status is not None:
        out += encode_varint_field(5, message.status)
    return bytes(out)


def encode_stop(message: StopMessage) -> bytes:
    """The protobuf bytes of a stop message (without the length prefix)."""
    out = bytearray(encode_varint_field(1, message.type))
    if message.peer is not None:
        out += encode_bytes_field(2, _encode_peer(message.peer))
    if message.limit is not None:
        out += encode_bytes_field(3, _encode_limit(message.limit))
    if message.status is not None:
        out += encode_varint_field(4, message.status)
    return bytes(out)


# -- decoding --------------------------------------------------------------------------


def _fields(data: bytes, what: str) -> dict[int, list[int | bytes]]:
    """Fields by number; wire types checked against ``_EXPECTED`` for ``what``."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"relay {what} of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    fields: dict[int, list[int | bytes]] = {}
    expected = _EXPECTED[what]
    for number, wire_type, value in iter_fields(data):
        want = expected.get(number)
        if want is None:
            continue  # unknown field: ignored, as protobuf requires
        if wire_type != want:
            raise DecodeError(f"relay {what} field {number} has wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


_B, _V = LENGTH_DELIMITED, VARINT
_EXPECTED: dict[str, dict[int, int]] = {
    "hop message": {1: _V, 2: _B, 3: _B, 4: _B, 5: _V},
    "stop message": {1: _V, 2: _B, 3: _B, 4: _V},
    "peer": {1: _B, 2: _B},
    "reservation": {1: _V, 2: _B, 3: _B},
    "limit": {1: _V, 2: _V},
    "voucher": {1: _B, 2: _B, 3: _V},
}


def _last_int(fields: dict[int, list[int | bytes]], number: int) -> int | None:
    values = fields.get(number)
    if not values:
        return None
    value = values[-1]
    assert isinstance(value, int)
    return value


def _last_bytes(fields: dict[int, list[int | bytes]], number: int) -> bytes | None:
    values = fields.get(number)
    if not values:
        return None
    value = values[-1]
    assert isinstance(value, bytes)
    return value


def _peer_id(raw: bytes, what: str) -> PeerId:
    try:
        return PeerId.from_bytes(raw)
    except (IdentityError, ValueError) as exc:
        raise DecodeError(f"relay {what} carries an invalid peer id: {exc}") from None


def _addrs(values: list[int | bytes]) -> tuple[Multiaddr, ...]:
    addrs = []
    for raw in values:
        assert isinstance(raw, bytes)
        try:
            addrs.append(Multiaddr.from_bytes(raw))
        except (DecodeError, ValueError):
            continue  # an address we cannot read is skipped, not fatal (as go and js do)
    return tuple(addrs)


def _decode_peer(data: bytes) -> RelayPeer:
    fields = _fields(data, "peer")
    raw = _last_bytes(fields, 1)
    if raw is None:
        raise DecodeError("relay peer has no id")
    return RelayPeer(_peer_id(raw, "peer"), _addrs(fields.get(2, [])))


def _decode_reservation(data: bytes) -> Reservation:
    fields = _fields(data, "reservation")
    expire = _last_int(fields, 1)
    if expire is None:
        raise DecodeError("relay reservation has no expiry")
    return Reservation(expire, _addrs(fields.get(2, [])), _last_bytes(fields, 3))


def _decode_limit(data: bytes) -> Limit:
    fields = _fields(data, "limit")
    return Limit(_last_int(fields, 1), _last_int(fields, 2))


def _status(value: int | None) -> Status | None:
    if value is None:
        return None
    try:
        return Status(value)
    except ValueError:
        raise DecodeError(f"relay message has unknown status {value}") from None


def decode_hop(data: bytes) -> HopMessage:
    """Parse a hop message; DecodeError when it is malformed."""
    fields = _fields(data, "hop message")
    kind = _last_int(fields, 1)
    if kind is None or kind not in HopType._value2member_map_:
        raise DecodeError(f"hop message has {'no' if kind is None else 'unknown'} type")
    peer, reservation, limit = (_last_bytes(fields, n) for n in (2, 3, 4))
    return HopMessage(
        HopType(kind),
        None if peer is None else _decode_peer(peer),
        None if reservation is None else _decode_reservation(reservation),
        None if limit is None else _decode_limit(limit),
        _status(_last_int(fields, 5)),
    )


def decode_stop(data: bytes) -> StopMessage:
    """Parse a stop message; DecodeError when it is malformed."""
    fields = _fields(data, "stop message")
    kind = _last_int(fields, 1)
    if kind is None or kind not in StopType._value2member_map_:
        raise DecodeError(f"stop message has {'no' if kind is None else 'unknown'} type")
    peer, limit = _last_bytes(fields, 2), _last_bytes(fields, 3)
    return StopMessage(
        StopType(kind),
        None if peer is None else _decode_peer(peer),
        None if limit is None else _decode_limit(limit),
        _status(_last_int(fields, 4)),
    )


# -- vouchers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Voucher:
    """The relay's signed promise: it relays to ``peer`` until ``expiration`` (Unix s)."""

    relay: PeerId
    peer: PeerId
    expiration: int

    def seal(self, identity: Identity) -> bytes:
        """The voucher as a signed envelope, by the relay's ``identity``."""
        payload = (
            encode_bytes_field(1, self.relay.to_bytes())
            + encode_bytes_field(2, self.peer.to_bytes())
            + encode_varint_field(3, self.expiration)
        )
        return Envelope.seal(identity, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE, payload).to_bytes()

    @classmethod
    def open(cls, data: bytes) -> Voucher:
        """Verify and parse a voucher envelope; RecordError when its signer is not the relay."""
        envelope = Envelope.open(data, VOUCHER_DOMAIN, VOUCHER_PAYLOAD_TYPE)
        fields = _fields(envelope.payload, "voucher")
        relay, peer = _last_bytes(fields, 1), _last_bytes(fields, 2)
        expiration = _last_int(fields, 3)
        if relay is None or peer is None or expiration is None:
            raise DecodeError("relay voucher lacks the relay, the peer or the expiration")
        voucher = cls(_peer_id(relay, "voucher"), _peer_id(peer, "voucher"), expiration)
        if envelope.signer != voucher.relay:
            raise RecordError(
                f"relay voucher names relay {voucher.relay} but is signed by {envelope.signer}"
            )
        return voucher


# -- the relay's rules -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What a relay grants; the defaults are go-libp2p's relay defaults."""

    reservation_ttl: int = 3600  # seconds a reservation lasts before it must be renewed
    max_reservations: int = 128  # peers holding a slot at once
    max_reservations_per_ip: int = 8
    max_circuits: int = 16  # open circuits to or from one peer
    circuit: Limit = field(default_factory=lambda: Limit(duration=120, data=128 * 1024))
    buffer_size: int = 2048  # bytes read at a time by each direction of a circuit


@dataclass(slots=True)
class _Slot:
    expire: float
    ip: str | None


class RelayBook:
    """Reservations and open circuits of a relay; answers are :class:`Status` codes."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._slots: dict[PeerId, _Slot] = {}
        self._circuits: Counter[PeerId] = Counter()

    def reservations(self, now: float) -> list[PeerId]:
        """Peers holding a live reservation."""
        self._expire(now)
        return list(self._slots)

    def circuits(self, peer: PeerId) -> int:
        return self._circuits[peer]

    def reserve(self, peer: PeerId, ip: str | None, now: float) -> Status:
        """Grant (or renew) ``peer``'s slot, seen at ``ip``, unless a limit says no."""
        self._expire(now)
        limits = self.limits
        if peer not in self._slots:
            if len(self._slots) >= limits.max_reservations:
                return Status.RESERVATION_REFUSED
            same_ip = sum(1 for slot in self._slots.values() if ip is not None and slot.ip == ip)
            if same_ip >= limits.max_reservations_per_ip:
                return Status.RESERVATION_REFUSED
        self._slots[peer] = _Slot(now + limits.reservation_ttl, ip)
        return Status.OK

    def expiry(self, peer: PeerId) -> float | None:
        slot = self._slots.get(peer)
        return None if slot is None else slot.expire

    def release(self, peer: PeerId) -> None:
        """Drop ``peer``'s reservation (it disconnected)."""
        self._slots.pop(peer, None)

    def open_circuit(self, source: PeerId, target: PeerId, now: float) -> Status:
        """May ``source`` open a circuit to ``target``? Counted when the answer is OK."""
        self._expire(now)
        if target not in self._slots:
            return Status.NO_RESERVATION
        limit = self.limits.max_circuits
        if self._circuits[source] >= limit or self._circuits[target] >= limit:
            return Status.RESOURCE_LIMIT_EXCEEDED
        self._circuits[source] += 1
        self._circuits[target] += 1
        return Status.OK

    def close_circuit(self, source: PeerId, target: PeerId) -> None:
        for peer in (source, target):
            self._circuits[peer] -= 1
            if self._circuits[peer] <= 0:
                del self._circuits[peer]

    def _expire(self, now: float) -> None:
        for peer in [p for p, slot in self._slots.items() if slot.expire <= now]:
            del self._slots[peer]
