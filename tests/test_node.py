"""End-to-end behaviour of two in-process nodes on loopback: dial, streams, ping, identify."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from p2pnode.errors import (
    ConnectionClosedError,
    DialError,
    PeerIdMismatchError,
    ProtocolNotSupportedError,
    StreamResetError,
)
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.wire.identity import Identity

from .conftest import addr_of, inbound_connection, start_node

ECHO = "/test/echo/1.0.0"


async def echo_handler(stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.close()


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_dial_ping_and_identify(muxer: str) -> None:
    server = await start_node(muxers=(muxer,))
    client = await start_node(muxers=(muxer,))
    try:
        conn = await client.dial(addr_of(server))
        assert conn.remote_peer == server.peer_id
        assert conn.muxer_protocol.startswith(f"/{muxer}/")
        rtts = await client.ping(server.peer_id, count=3)
        assert len(rtts) == 3 and all(r > 0 for r in rtts)
        info = await client.identify(server.peer_id)
        assert info.peer_id == server.peer_id
        assert info.agent_version.startswith("p2pnode/")
        assert "/ipfs/ping/1.0.0" in info.protocols
        assert server.listen_addrs[0] in info.listen_addrs
        assert info.observed_addr is not None
        assert info.observed_addr.value_for("ip4") == "127.0.0.1"
    finally:
        await client.stop()
        await server.stop()


async def test_dial_reuses_the_open_connection(server: Node, client: Node) -> None:
    first = await client.dial(addr_of(server))
    second = await client.dial(addr_of(server))
    assert first is second
    concurrent = await asyncio.gather(*(client.dial(addr_of(server)) for _ in range(5)))
    assert all(c is first for c in concurrent)
    assert len(client.connections(server.peer_id)) == 1


async def test_dialing_with_the_wrong_peer_id_fails(server: Node, client: Node) -> None:
    impostor = Identity.generate().peer_id
    addr = server.listen_addrs[0].with_peer_id(impostor)
    with pytest.raises(PeerIdMismatchError, match=str(impostor)):
        await client.dial(addr)
    assert client.connections() == []


async def test_unreachable_address_is_a_dial_error(client: Node) -> None:
    with pytest.raises(DialError, match="could not connect"):
        await client.dial("/ip4/127.0.0.1/tcp/1")


async def test_unsupported_protocol_is_refused(server: Node, client: Node) -> None:
    with pytest.raises(ProtocolNotSupportedError):
        await client.new_stream(addr_of(server), ["/nobody/speaks/this"])
    assert await client.ping(server.peer_id)


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_32_concurrent_streams(muxer: str) -> None:
    server = await start_node(muxers=(muxer,))
    client = await start_node(muxers=(muxer,))
    server.set_handler(ECHO, echo_handler)
    try:
        await client.dial(addr_of(server))

        async def one(i: int) -> bytes:
            payload = os.urandom(10_000 + i)
            stream = await client.new_stream(server.peer_id, [ECHO])
            await stream.write(payload)
            await stream.close_write()
            echoed = await stream.read_until_eof(1 << 20)
            assert echoed == payload
            return echoed

        results = await asyncio.gather(*(one(i) for i in range(32)))
        assert len(results) == 32
        assert len(client.connections()) == 1
    finally:
        await client.stop()
        await server.stop()


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_large_transfer_each_way_is_intact(muxer: str) -> None:
    """8 MiB each way through one stream: exercises yamux flow control."""
    server = await start_node(muxers=(muxer,))
    client = await start_node(muxers=(muxer,))
    size = 8 * 1024 * 1024
    received_digest: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def sink_then_source(stream: Stream) -> None:
        digest = hashlib.sha256()
        total = 0
        while chunk := await stream.read():
            digest.update(chunk)
            total += len(chunk)
        received_digest.set_result(digest.hexdigest())
        block = bytes(range(256)) * 256
        for _ in range(size // len(block)):
            await stream.write(block)
        await stream.close()

    server.set_handler("/test/bulk", sink_then_source)
    try:
        payload = os.urandom(size)
        stream = await client.new_stream(addr_of(server), ["/test/bulk"])
        view = memoryview(payload)
        for offset in range(0, size, 100_000):
            await stream.write(view[offset : offset + 100_000])
        await stream.close_write()
        back = await stream.read_until_eof(size)
        assert await received_digest == hashlib.sha256(payload).hexdigest()
        assert back == bytes(range(256)) * 256 * (size // 65536)
    finally:
        await client.stop()
        await server.stop()


async def test_reset_reaches_the_other_side(server: Node, client: Node) -> None:
    reset_seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def reader(stream: Stream) -> None:
        try:
            await stream.read()
            await stream.read()
        except StreamResetError as exc:
            reset_seen.set_result(exc)

    server.set_handler("/test/reset", reader)
    stream = await client.new_stream(addr_of(server), ["/test/reset"])
    await stream.write(b"x")
    stream.reset()
    assert isinstance(await asyncio.wait_for(reset_seen, 5), StreamResetError)
    assert await client.ping(server.peer_id)


async def test_stop_sends_goaway_and_closes_everything(server: Node, client: Node) -> None:
    started = asyncio.Event()

    async def hang(stream: Stream) -> None:
        started.set()
        await stream.read()

    server.set_handler("/test/hang", hang)
    conn = await client.dial(addr_of(server))
    stream = await client.new_stream(server.peer_id, ["/test/hang"])
    await stream.write(b"hello")
    await started.wait()
    tasks_before = len(asyncio.all_tasks())
    await server.stop()
    await asyncio.wait_for(conn.wait_closed(), 5)
    with pytest.raises((ConnectionClosedError, StreamResetError)):
        await stream.read()
    assert server.connections() == []
    assert len(asyncio.all_tasks()) < tasks_before


async def test_connection_events_are_reported(server: Node, client: Node) -> None:
    events: list[str] = []
    server.on_event(lambda e: events.append(f"{e.kind}:{e.direction}"))
    closed = asyncio.Event()
    server.on_event(lambda e: closed.set() if e.kind == "disconnected" else None)
    conn = await client.dial(addr_of(server))
    await client.ping(server.peer_id)
    await conn.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert events == ["connected:inbound", "disconnected:inbound"]


async def test_yamux_keepalive_ping_measures_rtt(server: Node, client: Node) -> None:
    conn = await client.dial(addr_of(server))
    rtt = await conn.ping()
    assert 0 < rtt < 5


def test_the_stack_runs_on_uvloop() -> None:
    import uvloop

    async def scenario() -> None:
        server = await start_node()
        client = await start_node(muxers=("mplex",))
        try:
            assert len(await client.ping(addr_of(server), count=2)) == 2
        finally:
            await client.stop()
            await server.stop()

    uvloop.run(scenario())


async def test_a_cancelled_writer_does_not_fail_the_others_waiting_for_the_socket(
    server: Node, client: Node
) -> None:
    """Writers wait for a full socket to drain on one shared future: cancelling one writer
    (e.g. its response timed out) leaves the others waiting, then writing."""
    conn = await client.dial(addr_of(server))
    conn.pause_writing()  # as asyncio does when the socket's buffer is full
    first = asyncio.create_task(conn.drained())
    second = asyncio.create_task(conn.drained())
    await asyncio.sleep(0)  # both are now waiting
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    conn.resume_writing()
    await asyncio.wait_for(second, 5)
    assert first.cancelled() and second.done() and not second.cancelled()


async def test_a_burst_beyond_the_ack_backlog_waits_for_stream_slots() -> None:
    from p2pnode.protocols.task.client import send_task
    from p2pnode.protocols.task.handlers import EchoHandler
    from p2pnode.protocols.task.server import TaskServer
    from p2pnode.wire.yamux import YamuxConfig

    server = await start_node()
    TaskServer(server, {"default": EchoHandler()}).install()
    client = await start_node()
    client._transport_config.yamux = YamuxConfig(max_ack_backlog=4)
    try:
        conn = await client.dial(addr_of(server))
        results = await asyncio.gather(
            *(send_task(client, conn.remote_peer, f"t{i}", timeout=20) for i in range(100))
        )
        assert [r.output for r in results] == [f"t{i}" for i in range(100)]
    finally:
        await client.stop()
        await server.stop()


async def test_a_stream_slot_wait_ends_when_the_connection_closes() -> None:
    from p2pnode.errors import ConnectionClosedError
    from p2pnode.wire.yamux import YamuxConfig

    server = await start_node()
    client = await start_node()
    client._transport_config.yamux = YamuxConfig(max_ack_backlog=1)
    try:
        conn = await client.dial(addr_of(server))
        (await inbound_connection(server, client.peer_id))._transport.pause_reading()
        await conn.open_stream()  # the server reads nothing, so it never ACKs: backlog full
        waiting = asyncio.ensure_future(conn.open_stream())
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done()
        await conn.close()
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(waiting, 10)
    finally:
        await client.stop()
        await server.stop()
