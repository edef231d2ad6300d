"""Stream.answer_inline: answers from the receive path, in order, with back-pressure."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from p2pnode.errors import StreamResetError
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols.ping import PROTOCOL_ID as PING

UPPER = "/test/upper/1.0.0"
FRAGILE = "/test/fragile/1.0.0"


async def upper_handler(stream: Stream) -> None:
    await stream.answer_inline(bytes.upper)
    await stream.close()


def refuse_boom(data: bytes) -> bytes:
    if b"boom" in data:
        raise ValueError("boom is not allowed")
    return data


async def fragile_handler(stream: Stream) -> None:
    await stream.answer_inline(refuse_boom)


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_answers_each_piece_and_ends_with_the_peer(muxer: str) -> None:
    from .conftest import addr_of, start_node

    server, client = await start_node(muxers=(muxer,)), await start_node(muxers=(muxer,))
    try:
        server.set_handler(UPPER, upper_handler)
        conn = await client.dial(addr_of(server))
        stream = await conn.new_stream([UPPER])
        for word in (b"abc", b"hello world", b"x" * 100_000):
            await stream.write(word)
            assert await stream.readexactly(len(word)) == word.upper()
        await stream.close_write()
        assert await stream.read() == b""  # the handler returned at our EOF and closed
    finally:
        await client.stop()
        await server.stop()


async def test_ping_echo_is_byte_for_byte_when_pings_are_split(server: Node, client: Node) -> None:
    from .conftest import addr_of

    conn = await client.dial(addr_of(server))
    stream = await conn.new_stream([PING])
    payload = os.urandom(32)
    await stream.write(payload[:5])
    await stream.write(payload[5:])
    assert await stream.readexactly(32) == payload
    await stream.close_write()
    assert await stream.read() == b""


async def test_echo_held_back_by_flow_control_stays_whole_and_in_order(
    server: Node, client: Node
) -> None:
    """More than the client's 16 MiB receive window, sent before reading a byte: the
    server's send window runs out mid-answer, the rest waits, and nothing is lost or
    reordered once the client reads."""
    from .conftest import addr_of

    conn = await client.dial(addr_of(server))
    stream = await conn.new_stream([PING])
    data = os.urandom(24 * 1024 * 1024)
    for start in range(0, len(data), 1 << 20):
        await asyncio.wait_for(stream.write(data[start : start + (1 << 20)]), 30)
    await stream.close_write()
    echoed = hashlib.sha256()
    received = 0
    while chunk := await asyncio.wait_for(stream.read(), 30):
        echoed.update(chunk)
        received += len(chunk)
    assert received == len(data)
    assert echoed.digest() == hashlib.sha256(data).digest()


async def test_an_exception_in_respond_resets_only_that_stream(server: Node, client: Node) -> None:
    from .conftest import addr_of

    server.set_handler(FRAGILE, fragile_handler)
    conn = await client.dial(addr_of(server))
    stream = await conn.new_stream([FRAGILE])
    await stream.write(b"fine")
    assert await stream.readexactly(4) == b"fine"
    await stream.write(b"boom")
    with pytest.raises(StreamResetError):
        await asyncio.wait_for(stream.read(), 10)
    assert len(await client.ping(server.peer_id, count=3)) == 3  # the connection still serves


async def test_a_new_streams_ack_rides_with_the_handlers_first_answer(
    server: Node, client: Node
) -> None:
    """Accepting a stream queues a yamux ACK; it goes out with the handler's first write
    (ACK, multistream reply, answer and FIN in one socket write), not in a write of its own."""
    from .conftest import addr_of

    async def greet(stream: Stream) -> None:
        await stream.write(b"hi")

    server.set_handler("/test/greet/1.0.0", greet)
    conn = await client.dial(addr_of(server))
    first = await conn.new_stream(["/test/greet/1.0.0"])  # the server then has nothing due
    assert await first.read_until_eof(100) == b"hi"
    (server_conn,) = server._connections[client.peer_id]
    writes: list[bytes] = []
    transport = server_conn._transport
    real_write = transport.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        real_write(data)

    transport.write = counting_write  # type: ignore[method-assign]
    try:
        stream = await conn.new_stream(["/test/greet/1.0.0"])
        assert await stream.read_until_eof(100) == b"hi"
    finally:
        transport.write = real_write  # type: ignore[method-assign]
    assert len(writes) == 1


async def test_an_optimistic_dialer_answers_data_not_the_negotiation(
    server: Node, client: Node
) -> None:
    """On a stream opened optimistically, the peer's multistream answer is checked, not
    answered as if it were data."""
    from .conftest import addr_of

    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def talk(stream: Stream) -> None:
        await stream.write(b"hello")
        await stream.close_write()
        got.set_result(await stream.read_until_eof(10_000))

    server.set_handler("/test/talk/1.0.0", talk)
    conn = await client.dial(addr_of(server))
    stream = await conn.new_stream(["/test/talk/1.0.0"], optimistic=True)
    await asyncio.wait_for(stream.answer_inline(bytes.upper), 10)
    await stream.close()
    assert await asyncio.wait_for(got, 10) == b"HELLO"


async def test_data_and_reset_in_one_read_end_with_the_reset(server: Node, client: Node) -> None:
    """The peer's last data and its RST arrive together: the handler learns of the reset
    (not of a misuse of its own), and the connection goes on."""
    from .conftest import addr_of

    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def upper(stream: Stream) -> None:
        try:
            await stream.answer_inline(bytes.upper)
        except Exception as exc:
            outcome.set_result(exc)
            raise

    server.set_handler(UPPER, upper)
    conn = await client.dial(addr_of(server))
    stream = await conn.new_stream([UPPER])
    await stream.write(b"abc")
    assert await stream.readexactly(3) == b"ABC"
    await stream.write(b"x")  # queued, and the RST below goes out in the same flush
    stream.reset()
    assert isinstance(await asyncio.wait_for(outcome, 10), StreamResetError)
    assert len(await client.ping(server.peer_id, count=2)) == 2
