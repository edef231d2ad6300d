"""A peer that does not read: the node stops reading its work, then drops it; memory returns."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from p2pnode import Node, Stream, StreamResetError
from p2pnode.net import connection as connection_module
from p2pnode.wire.yamux import Flag, FrameType, encode_header

from .conftest import addr_of, inbound_connection, start_node


async def test_a_peer_that_sends_but_never_reads_is_paused_then_dropped(
    server: Node, client: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "STALL_TIMEOUT", 0.5)
    conn = await client.dial(addr_of(server))
    conn._transport.pause_reading()  # the attacker never reads what the server answers
    server_conn = await inbound_connection(server, client.peer_id)
    limit = connection_module.MAX_UNSENT + 4 * connection_module.WRITE_BUFFER_HIGH
    next_id = 1001
    async with asyncio.timeout(60):
        # Stream SYNs, each answered with an ACK (or, past the stream limit, a reset) and
        # pings, answered with a pong: work the server must answer, sent as fast as we can.
        for _ in range(200):
            if server_conn._stall_handle is not None or server_conn.is_closed:
                break
            frames = [encode_header(FrameType.PING, Flag.SYN, 0, 7)]
            for stream_id in range(next_id, next_id + 2 * 20000, 2):
                frames.append(encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, stream_id, 0))
                frames.append(encode_header(FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0))
            next_id += 2 * 20000
            conn._transport.write(conn._secure.encrypt(b"".join(frames)))
            await asyncio.sleep(0.01)  # let the server's receive path run
            unsent = server_conn._transport.get_write_buffer_size()
            assert unsent <= limit, f"the server queued {unsent} bytes for a peer that never reads"
        assert server_conn._stall_handle is not None or server_conn.is_closed
        # paused, not yet dropped: everyone else is still served
        other = await start_node()
        try:
            assert len(await other.ping(addr_of(server), count=3)) == 3
        finally:
            await other.stop()
        await server_conn.wait_closed()
    assert "read nothing" in str(server_conn._close_reason)


async def test_a_failed_stream_is_freed_without_a_garbage_collection(
    server: Node, client: Node
) -> None:
    """A stream whose error was raised must not stay alive in a reference cycle
    (error -> traceback -> frame -> stream) until a full collection."""

    async def reset_at_once(stream: object) -> None:
        stream.reset()  # type: ignore[attr-defined]

    server.set_handler("/test/reset/1", reset_at_once)
    conn = await client.dial(addr_of(server))
    gc.collect()
    gc.disable()
    try:
        stream = await conn.new_stream(["/test/reset/1"])
        with pytest.raises(StreamResetError):
            await stream.read()
        with pytest.raises(StreamResetError):
            await stream.write(b"x" * 100_000)
        ref = weakref.ref(stream)
        del stream
        await asyncio.sleep(0)
        assert ref() is None, gc.get_referrers(ref())
    finally:
        gc.enable()


async def test_a_burst_of_new_streams_lets_the_loop_turn_between_handlers(
    server: Node, client: Node
) -> None:
    """100 streams arriving in one read start their handlers a few per loop iteration, so
    a callback scheduled by the first handler runs before most of the others start."""
    marks: list[object] = []
    loop = asyncio.get_running_loop()

    async def handler(stream: Stream) -> None:
        if not marks:
            loop.call_soon(marks.append, "turn")
        marks.append(stream.stream_id)
        await stream.close()

    server.set_handler("/p2pnode/burst/1.0.0", handler)
    conn = await client.dial(addr_of(server))
    for _ in range(100):  # no await suspends here: all go out in one write
        await conn.new_stream(["/p2pnode/burst/1.0.0"], optimistic=True)
    async with asyncio.timeout(10):
        while len(marks) < 101:
            await asyncio.sleep(0.01)
    assert marks.index("turn") <= 17, marks[:30]  # 16 start per iteration
