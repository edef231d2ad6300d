"""Wire compatibility with js-libp2p, both directions, over yamux and over mplex."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from collections.abc import AsyncIterator

import pytest

from p2pnode.net.stream import Stream
from p2pnode.node import Node, NodeConfig
from p2pnode.wire.identity import Identity, PeerId

from .jspeer import JsListener, js_dial, start_js_listener

pytestmark = pytest.mark.interop

ECHO = "/p2pnode/echo/1.0.0"
BULK = "/p2pnode/bulk/1.0.0"
BULK_HEADER = struct.Struct(">QB")
SIZE_32MIB = 32 * 1024 * 1024
MUXERS = ["yamux", "mplex"]
MUXER_IDS = {"yamux": "/yamux/1.0.0", "mplex": "/mplex/6.7.0"}


def pattern(size: int) -> bytes:
    """The bulk protocol's deterministic content: byte i is (i * 31 + 7) & 0xff."""
    period = bytes((i * 31 + 7) & 0xFF for i in range(256))
    return (period * (size // 256 + 1))[:size]


async def echo_handler(stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.close()


async def bulk_handler(stream: Stream) -> None:
    size, mode = BULK_HEADER.unpack(await stream.readexactly(BULK_HEADER.size))
    if mode == 0:
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            chunk = await stream.read(remaining)
            if not chunk:
                raise AssertionError("bulk sender stopped early")
            digest.update(chunk)
            remaining -= len(chunk)
        await stream.write(digest.digest())
    else:
        data = memoryview(pattern(size))
        for offset in range(0, size, 1 << 20):
            await stream.write(data[offset : offset + (1 << 20)])
    await stream.close()


async def start_p2pnode(muxer: str) -> Node:
    node = await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=(muxer,))
    )
    node.set_handler(ECHO, echo_handler)
    node.set_handler(BULK, bulk_handler)
    return node


@pytest.fixture(params=MUXERS)
async def js_listener(request: pytest.FixtureRequest) -> AsyncIterator[tuple[JsListener, str]]:
    listener = await start_js_listener("--muxer", request.param)
    yield listener, request.param
    await listener.stop()


@pytest.fixture(params=MUXERS)
async def py_listener(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Node, str]]:
    node = await start_p2pnode(request.param)
    yield node, request.param
    await node.stop()


def full_addr(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


# -- p2pnode dials js-libp2p ---------------------------------------------------------


async def test_p2pnode_pings_and_identifies_js(js_listener: tuple[JsListener, str]) -> None:
    js, muxer = js_listener
    client = await start_p2pnode(muxer)
    try:
        conn = await client.dial(js.addr)
        assert str(conn.remote_peer) == js.peer_id
        assert muxer in conn.muxer_protocol
        rtts = await client.ping(conn.remote_peer, count=5)
        assert len(rtts) == 5
        info = await client.identify(conn.remote_peer)
        assert info.peer_id == PeerId.from_string(js.peer_id)
        assert info.agent_version.startswith("js-libp2p-interop")
        assert "/ipfs/ping/1.0.0" in info.protocols and ECHO in info.protocols
        assert any(str(a.with_peer_id(info.peer_id)) == js.addr for a in info.listen_addrs)
        assert info.observed_addr is not None
        assert info.observed_addr.value_for("ip4") == "127.0.0.1"
        # js identifies us too, automatically, and must read our fields correctly.
        seen = await js.next_event("identify")
        assert seen["peer_id"] == str(client.peer_id)
        assert seen["agent_version"].startswith("p2pnode/")
        assert seen["public_key_matches"] is True
        assert "/ipfs/id/1.0.0" in seen["protocols"]
    finally:
        await client.stop()


async def test_p2pnode_runs_32_concurrent_streams_to_js(
    js_listener: tuple[JsListener, str],
) -> None:
    js, muxer = js_listener
    client = await start_p2pnode(muxer)
    try:
        await client.dial(js.addr)

        async def one() -> None:
            payload = os.urandom(64 * 1024)
            stream = await client.new_stream(PeerId.from_string(js.peer_id), [ECHO])
            await stream.write(payload)
            await stream.close_write()
            assert await stream.read_until_eof(1 << 20) == payload

        await asyncio.gather(*(one() for _ in range(32)))
        assert len(client.connections()) == 1
    finally:
        await client.stop()


async def test_p2pnode_sends_and_receives_32_mib_with_js(
    js_listener: tuple[JsListener, str],
) -> None:
    js, muxer = js_listener
    client = await start_p2pnode(muxer)
    peer = PeerId.from_string(js.peer_id)
    try:
        await client.dial(js.addr)
        payload = os.urandom(SIZE_32MIB)
        stream = await client.new_stream(peer, [BULK])
        await stream.write(BULK_HEADER.pack(SIZE_32MIB, 0))
        view = memoryview(payload)
        for offset in range(0, SIZE_32MIB, 1 << 20):
            await stream.write(view[offset : offset + (1 << 20)])
        assert await stream.readexactly(32) == hashlib.sha256(payload).digest()
        await stream.close()

        stream = await client.new_stream(peer, [BULK])
        await stream.write(BULK_HEADER.pack(SIZE_32MIB, 1))
        await stream.close_write()
        received = await stream.read_until_eof(SIZE_32MIB)
        assert received == pattern(SIZE_32MIB)
    finally:
        await client.stop()


# -- js-libp2p dials p2pnode ------------------------------------------------------------


async def test_js_pings_and_identifies_p2pnode(py_listener: tuple[Node, str]) -> None:
    node, muxer = py_listener
    result = await js_dial(full_addr(node), "ping", "--count", "5", "--muxer", muxer)
    assert len(result["rtts_ms"]) == 5
    info = await js_dial(full_addr(node), "identify", "--muxer", muxer)
    assert info["peer_id"] == str(node.peer_id)
    assert info["agent_version"].startswith("p2pnode/")
    assert info["protocol_version"] == "ipfs/0.1.0"
    assert info["public_key_matches"] is True
    assert {"/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", ECHO} <= set(info["protocols"])
    assert str(node.listen_addrs[0]) in [a.split("/p2p/")[0] for a in info["listen_addrs"]]
    assert info["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")


async def test_js_runs_32_concurrent_streams_to_p2pnode(py_listener: tuple[Node, str]) -> None:
    node, muxer = py_listener
    result = await js_dial(
        full_addr(node), "echo", "--size", "65536", "--streams", "32", "--muxer", muxer
    )
    assert result == {"event": "echo", "streams": 32, "ok": True, "muxer": MUXER_IDS[muxer]}


@pytest.mark.parametrize("action", ["bulk-send", "bulk-recv"])
async def test_js_transfers_32_mib_with_p2pnode(py_listener: tuple[Node, str], action: str) -> None:
    node, muxer = py_listener
    result = await js_dial(full_addr(node), action, "--size", str(SIZE_32MIB), "--muxer", muxer)
    assert result["ok"] is True and result["bytes"] == SIZE_32MIB
