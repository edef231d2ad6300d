"""The Kademlia DHT RPC message (libp2p specs ``kad-dht/README.md``), encoded by hand.

``Message {type = 1; key = 2; record = 3; closerPeers = 8; providerPeers = 9}``, with
``Record {key = 1; value = 2; timeReceived = 5}`` and ``Peer {id = 1; addrs = 2;
connection = 3}``. Field 10 (``clusterLevelRaw``) and the removed Record fields 3 and 4
are read and ignored, like every unknown field. Fields at their proto3 default are
not written, and an absent ``type`` means ``PUT_VALUE`` (its value 0).

Peers are decoded leniently, as go-libp2p-kad-dht does: a Peer whose id is not a valid
PeerId is dropped (the rest of the message is kept; ``Message.skipped_peers`` counts
them), and so is each address that is not a valid binary multiaddr. Structural damage
(truncation, bad varints, wrong wire types, bad UTF-8) is a DecodeError for the whole
message.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from enum import IntEnum

from p2pnode.errors import DecodeError, IdentityError, MultiaddrError
from p2pnode.wire.framing import FrameDecoder
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)
from p2pnode.wire.varint import encode_uvarint

PROTOCOL_ID = "/ipfs/kad/1.0.0"

# Inbound cap. go-libp2p accepts 4 MiB, rust-libp2p 16 KiB; honest answers (20 peers
# with their addresses, or one record) fit well inside 64 KiB.
MAX_MESSAGE_SIZE = 64 * 1024
# What we aim to stay under when sending, so that rust-libp2p peers accept it.
SEND_SIZE_TARGET = 16 * 1024
# Addresses we send per peer (go nodes often advertise 10 to 30; the first few suffice).
SEND_ADDRS_PER_PEER = 8
# Decoding keeps at most this many peers per list and addresses per peer; the rest are
# dropped (a 64 KiB message could otherwise make thousands of tiny objects).
MAX_DECODED_PEERS = 256
MAX_DECODED_ADDRS = 64


class MessageType(IntEnum):
    """``Message.MessageType``."""

    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(IntEnum):
    """``Message.ConnectionType``: the sender's view of its connection to a peer."""

    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@dataclass(frozen=True, slots=True)
class Record:
    """A DHT value record; ``time_received`` is an RFC 3339 text set by the receiver."""

    key: bytes = b""
    value: bytes = b""
    time_received: str = ""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer as messages carry it: its id, addresses and the sender's connection to it."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...] = ()
    connection: ConnectionType = ConnectionType.NOT_CONNECTED


@dataclass(frozen=True, slots=True)
class Message:
    """One DHT request or response."""

    type: MessageType
    key: bytes = b""
    record: Record | None = None
    closer_peers: tuple[PeerInfo, ...] = ()
    provider_peers: tuple[PeerInfo, ...] = ()
    skipped_peers: int = 0  # decoding only: peers dropped for an invalid id or over the cap


def _encode_record(record: Record) -> bytes:
    out = bytearray()
    if record.key:
        out += encode_bytes_field(1, record.key)
    if record.value:
        out += encode_bytes_field(2, record.value)
    if record.time_received:
        out += encode_bytes_field(5, record.time_received)
    return bytes(out)


def _encode_peer(peer: PeerInfo) -> bytes:
    out = bytearray(encode_bytes_field(1, peer.peer_id.to_bytes()))
    for addr in peer.addrs:
        out += encode_bytes_field(2, addr.to_bytes())
    if peer.connection:
        out += encode_varint_field(3, int(peer.connection))
    return bytes(out)


def encode_message(msg: Message) -> bytes:
    """The protobuf encoding of ``msg`` (without a length prefix)."""
    out = bytearray()
    if msg.type:
        out += encode_varint_field(1, int(msg.type))
    if msg.key:
        out += encode_bytes_field(2, msg.key)
    if msg.record is not None:
        out += encode_bytes_field(3, _encode_record(msg.record))
    for peer in msg.closer_peers:
        out += encode_bytes_field(8, _encode_peer(peer))
    for peer in msg.provider_peers:
        out += encode_bytes_field(9, _encode_peer(peer))
    return bytes(out)


def _expect(wire_type: int, wanted: int, where: str) -> None:
    if wire_type != wanted:
        raise DecodeError(f"{where} has wire type {wire_type}, expected {wanted}")


def _decode_record(data: bytes) -> Record:
    key = value = b""
    time_received = ""
    for number, wire_type, raw in iter_fields(data):
        if number in (1, 2, 5):
            _expect(wire_type, LENGTH_DELIMITED, f"Record field {number}")
            assert isinstance(raw, bytes)
            if number == 1:
                key = raw
            elif number == 2:
                value = raw
            else:
                try:
                    time_received = raw.decode()
                except UnicodeDecodeError:
                    raise DecodeError("Record.timeReceived is not UTF-8") from None
    return Record(key, value, time_received)


def _decode_peer(data: bytes) -> PeerInfo | None:
    """The peer, or None when its id is missing or not a PeerId."""
    raw_id: bytes | None = None
    addrs: list[Multiaddr] = []
    connection = ConnectionType.NOT_CONNECTED
    for number, wire_type, raw in iter_fields(data):
        if number == 1:
            _expect(wire_type, LENGTH_DELIMITED, "Peer.id")
            assert isinstance(raw, bytes)
            raw_id = raw
        elif number == 2:
            _expect(wire_type, LENGTH_DELIMITED, "Peer.addrs")
            assert isinstance(raw, bytes)
            if len(addrs) < MAX_DECODED_ADDRS:
                with contextlib.suppress(MultiaddrError):  # one bad address spoils no peer
                    addrs.append(Multiaddr.from_bytes(raw))
        elif number == 3:
            _expect(wire_type, VARINT, "Peer.connection")
            assert isinstance(raw, int)
            try:
                connection = ConnectionType(raw)
            except ValueError:
                connection = ConnectionType.NOT_CONNECTED  # advisory only
    if raw_id is None:
        return None
    try:
        peer_id = PeerId.from_bytes(raw_id)
    except IdentityError:
        return None
    return PeerInfo(peer_id, tuple(addrs), connection)


def decode_message(data: bytes | bytearray | memoryview) -> Message:
    """Decode one message (no length prefix); DecodeError when it is malformed."""
    msg_type = MessageType.PUT_VALUE
    key = b""
    record: Record | None = None
    closer: list[PeerInfo] = []
    providers: list[PeerInfo] = []
    skipped = 0
    for number, wire_type, raw in iter_fields(data):
        if number == 1:
            _expect(wire_type, VARINT, "Message.type")
            assert isinstance(raw, int)
            try:
                msg_type = MessageType(raw)
            except ValueError:
                raise DecodeError(f"unknown DHT message type {raw}") from None
        elif number == 2:
            _expect(wire_type, LENGTH_DELIMITED, "Message.key")
            assert isinstance(raw, bytes)
            key = raw
        elif number == 3:
            _expect(wire_type, LENGTH_DELIMITED, "Message.record")
            assert isinstance(raw, bytes)
            record = _decode_record(raw)
        elif number in (8, 9):
            _expect(wire_type, LENGTH_DELIMITED, f"Message field {number}")
            assert isinstance(raw, bytes)
            peer = _decode_peer(raw)
            target = closer if number == 8 else providers
            if peer is None or len(target) >= MAX_DECODED_PEERS:
                skipped += 1
            else:
                target.append(peer)
    return Message(msg_type, key, record, tuple(closer), tuple(providers), skipped)


def frame_message(msg: Message) -> bytes:
    """``msg`` encoded and prefixed with its length, ready for a stream."""
    body = encode_message(msg)
    return encode_uvarint(len(body)) + body


def fit_for_sending(
    msg: Message, max_size: int = SEND_SIZE_TARGET, addrs_per_peer: int = SEND_ADDRS_PER_PEER
) -> Message:
    """``msg`` with at most ``addrs_per_peer`` addresses per peer and, if it is still
    over ``max_size`` bytes, without its last closer peers (the farthest, when sorted).

    Provider peers and the record are never dropped: the answer would be wrong.
    """

    def trim(peers: tuple[PeerInfo, ...]) -> tuple[PeerInfo, ...]:
        return tuple(
            replace(p, addrs=p.addrs[:addrs_per_peer]) if len(p.addrs) > addrs_per_peer else p
            for p in peers
        )

    msg = replace(msg, closer_peers=trim(msg.closer_peers), provider_peers=trim(msg.provider_peers))
    size = len(encode_message(msg))
    closer = list(msg.closer_peers)
    while size > max_size and closer:
        dropped = closer.pop()
        size -= len(encode_bytes_field(8, _encode_peer(dropped)))
    return replace(msg, closer_peers=tuple(closer))


class MessageReader:
    """Sans-I/O reader: feed stream bytes, get the complete messages in them.

    The length prefix is checked against ``max_size`` as soon as it is complete, so
    an oversized message is refused (DecodeError) before its body is buffered.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self._frames = FrameDecoder(max_size)

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a complete message."""
        return self._frames.buffered

    @property
    def in_message(self) -> bool:
        """True when part of a message has arrived (the stream ending now truncates it)."""
        return self._frames.in_message

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed bytes; return every message they complete, in order."""
        return [decode_message(frame) for frame in self._frames.receive_data(data)]
