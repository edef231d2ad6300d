"""Stream.set_deadline: waits fail at the deadline; data at hand is never refused."""

from __future__ import annotations

import asyncio

import pytest

from p2pnode.errors import P2PTimeoutError
from p2pnode.net.stream import Stream
from p2pnode.node import Node

from .conftest import addr_of

HOLD = "/test/hold/1.0.0"


async def open_held_stream(server: Node, client: Node) -> tuple[Stream, asyncio.Future[Stream]]:
    """A stream whose server side is handed to the test and neither reads nor writes."""
    accepted: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def hold(stream: Stream) -> None:
        accepted.set_result(stream)
        await done.wait()

    server.set_handler(HOLD, hold)
    conn = await client.dial(addr_of(server))
    stream = await conn.new_stream([HOLD])
    return stream, accepted


async def test_a_read_that_waits_fails_at_the_deadline(server: Node, client: Node) -> None:
    stream, _ = await open_held_stream(server, client)
    stream.set_deadline(0.05)
    with pytest.raises(P2PTimeoutError, match="no data from the peer"):
        await asyncio.wait_for(stream.read(), 10)


async def test_data_at_hand_is_returned_after_the_deadline(server: Node, client: Node) -> None:
    stream, accepted = await open_held_stream(server, client)
    remote = await asyncio.wait_for(accepted, 10)
    await remote.write(b"already here")
    assert await asyncio.wait_for(stream.readexactly(3), 10) == b"alr"
    stream.set_deadline(0)  # passed at once, but nothing below has to wait
    assert await stream.read() == b"eady here"
    with pytest.raises(P2PTimeoutError):
        await stream.read()  # this one would wait


async def test_no_deadline_means_waiting_for_data(server: Node, client: Node) -> None:
    stream, accepted = await open_held_stream(server, client)
    stream.set_deadline(0)
    stream.set_deadline(None)
    reading = asyncio.create_task(stream.read())
    remote = await asyncio.wait_for(accepted, 10)
    await remote.write(b"late")
    assert await asyncio.wait_for(reading, 10) == b"late"


async def test_a_write_without_flow_control_credit_fails_at_the_deadline(
    server: Node, client: Node
) -> None:
    """The server side never reads: once its 16 MiB window is used up, the write waits."""
    stream, _ = await open_held_stream(server, client)
    stream.set_deadline(0.5)
    with pytest.raises(P2PTimeoutError, match=r"flow-control credit|did not drain"):
        await asyncio.wait_for(stream.write(bytes(32 * 1024 * 1024)), 20)
