"""Misbehaving peers get a clear error, lose only their own connection, and the node serves on."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from p2pnode.errors import HandshakeError, P2PError
from p2pnode.identity import Identity
from p2pnode.multistream import MultistreamDialer, encode_message
from p2pnode.node import ConnectionEvent, Node, NodeConfig
from p2pnode.noise import NoiseHandshake
from p2pnode.transport import TransportConfig, _HandshakeProtocol, _negotiate_security_dialer
from p2pnode.yamux import PROTOCOL_ID as YAMUX_ID

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


async def test_bad_handshake_signature(watched_server: tuple[Node, list]) -> None:
    node, events = watched_server
    forger = ForgingIdentity.from_private_key_protobuf(
        Identity.generate().to_private_key_protobuf()
    )
    client = Node(forger)
    try:
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


async def test_yamux_window_violation_closes_only_that_connection(
    watched_server: tuple[Node, list],
) -> None:
    """A peer that sends more than the window it was granted on a stream nobody reads."""
    node, _ = watched_server
    held = asyncio.Event()

    async def never_reads(stream: object) -> None:
        held.set()
        await asyncio.Event().wait()

    node.set_handler("/test/never-reads", never_reads)
    raw, secure = await secure_raw_connection(node)
    proposal = encode_message("/multistream/1.0.0") + encode_message("/test/never-reads")
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
