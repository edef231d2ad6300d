"""AutoNAT v1 (``/libp2p/autonat/1.0.0``), sans-I/O: messages, the server's policy, the
client's verdict.

A node asks a peer to dial it back at its addresses; the peer answers with a
``DialResponse``. Three pieces live here, none of them touching a socket or a clock
(times are passed in):

- the protobuf ``Message`` codec (field numbers and enum values from the spec,
  ``autonat/autonat-v1.md`` in libp2p/specs);
- :class:`DialBackPolicy`, which decides whether and where a server dials back, so it
  cannot be made to attack a third party (RFC 3489 section 12.1.1);
- :class:`ReachabilityTracker`, which turns the answers a client collects into
  "public", "private" or "unknown" with a confidence counter.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from p2pnode.errors import DecodeError, IdentityError, MultiaddrError
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)

# A Dial carries a PeerId and a few addresses, a response one address and a short
# text: well under 1 KiB in practice. 4 KiB leaves room for a node with many
# addresses and is the limit go-libp2p reads with (maxMsgSize in p2p/host/autonat/svc.go),
# so what it sends we accept and what we send it accepts.
MAX_MESSAGE_SIZE = 4096


class MessageType(IntEnum):
    """``Message.MessageType``."""

    DIAL = 0
    DIAL_RESPONSE = 1


class ResponseStatus(IntEnum):
    """``Message.ResponseStatus``."""

    OK = 0
    E_DIAL_ERROR = 100
    E_DIAL_REFUSED = 101
    E_BAD_REQUEST = 200
    E_INTERNAL_ERROR = 300


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """``Message.PeerInfo``: who wants to be dialed, and where (addresses in binary form).

    Addresses stay bytes here: one the receiver cannot parse is skipped by the policy,
    not a reason to reject the whole message.
    """

    id: bytes | None = None
    addrs: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Dial:
    """``Message.Dial``."""

    peer: PeerInfo | None = None


@dataclass(frozen=True, slots=True)
class DialResponse:
    """``Message.DialResponse``; ``addr`` is the address that was dialed (binary form)."""

    status: ResponseStatus | None = None
    status_text: str | None = None
    addr: bytes | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """``Message``: a DIAL request or a DIAL_RESPONSE."""

    type: MessageType | None = None
    dial: Dial | None = None
    dial_response: DialResponse | None = None


# -- encoding ------------------------------------------------------------------------


def _encode_peer_info(info: PeerInfo) -> bytes:
    out = bytearray()
    if info.id is not None:
        out += encode_bytes_field(1, info.id)
    for addr in info.addrs:
        out += encode_bytes_field(2, addr)
    return bytes(out)


def _encode_dial_response(response: DialResponse) -> bytes:
    out = bytearray()
    if response.status is not None:
        out += encode_varint_field(1, response.status)
    if response.status_text is not None:
        out += encode_bytes_field(2, response.status_text)
    if response.addr is not None:
        out += encode_bytes_field(3, response.addr)
    return bytes(out)


def encode_message(message: Message) -> bytes:
    """The protobuf encoding of ``message`` (without the length prefix)."""
    out = bytearray()
    if message.type is not None:
        out += encode_varint_field(1, message.type)
    if message.dial is not None:
        dial = (
            b""
            if message.dial.peer is None
            else encode_bytes_field(1, _encode_peer_info(message.dial.peer))
        )
        out += encode_bytes_field(2, dial)
    if message.dial_response is not None:
        out += encode_bytes_field(3, _encode_dial_response(message.dial_response))
    return bytes(out)


def dial_request(peer_id: PeerId, addrs: Sequence[Multiaddr]) -> bytes:
    """An encoded DIAL asking to be dialed at ``addrs``, as many as fit the size limit."""
    kept: tuple[bytes, ...] = ()
    encoded = encode_message(_dial_message(peer_id, kept))
    for addr in addrs:
        grown = encode_message(_dial_message(peer_id, (*kept, addr.to_bytes())))
        if len(grown) > MAX_MESSAGE_SIZE:
            break
        kept, encoded = (*kept, addr.to_bytes()), grown
    return encoded


def _dial_message(peer_id: PeerId, addrs: tuple[bytes, ...]) -> Message:
    return Message(MessageType.DIAL, dial=Dial(PeerInfo(peer_id.to_bytes(), addrs)))


def dial_response(
    status: ResponseStatus, text: str | None = None, addr: Multiaddr | None = None
) -> bytes:
    """An encoded DIAL_RESPONSE."""
    raw = None if addr is None else addr.to_bytes()
    return encode_message(
        Message(MessageType.DIAL_RESPONSE, dial_response=DialResponse(status, text, raw))
    )


# -- decoding ------------------------------------------------------------------------
# Unknown fields are skipped (protobuf rules); a known field with the wrong wire type,
# or an enum value the spec does not define, is a DecodeError: proto2 would quietly
# drop an unknown status and read it as the default, OK, which a client must not believe.
# A singular field seen twice keeps its last value.


def _expect(wire_type: int, wanted: int, what: str) -> None:
    if wire_type != wanted:
        raise DecodeError(f"autonat {what} has protobuf wire type {wire_type}, not {wanted}")


def _bytes(value: int | bytes) -> bytes:
    assert isinstance(value, bytes)
    return value


def _int(value: int | bytes) -> int:
    assert isinstance(value, int)
    return value


def _decode_peer_info(data: bytes) -> PeerInfo:
    peer_id: bytes | None = None
    addrs: list[bytes] = []
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            _expect(wire_type, LENGTH_DELIMITED, "PeerInfo.id")
            peer_id = _bytes(value)
        elif number == 2:
            _expect(wire_type, LENGTH_DELIMITED, "PeerInfo.addrs")
            addrs.append(_bytes(value))
    return PeerInfo(peer_id, tuple(addrs))


def _decode_dial(data: bytes) -> Dial:
    peer: PeerInfo | None = None
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            _expect(wire_type, LENGTH_DELIMITED, "Dial.peer")
            peer = _decode_peer_info(_bytes(value))
    return Dial(peer)


def _decode_dial_response(data: bytes) -> DialResponse:
    status: ResponseStatus | None = None
    text: str | None = None
    addr: bytes | None = None
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            _expect(wire_type, VARINT, "DialResponse.status")
            code = _int(value)
            try:
                status = ResponseStatus(code)
            except ValueError:
                raise DecodeError(f"unknown autonat response status {code}") from None
        elif number == 2:
            _expect(wire_type, LENGTH_DELIMITED, "DialResponse.statusText")
            try:
                text = _bytes(value).decode()
            except UnicodeDecodeError:
                raise DecodeError("autonat statusText is not UTF-8") from None
        elif number == 3:
            _expect(wire_type, LENGTH_DELIMITED, "DialResponse.addr")
            addr = _bytes(value)
    return DialResponse(status, text, addr)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode one ``Message``; DecodeError if it is malformed or over MAX_MESSAGE_SIZE."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(
            f"autonat message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}"
        )
    kind: MessageType | None = None
    dial: Dial | None = None
    response: DialResponse | None = None
    for number, wire_type, value in iter_fields(data):
        if number == 1:
            _expect(wire_type, VARINT, "Message.type")
            code = _int(value)
            try:
                kind = MessageType(code)
            except ValueError:
                raise DecodeError(f"unknown autonat message type {code}") from None
        elif number == 2:
            _expect(wire_type, LENGTH_DELIMITED, "Message.dial")
            dial = _decode_dial(_bytes(value))
        elif number == 3:
            _expect(wire_type, LENGTH_DELIMITED, "Message.dialResponse")
            response = _decode_dial_response(_bytes(value))
    return Message(kind, dial, response)


# -- the server's policy -------------------------------------------------------------

# Defaults follow go-libp2p's AutoNAT service (p2p/host/autonat/options.go): it dials at
# most 16 addresses per request, helps one peer at most 3 times and all peers together
# at most 30 times per period, and that period is one minute (go clears its counters
# every minute plus up to 15 s of jitter; a sliding window needs no jitter to stop peers
# from synchronising on the reset). go also gives a dial-back 15 s (dialTimeout); see
# the driver, p2pnode.protocols.autonat.
MAX_DIAL_ADDRS = 16
PEER_MAX_REQUESTS = 3
GLOBAL_MAX_REQUESTS = 30
RATE_PERIOD = 60.0  # seconds


@dataclass(frozen=True, slots=True)
class DialBack:
    """The policy's yes: dial ``peer`` back at ``addrs`` (no ``/p2p`` part; at least one)."""

    peer: PeerId
    addrs: tuple[Multiaddr, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """The policy's no: answer with ``status`` and ``text`` without dialing."""

    status: ResponseStatus
    text: str


def _normal_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d, seen by a dual-stack socket
    return ip


def _ip_of(addr: Multiaddr) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    components = addr.components()
    if not components or components[0][0] not in ("ip4", "ip6"):
        return None
    value = components[0][1]
    return None if value is None else _normal_ip(value)


def is_relayed(addr: Multiaddr) -> bool:
    """True for an address through a circuit relay (it has a ``/p2p-circuit`` part)."""
    return any(name == "p2p-circuit" for name, _ in addr.components())


def observed_ip(addr: Multiaddr) -> str | None:
    """The IP of ``addr`` when it starts with ``/ip4`` or ``/ip6`` (a connection's remote end)."""
    ip = _ip_of(addr)
    return None if ip is None else str(ip)


class DialBackPolicy:
    """Decides, for each DIAL a server receives, whether to dial back and where.

    The spec's rules: dial only addresses at the IP the requester was observed at, so
    nobody can aim our dials at a third party; hence never over a relayed connection,
    where that IP is unknown, and never to a ``/p2p-circuit`` address. Beyond the spec,
    as go-libp2p does: the PeerInfo id, if given, must be the requester's; at most
    ``max_addrs`` addresses are dialed; requests are rate limited per peer and in total,
    counting only those that lead to a dial. ``allow_private`` (off by default, as in
    go) permits dialing back private, loopback and link-local IPs: such a dial says
    nothing about reachability from the Internet. ``dialable`` can drop addresses this
    node has no transport for, before they count against ``max_addrs``.
    """

    def __init__(
        self,
        *,
        max_addrs: int = MAX_DIAL_ADDRS,
        peer_max: int = PEER_MAX_REQUESTS,
        global_max: int = GLOBAL_MAX_REQUESTS,
        period: float = RATE_PERIOD,
        allow_private: bool = False,
        dialable: Callable[[Multiaddr], bool] | None = None,
    ) -> None:
        if max_addrs < 1 or peer_max < 1 or global_max < 1 or period <= 0:
            raise ValueError("autonat policy limits must be positive")
        self.max_addrs = max_addrs
        self.peer_max = peer_max
        self.global_max = global_max
        self.period = period
        self.allow_private = allow_private
        self._dialable = dialable
        # dial-backs granted within the last period, oldest first: bounded by global_max
        self._granted: deque[tuple[float, PeerId]] = deque()
        self._per_peer: dict[PeerId, int] = {}

    def decide(
        self,
        requester: PeerId,
        observed: str | None,
        relayed: bool,
        peer: PeerInfo | None,
        now: float,
    ) -> DialBack | Refusal:
        """Judge a DIAL from ``requester``, observed at IP ``observed`` (None if unknown) on
        a connection that is ``relayed`` or not, asking for ``peer``; ``now`` in seconds."""
        if relayed:
            return Refusal(ResponseStatus.E_DIAL_REFUSED, "refusing a request over a relay")
        if peer is None:
            return Refusal(ResponseStatus.E_BAD_REQUEST, "missing peer info")
        if peer.id is not None:
            try:
                claimed = PeerId.from_bytes(peer.id)
            except (IdentityError, DecodeError, ValueError):
                return Refusal(ResponseStatus.E_BAD_REQUEST, "bad peer id")
            if claimed != requester:
                return Refusal(ResponseStatus.E_BAD_REQUEST, "peer id mismatch")
        ip = None if observed is None else _normal_ip(observed)
        if ip is None:
            return Refusal(ResponseStatus.E_DIAL_REFUSED, "cannot tell the requester's IP")
        if not self.allow_private and not ip.is_global:
            return Refusal(ResponseStatus.E_DIAL_REFUSED, "refusing to dial a non-public IP")
        addrs = self._addresses(requester, ip, peer.addrs)
        if not addrs:
            return Refusal(ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")
        if not self._admit(requester, now):
            return Refusal(ResponseStatus.E_DIAL_REFUSED, "too many dials")
        return DialBack(requester, tuple(addrs))

    def _addresses(
        self,
        requester: PeerId,
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
        raw_addrs: Sequence[bytes],
    ) -> list[Multiaddr]:
        chosen: list[Multiaddr] = []
        for raw in raw_addrs:
            try:
                addr = Multiaddr.from_bytes(raw)
                named = addr.peer_id
            except (MultiaddrError, IdentityError, DecodeError):
                continue
            if named is not None and named != requester:
                continue
            if _ip_of(addr) != ip or is_relayed(addr):
                continue
            addr = addr.without_peer_id()
            if addr in chosen or (self._dialable is not None and not self._dialable(addr)):
                continue
            chosen.append(addr)
            if len(chosen) == self.max_addrs:
                break
        return chosen

    def _admit(self, peer: PeerId, now: float) -> bool:
        self._expire(now)
        count = self._per_peer.get(peer, 0)
        if count >= self.peer_max or len(self._granted) >= self.global_max:
            return False
        self._granted.append((now, peer))
        self._per_peer[peer] = count + 1
        return True

    def _expire(self, now: float) -> None:
        horizon = now - self.period
        granted = self._granted
        while granted and granted[0][0] <= horizon:
            _, peer = granted.popleft()
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]


# -- the client's verdict ------------------------------------------------------------


class Reachability(StrEnum):
    """What a node concludes about itself from AutoNAT answers."""

    PUBLIC = "public"
    PRIVATE = "private"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One peer's answer to our DIAL; ``status`` None when no answer came (the stream
    failed, timed out or carried garbage), with the reason in ``text``."""

    peer: PeerId
    status: ResponseStatus | None
    text: str = ""
    addr: Multiaddr | None = None


# go-libp2p's ambient AutoNAT (p2p/host/autonat/autonat.go) counts up to 3.
MAX_CONFIDENCE = 3


@dataclass(slots=True)
class ReachabilityTracker:
    """Reachability from a sequence of probe results, with go-libp2p's confidence rules.

    OK means "public", E_DIAL_ERROR "private", E_DIAL_REFUSED nothing (the peer would
    not help; ask another), anything else (or no answer) "unknown". An observation that
    agrees with the current state raises the confidence, up to ``max_confidence``. One
    that disagrees first wears the confidence down and flips the state only when it is
    zero, except that a successful dial-back flips to public at once: it proves the
    node reachable, while failures may have other causes. A flip resets the confidence
    to zero. ``public_addr`` is the address last confirmed dialable while public.
    """

    max_confidence: int = MAX_CONFIDENCE
    reachability: Reachability = Reachability.UNKNOWN
    confidence: int = 0
    public_addr: Multiaddr | None = None

    @staticmethod
    def observation(result: ProbeResult) -> Reachability | None:
        """What ``result`` says about us; None when it says nothing (a refusal)."""
        if result.status is ResponseStatus.OK:
            return Reachability.PUBLIC
        if result.status is ResponseStatus.E_DIAL_ERROR:
            return Reachability.PRIVATE
        if result.status is ResponseStatus.E_DIAL_REFUSED:
            return None
        return Reachability.UNKNOWN

    @property
    def confident(self) -> bool:
        """True when the state is known and the confidence is at its maximum."""
        return self.reachability is not Reachability.UNKNOWN and (
            self.confidence >= self.max_confidence
        )

    def observe(self, result: ProbeResult) -> Reachability | None:
        """Feed one result; the new reachability if it changed, else None."""
        seen = self.observation(result)
        if seen is None:
            return None
        before = self.reachability
        if seen is Reachability.PUBLIC:
            if before is Reachability.PUBLIC:
                self.confidence = min(self.confidence + 1, self.max_confidence)
            else:
                self.reachability, self.confidence = Reachability.PUBLIC, 0
            if result.addr is not None:
                self.public_addr = result.addr
        elif seen is before and seen is Reachability.PRIVATE:
            self.confidence = min(self.confidence + 1, self.max_confidence)
        elif self.confidence > 0:  # unknown answers only ever wear confidence down
            self.confidence -= 1
        else:
            self.reachability = seen
        if self.reachability is not Reachability.PUBLIC:
            self.public_addr = None
        return self.reachability if self.reachability is not before else None
