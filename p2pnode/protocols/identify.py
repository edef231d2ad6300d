"""The libp2p identify protocol (``/ipfs/id/1.0.0``): a peer describes itself.

The listener writes one varint-length-prefixed protobuf ``Identify`` message and
closes the stream. Encoding and decoding here are pure functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from p2pnode.errors import DecodeError, P2PError
from p2pnode.net.framed import read_frame
from p2pnode.net.stream import Stream
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import PeerId, PublicKey
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import LENGTH_DELIMITED, encode_bytes_field, iter_fields

log = logging.getLogger(__name__)

PROTOCOL_ID = "/ipfs/id/1.0.0"
PROTOCOL_VERSION = "ipfs/0.1.0"
MAX_MESSAGE_SIZE = 64 * 1024

_PUBLIC_KEY, _LISTEN_ADDRS, _PROTOCOLS, _OBSERVED_ADDR = 1, 2, 3, 4
_PROTOCOL_VERSION, _AGENT_VERSION = 5, 6


@dataclass(slots=True)
class IdentifyInfo:
    """What a peer says about itself. Addresses that failed to parse are left out."""

    public_key: PublicKey | None = None
    listen_addrs: list[Multiaddr] = field(default_factory=list)
    observed_addr: Multiaddr | None = None
    protocols: list[str] = field(default_factory=list)
    protocol_version: str = ""
    agent_version: str = ""

    @property
    def peer_id(self) -> PeerId | None:
        """The PeerId of ``public_key``, if one was sent."""
        return self.public_key.peer_id() if self.public_key is not None else None


def encode_identify(info: IdentifyInfo) -> bytes:
    """Encode ``info`` as a protobuf ``Identify`` message (without length prefix)."""
    parts: list[bytes] = []
    if info.protocol_version:
        parts.append(encode_bytes_field(_PROTOCOL_VERSION, info.protocol_version))
    if info.agent_version:
        parts.append(encode_bytes_field(_AGENT_VERSION, info.agent_version))
    if info.public_key is not None:
        parts.append(encode_bytes_field(_PUBLIC_KEY, info.public_key.to_protobuf()))
    parts.extend(encode_bytes_field(_LISTEN_ADDRS, a.to_bytes()) for a in info.listen_addrs)
    if info.observed_addr is not None:
        parts.append(encode_bytes_field(_OBSERVED_ADDR, info.observed_addr.to_bytes()))
    parts.extend(encode_bytes_field(_PROTOCOLS, p) for p in info.protocols)
    return b"".join(parts)


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise DecodeError(f"identify {what} is not UTF-8") from None


def _addr(value: bytes) -> Multiaddr | None:
    try:
        return Multiaddr.from_bytes(value)
    except P2PError as exc:
        log.debug("ignoring an identify address we cannot parse: %s", exc)
        return None


def decode_identify(data: bytes) -> IdentifyInfo:
    """Decode a protobuf ``Identify`` message; unknown fields are ignored."""
    info = IdentifyInfo()
    for number, wire_type, value in iter_fields(data):
        if wire_type != LENGTH_DELIMITED or not isinstance(value, bytes):
            continue
        if number == _PUBLIC_KEY:
            info.public_key = PublicKey.from_protobuf(value)
        elif number == _LISTEN_ADDRS:
            if (addr := _addr(value)) is not None:
                info.listen_addrs.append(addr)
        elif number == _OBSERVED_ADDR:
            info.observed_addr = _addr(value)
        elif number == _PROTOCOLS:
            info.protocols.append(_text(value, "protocol"))
        elif number == _PROTOCOL_VERSION:
            info.protocol_version = _text(value, "protocolVersion")
        elif number == _AGENT_VERSION:
            info.agent_version = _text(value, "agentVersion")
    return info


async def send_identify(stream: Stream, info: IdentifyInfo) -> None:
    """Listener side: write our description and close the stream."""
    await stream.write(encode_frame(encode_identify(info)))
    await stream.close()


async def receive_identify(stream: Stream) -> IdentifyInfo:
    """Dialer side: read the peer's description and check its key matches the connection."""
    message = await read_frame(stream, MAX_MESSAGE_SIZE)
    await stream.close()
    if message is None:
        raise DecodeError("peer closed the identify stream without sending a message")
    info = decode_identify(message)
    if info.peer_id is not None and info.peer_id != stream.remote_peer:
        raise DecodeError(
            f"identify public key belongs to {info.peer_id}, "
            f"but the connection is authenticated as {stream.remote_peer}"
        )
    return info
