"""Stream.on_data: one call when data or EOF arrives, at once if some is here; removable."""

from __future__ import annotations

import asyncio
import os

from p2pnode.node import Node
from p2pnode.protocols.task.messages import new_task_id

from .test_stream_deadline import open_held_stream


async def test_on_data_is_called_once_when_data_arrives(server: Node, client: Node) -> None:
    stream, accepted = await open_held_stream(server, client)
    calls: list[int] = []
    arrived = asyncio.Event()

    def seen() -> None:
        calls.append(len(stream._chunks))  # the data is readable when the callback runs
        arrived.set()

    stream.on_data(seen)
    remote = await asyncio.wait_for(accepted, 10)
    await remote.write(b"one")
    await asyncio.wait_for(arrived.wait(), 10)
    await remote.write(b"two")
    assert await asyncio.wait_for(stream.readexactly(6), 10) == b"onetwo"
    assert calls == [1]


async def test_on_data_fires_at_eof_and_at_once_when_data_is_here(
    server: Node, client: Node
) -> None:
    stream, accepted = await open_held_stream(server, client)
    remote = await asyncio.wait_for(accepted, 10)
    ended = asyncio.Event()
    stream.on_data(ended.set)
    await remote.close_write()
    await asyncio.wait_for(ended.wait(), 10)
    later: list[str] = []
    stream.on_data(lambda: later.append("now"))  # the EOF is here already
    assert later == ["now"]


async def test_on_data_none_removes_the_callback(server: Node, client: Node) -> None:
    stream, accepted = await open_held_stream(server, client)
    calls: list[str] = []
    stream.on_data(lambda: calls.append("no"))
    stream.on_data(None)
    remote = await asyncio.wait_for(accepted, 10)
    await remote.write(b"x")
    assert await asyncio.wait_for(stream.read(), 10) == b"x"
    assert calls == []


def test_task_ids_are_distinct_and_a_forked_child_draws_new_ones() -> None:
    ids = {new_task_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(len(i) == 16 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be the parent's next one
        os.write(write, new_task_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_task_id()
