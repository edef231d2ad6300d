"""Protocol 2 against bad clients: each gets a clear answer, only its stream closes, memory
stays bounded, and the server keeps serving everyone else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import DecodeError
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols.task.client2 import run_task
from p2pnode.protocols.task.handlers import EchoHandler, PythonHandler
from p2pnode.protocols.task.handlers2 import Task
from p2pnode.protocols.task.messages2 import (
    PROTOCOL_ID_V2,
    Cancel,
    Failed,
    InputChunk,
    Part,
    Request,
    encode,
)
from p2pnode.protocols.task.server import TaskLogRecord, TaskServer
from p2pnode.protocols.task.session2 import (
    ClientSession,
    InputEnd,
    InputPiece,
    InputTooLargeError,
    ServerSession,
    frame,
)
from p2pnode.wire.varint import encode_uvarint
from p2pnode.wire.yamux import YamuxConfig

from .conftest import MakeServer, addr_of

WINDOW = YamuxConfig().max_receive_window
SOCKET_SLACK = 8 << 20  # what the kernel's loopback socket buffers may hold besides


async def exchange(
    client: Node, server: TaskServer, data: bytes, *, close: bool = True, task_id: str = ""
) -> Any:
    """Send raw bytes on a protocol-2 stream; the terminal event the server answers."""
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID_V2])
    await stream.write(data)
    if close:
        await stream.close_write()
    return await terminal_of(stream, task_id)


async def terminal_of(stream: Stream, task_id: str) -> Any:
    session = ClientSession(task_id)
    async with asyncio.timeout(10):
        while not session.done:
            chunk = await stream.read()
            if not chunk:
                break
            session.receive_data(chunk)
    return session.terminal


async def still_serves(client: Node, server: TaskServer) -> None:
    assert (await run_task(client, addr_of(server.node), "ok?")).text == "ok?"


async def test_garbage_is_bad_request(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    answer = await exchange(client, server, b"\x05hello")
    assert isinstance(answer, Failed) and answer.code == "bad_request"
    await still_serves(client, server)


async def test_an_oversized_message_is_too_large(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    answer = await exchange(client, server, encode_uvarint(2 << 20) + b"\x00" * 1000)
    assert isinstance(answer, Failed) and answer.code == "too_large"
    await still_serves(client, server)


async def test_input_beyond_the_total_limit_is_too_large(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server()
    server.v2.max_total_input = 100_000
    chunks = frame(Request("big", input=[Part.of_bytes(b"x" * 60_000)], more=True))
    chunks += frame(InputChunk(Part.of_bytes(b"y" * 60_000), append=True))
    answer = await exchange(client, server, chunks, close=False, task_id="big")
    assert isinstance(answer, Failed) and answer.code == "too_large"
    await still_serves(client, server)


async def test_input_that_ends_early_is_bad_request(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    data = frame(Request("early", input=[], more=True))
    answer = await exchange(client, server, data, task_id="early")
    assert isinstance(answer, Failed) and answer.code == "bad_request"
    assert "ended before the input" in answer.message


async def test_a_second_request_is_bad_request(make_server: MakeServer, client: Node) -> None:
    async def wait_for_input(task: Task) -> str:
        return str(len(task.data))

    server = await make_server({"default": PythonHandler(wait_for_input)})
    data = frame(Request("a", more=True)) + frame(Request("b"))
    answer = await exchange(client, server, data, task_id="a")
    assert isinstance(answer, Failed) and answer.code == "bad_request"
    assert "one task per stream" in answer.message


async def test_a_silent_client_times_out(make_server: MakeServer, client: Node) -> None:
    server = await make_server(request_read_timeout=0.2)
    answer = await exchange(client, server, b"", close=False)
    assert isinstance(answer, Failed) and answer.code == "bad_request"
    assert "no request within" in answer.message


async def test_unknown_message_types_are_ignored(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    newer = encode({"type": "hint", "x": 1})  # type: ignore[arg-type]
    data = frame(Request("u", input=[Part.of_text("hi")], more=True))
    data += encode_uvarint(len(newer)) + newer + frame(InputChunk(end=True))
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID_V2])
    await stream.write(data)
    await stream.close_write()
    session = ClientSession("u")
    events = []
    while chunk := await stream.read():
        events += session.receive_data(chunk)
    assert session.terminal is not None and session.terminal.parts[0].text == "hi"


async def test_a_client_that_never_reads_is_cut_off(make_server: MakeServer, client: Node) -> None:
    produced = 0

    async def flood(task: Task) -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += 1
            yield b"z" * 65536

    logs: list[TaskLogRecord] = []
    server = await make_server(
        {"flood": PythonHandler(flood), "default": EchoHandler()}, response_write_timeout=0.3
    )
    server.on_log = logs.append
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID_V2])
    await stream.write(frame(Request("f", "flood", stream=True)))
    await stream.close_write()
    async with asyncio.timeout(10):  # we never read: the server gives up on us
        while not logs:
            await asyncio.sleep(0.02)
    assert logs[0].outcome == "failed" and "did not take" in logs[0].message
    # held back by flow control: one stream window (16 MiB) and socket buffers, not unbounded
    assert produced * 65536 <= WINDOW + SOCKET_SLACK
    assert server.running == 0
    await still_serves(client, server)


async def test_unread_input_is_bounded_per_task(make_server: MakeServer, client: Node) -> None:
    release = asyncio.Event()

    class Slow:
        streams_input = True

        async def run_v2(self, task: Task) -> AsyncIterator[Any]:
            await release.wait()
            async for _ in task.pieces():
                pass
            yield "done"

        async def run(self, request: Any, context: Any = None) -> str:
            return ""

    server = await make_server({"slow": Slow(), "default": EchoHandler()})  # type: ignore[dict-item]
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID_V2])
    await stream.write(frame(Request("s", "slow", more=True)))
    sent = 0

    async def push() -> None:
        nonlocal sent
        while sent < 64 << 20:
            await stream.write(frame(InputChunk(Part.of_bytes(b"q" * 200_000))))
            sent += 200_000

    pusher = asyncio.ensure_future(push())
    async with asyncio.timeout(5):
        while server.request_memory.used_by(client.peer_id) < 1 << 20:
            await asyncio.sleep(0.01)
    for _ in range(20):  # the server stops reading: flow control stalls us
        await asyncio.sleep(0.01)
    assert not pusher.done() and sent <= WINDOW + (1 << 20) + SOCKET_SLACK
    assert server.request_memory.used_by(client.peer_id) <= (1 << 20) + 400_000
    pusher.cancel()
    stream.reset()
    release.set()
    await still_serves(client, server)


def test_server_session_orders_messages() -> None:
    session = ServerSession()
    with pytest.raises(DecodeError, match="must be a request"):
        session.receive_data(frame(InputChunk(end=True)))
    session = ServerSession()
    with pytest.raises(DecodeError, match="cancel before"):
        session.receive_data(frame(Cancel()))
    session = ServerSession()
    events = session.receive_data(frame(Request("t", input=[Part.of_text("a")])))
    assert isinstance(events[0], Request) and isinstance(events[-1], InputEnd)
    assert session.receive_data(frame(InputChunk(Part.of_text("late")))) == []  # ignored
    assert len(session.receive_data(frame(Cancel()) + frame(Cancel()))) == 1
    session = ServerSession(max_total_input=3)
    with pytest.raises(InputTooLargeError):
        session.receive_data(frame(Request("t", input=[Part.of_text("abcd")])))
    session = ServerSession()
    events = session.receive_data(
        frame(Request("t", more=True)) + frame(InputChunk(Part.of_text("x")))
    )
    assert isinstance(events[-1], InputPiece)
    with pytest.raises(DecodeError, match="ended before the input"):
        session.receive_eof()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_server_session_takes_any_bytes_safely(chunks: list[bytes]) -> None:
    session = ServerSession(max_message_size=4096)
    try:
        for chunk in chunks:
            session.receive_data(chunk)
    except DecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_client_session_takes_any_bytes_safely(chunks: list[bytes]) -> None:
    session = ClientSession("t", max_message_size=4096)
    try:
        for chunk in chunks:
            session.receive_data(chunk)
    except DecodeError:
        pass
