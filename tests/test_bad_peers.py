"""Misbehaving peers get a clear error, lose only their own connection, and the node serves on."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from p2pnode.errors import HandshakeError, P2PError
from p2pnode.net.transport import TransportConfig, _HandshakeProtocol, _negotiate_security_dialer
from p2pnode.node import ConnectionEvent, Node, NodeConfig
from p2pnode.protocols.ping import PROTOCOL_ID as PING_ID
from p2pnode.wire.identity import Identity
from p2pnode.wire.mplex import PROTOCOL_ID as MPLEX_ID
from p2pnode.wire.mplex import MplexSession
from p2pnode.wire.multistream import MultistreamDialer, encode_message
from p2pnode.wire.muxer import StreamData, StreamReset
from p2pnode.wire.noise import NoiseHandshake
from p2pnode.wire.varint import encode_uvarint
from p2pnode.wire.yamux import PROTOCOL_ID as YAMUX_ID

from .conftest import LOOPBACK, addr_of, start_node

YAMUX_HEADER = struct.Struct(">BBHII")


@pytest.fixture
async def watched_server() -> AsyncIterator[tuple[Node, list[ConnectionEvent]]]:
    node = await Node.start(Identity.generate(), [LOOPBACK], NodeConfig(handshake_timeout=0.5))
    events: list[ConnectionEvent] = []
    node.on_event(events.append)
    yield node, events
    await node.stop()


async def raw_connect(node: Node) -> _HandshakeProtocol:
    host, port = node.listen_addrs[0].tcp_host_port()
    _, raw = await asyncio.get_running_loop().create_connection(_HandshakeProtocol, host, port)
    return raw


async def read_until_closed(raw: _HandshakeProtocol) -> bytes:
    """Everything the node sends until it closes the connection (bounded in time)."""
    received = b""
    async with asyncio.timeout(5):
        while True:
            try:
                received += await raw.receive()
            except HandshakeError:
                return received


async def assert_still_serves(node: Node) -> None:
    good = await start_node()
    try:
        assert len(await good.ping(addr_of(node), count=2)) == 2
    finally:
        await good.stop()


async def test_garbage_instead_of_multistream(watched_server: tuple[Node, list]) -> None:
    node, events = watched_server
    raw = await raw_connect(node)
    raw.write(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
    await read_until_closed(raw)
    await assert_still_serves(node)
    failures = [e for e in events if e.kind == "handshake_failed"]
    assert failures and "multistream" in (failures[0].error or "")


async def test_wrong_security_protocol_gets_na(watched_server: tuple[Node, list]) -> None:
    node, _ = watched_server
    raw = await raw_connect(node)
    dialer = MultistreamDialer(["/tls/1.0.0"])
    raw.write(dialer.initial_bytes())
    with pytest.raises(P2PError, match="tls"):
        async with asyncio.timeout(5):
            while not dialer.done:
                dialer.receive_data(await raw.receive())
    await assert_still_serves(node)


async def test_truncated_noise_handshake(watched_server: tuple[Node, list]) -> None:
    node, events = watched_server
    raw = await raw_connect(node)
    noise = NoiseHandshake(Identity.generate(), initiator=True)
    first = noise.start()
    raw.write(encode_message("/multistream/1.0.0") + encode_message("/noise") + first[:10])
    assert raw.transport is not None
    raw.transport.write_eof()
    await read_until_closed(raw)
    await assert_still_serves(node)
    assert any(e.kind == "handshake_failed" for e in events)


class ForgingIdentity(Identity):
    """Signs everything with a different key than the one it presents."""

    def sign(self, data: bytes) -> bytes:
        return Identity.generate().sign(data)


@pytest.mark.parametrize("inline", [True, False])
async def test_bad_handshake_signature(watched_server: tuple[Node, list], inline: bool) -> None:
    node, events = watched_server
    forger = ForgingIdentity.from_private_key_protobuf(
        Identity.generate().to_private_key_protobuf()
    )
    client = Node(forger, NodeConfig(inline_muxer_negotiation=inline))
    try:
        if inline:
            # the dialer is done with message 3, the listener refuses it: the connection
            # closes before any stream gets through
            conn = await client.dial(addr_of(node))
            await asyncio.wait_for(conn.wait_closed(), 10)
        else:  # the dialer waits for multistream's answer, which never comes
            with pytest.raises(HandshakeError):
                await client.dial(addr_of(node))
    finally:
        await client.stop()
    await assert_still_serves(node)
    assert any(
        "signature" in (e.error or "").lower() for e in events if e.kind == "handshake_failed"
    )


async def test_silent_peer_is_dropped_after_the_handshake_timeout(
    watched_server: tuple[Node, list],
) -> None:
    node, events = watched_server
    raw = await raw_connect(node)  # and send nothing at all
    await read_until_closed(raw)
    assert any("did not finish" in (e.error or "") for e in events if e.kind == "handshake_failed")
    await assert_still_serves(node)


async def secure_raw_connection(node: Node) -> tuple[_HandshakeProtocol, object]:
    raw = await raw_connect(node)
    config = TransportConfig(identity=Identity.generate(), muxers=(YAMUX_ID,))
    upgraded = await _negotiate_security_dialer(raw, config, node.peer_id)
    raw.write(upgraded.unsent)  # Noise message 3: the caller sends it
    return raw, upgraded.secure


def yamux_frame(kind: int, flags: int, stream_id: int, length: int, payload: bytes = b"") -> bytes:
    return YAMUX_HEADER.pack(0, kind, flags, stream_id, length) + payload


async def expect_goaway_and_close(raw: _HandshakeProtocol, secure: object) -> int:
    data = await read_until_closed(raw)
    plaintext = secure.receive_data(data)  # type: ignore[attr-defined]
    frames = []
    pos = 0
    while pos + YAMUX_HEADER.size <= len(plaintext):
        frame = YAMUX_HEADER.unpack_from(plaintext, pos)
        frames.append(frame)
        pos += YAMUX_HEADER.size + (frame[4] if frame[1] == 0 else 0)  # Data carries a payload
    goaways = [f for f in frames if f[1] == 3]
    assert goaways, f"no GoAway in {plaintext!r}"
    return int(goaways[-1][4])


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(yamux_frame(0, 1, 1, 16 * 1024 * 1024 + 1), id="frame-too-large"),
        pytest.param(yamux_frame(0, 0, 7, 4, b"data"), id="data-on-unknown-stream"),
        pytest.param(yamux_frame(9, 0, 1, 0), id="unknown-frame-type"),
    ],
)
async def test_yamux_violations_close_only_that_connection(
    watched_server: tuple[Node, list], frame: bytes
) -> None:
    node, _ = watched_server
    bystander = await start_node()
    try:
        await bystander.dial(addr_of(node))
        raw, secure = await secure_raw_connection(node)
        raw.write(secure.encrypt(frame))  # type: ignore[attr-defined]
        code = await expect_goaway_and_close(raw, secure)
        assert code == 1  # protocol error
        assert len(await bystander.ping(node.peer_id)) == 1  # the old connection still works
    finally:
        await bystander.stop()
    await assert_still_serves(node)


NEVER_READS_PROPOSAL = encode_message("/multistream/1.0.0") + encode_message("/test/never-reads")


def serve_never_reads(node: Node) -> asyncio.Event:
    """Serve a protocol whose handler never reads; the event is set once a stream arrives."""
    held = asyncio.Event()

    async def never_reads(stream: object) -> None:
        held.set()
        await asyncio.Event().wait()

    node.set_handler("/test/never-reads", never_reads)
    return held


async def test_yamux_window_violation_closes_only_that_connection(
    watched_server: tuple[Node, list],
) -> None:
    """A peer that sends more than the window it was granted on a stream nobody reads."""
    node, _ = watched_server
    held = serve_never_reads(node)
    raw, secure = await secure_raw_connection(node)
    proposal = NEVER_READS_PROPOSAL
    raw.write(
        secure.encrypt(yamux_frame(1, 1, 1, 0) + yamux_frame(0, 0, 1, len(proposal), proposal))
    )  # type: ignore[attr-defined]
    await asyncio.wait_for(held.wait(), 5)
    block = b"\0" * (1 << 20)
    granted = 16 * 1024 * 1024  # what YamuxConfig grants a stream at most
    for _ in range(granted // len(block) + 1):
        raw.write(secure.encrypt(yamux_frame(0, 0, 1, len(block)) + block))  # type: ignore[attr-defined]
    assert await expect_goaway_and_close(raw, secure) == 1
    await assert_still_serves(node)


# -- mplex ------------------------------------------------------------------------------


class RawMplex:
    """Our side of an mplex connection driven by hand: MplexSession frames, raw bytes too."""

    def __init__(self, raw: _HandshakeProtocol, secure: Any) -> None:
        self.raw, self.secure = raw, secure
        self.session = MplexSession(is_initiator=True)
        self.events: list[object] = []

    def send_raw(self, frame: bytes) -> None:
        self.raw.write(self.secure.encrypt(frame))

    def flush(self) -> None:
        self.send_raw(self.session.data_to_send())

    async def until(self, found: Callable[[list[object]], bool]) -> None:
        async with asyncio.timeout(5):
            while not found(self.events):
                self.events += self.session.receive_data(
                    self.secure.receive_data(await self.raw.receive())
                )

    async def ping(self) -> None:
        """One libp2p ping on a new stream of this connection."""
        key = self.session.open_stream()
        payload = bytes(range(32))
        proposal = encode_message("/multistream/1.0.0") + encode_message(PING_ID)
        self.session.send(key, proposal + payload)
        self.flush()
        expected = proposal + payload  # the listener echoes the header, the protocol, the ping

        def echoed(events: list[object]) -> bool:
            data = b"".join(
                e.data for e in events if isinstance(e, StreamData) and e.stream_id == key
            )
            return data == expected

        await self.until(echoed)


async def raw_mplex(node: Node) -> RawMplex:
    raw = await raw_connect(node)
    config = TransportConfig(identity=Identity.generate(), muxers=(MPLEX_ID,))
    upgraded = await _negotiate_security_dialer(raw, config, node.peer_id)
    raw.write(upgraded.unsent)  # Noise message 3: the caller sends it
    assert upgraded.muxer_id == MPLEX_ID
    return RawMplex(raw, upgraded.secure)


def mplex_frame(number: int, flag: int, length: int, payload: bytes = b"") -> bytes:
    return encode_uvarint(number << 3 | flag) + encode_uvarint(length) + payload


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(mplex_frame(0, 7, 0), "unknown mplex flag 7", id="unknown-flag"),
        pytest.param(mplex_frame(0, 2, 2 << 20), "exceeds", id="oversized-length"),
        pytest.param(
            mplex_frame(0, 0, 1, b"0") + mplex_frame(0, 0, 1, b"0"), "twice", id="opened-twice"
        ),
    ],
)
async def test_mplex_violations_close_only_that_connection(
    watched_server: tuple[Node, list[ConnectionEvent]], frame: bytes, reason: str
) -> None:
    node, events = watched_server
    bystander = await Node.start(Identity.generate(), [LOOPBACK], NodeConfig(muxers=("mplex",)))
    try:
        await bystander.dial(addr_of(node))
        peer = await raw_mplex(node)
        await peer.ping()  # the connection works before the violation
        peer.send_raw(frame)
        await read_until_closed(peer.raw)
        assert len(await bystander.ping(node.peer_id)) == 1  # the other connection still works
    finally:
        await bystander.stop()
    closed = [e for e in events if e.kind == "disconnected" and reason in (e.error or "")]
    assert closed, f"no disconnect naming {reason!r} in {events}"
    await assert_still_serves(node)


async def test_mplex_frame_for_unknown_stream_is_ignored(
    watched_server: tuple[Node, list[ConnectionEvent]],
) -> None:
    node, _ = watched_server
    peer = await raw_mplex(node)
    peer.send_raw(mplex_frame(41, 2, 4, b"data") + mplex_frame(42, 4, 0) + mplex_frame(43, 6, 0))
    await peer.ping()  # the same connection goes on working


async def test_mplex_stream_over_its_buffer_is_reset_alone(
    watched_server: tuple[Node, list[ConnectionEvent]],
) -> None:
    """mplex has no flow control: a stream nobody reads is reset past its buffer limit."""
    node, _ = watched_server
    held = serve_never_reads(node)
    peer = await raw_mplex(node)
    key = peer.session.open_stream()
    proposal = NEVER_READS_PROPOSAL
    peer.session.send(key, proposal)
    peer.flush()
    await asyncio.wait_for(held.wait(), 5)
    block = b"\0" * (1 << 20)
    for _ in range(5):  # 5 MiB > the 4 MiB default buffer
        peer.session.send(key, block)
        peer.flush()
    await peer.until(lambda events: any(isinstance(e, StreamReset) for e in events))
    await peer.ping()  # only that stream was reset
