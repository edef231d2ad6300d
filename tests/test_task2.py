"""Task protocol 2 in one process: parts, streamed input and output, cancel, cache, fallback."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from p2pnode.errors import DecodeError, ProtocolNotSupportedError
from p2pnode.node import Node
from p2pnode.protocols.task.client2 import run_task, stream_task
from p2pnode.protocols.task.handlers import ExecHandler, PythonHandler
from p2pnode.protocols.task.handlers2 import Task
from p2pnode.protocols.task.messages import PROTOCOL_ID, TaskFailedError, TaskRefusedError
from p2pnode.protocols.task.messages2 import (
    PROTOCOL_ID_V2,
    Accepted,
    Cancel,
    Completed,
    Failed,
    InputChunk,
    OutputChunk,
    Part,
    Request,
    TaskProgress,
    decode_server_event,
)
from p2pnode.protocols.task.server import TaskLogRecord, TaskServer
from p2pnode.protocols.task.session2 import ClientSession, frame

from .conftest import MakeServer, addr_of

ALL_BYTES = bytes(range(256))
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


async def events_of(client: Node, server: TaskServer, *args: Any, **kw: Any) -> list[Any]:
    return [e async for e in stream_task(client, addr_of(server.node), *args, **kw)]


async def test_bytes_come_back_exactly(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    out = await run_task(
        client, addr_of(server.node), [Part.of_bytes(ALL_BYTES), Part.of_bytes(PNG, "image/png")]
    )
    assert [p.data for p in out.parts] == [ALL_BYTES, PNG]
    assert out.parts[1].media_type == "image/png"
    assert out.protocol == PROTOCOL_ID_V2


async def test_text_and_json_parts(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    out = await run_task(
        client, addr_of(server.node), [Part.of_text("héllo"), Part.of_json({"a": [1, 2.5, None]})]
    )
    assert out.parts[0].text == "héllo"
    assert out.parts[1].value == {"a": [1, 2.5, None]}


async def test_streamed_echo_of_a_big_input_is_exact(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    data = os.urandom(3 * 1024 * 1024 + 17)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    digest = hashlib.sha256()
    outputs = 0
    async for event in stream_task(client, addr_of(server.node), input_chunks=chunks):
        if isinstance(event, OutputChunk):
            digest.update(event.part.data or b"")
            outputs += 1
    assert digest.digest() == hashlib.sha256(data).digest()
    assert outputs > 1


async def test_an_async_generator_streams_before_it_finishes(
    make_server: MakeServer, client: Node
) -> None:
    release = asyncio.Event()

    async def tokens(task: Task) -> AsyncIterator[object]:
        yield TaskProgress(0.0, "starting")
        yield "first "
        await release.wait()
        yield "second"

    server = await make_server({"llm": PythonHandler(tokens)})
    seen: list[Any] = []
    async for event in stream_task(client, addr_of(server.node), "x", kind="llm"):
        seen.append(event)
        if isinstance(event, OutputChunk):
            release.set()  # only the first chunk, arrived while the handler waits, sets it
    outputs = [e for e in seen if isinstance(e, OutputChunk)]
    assert [o.part.text for o in outputs] == ["first ", "second"]
    assert [o.append for o in outputs] == [False, True]
    assert isinstance(seen[0], Accepted) and isinstance(seen[1], TaskProgress)
    assert isinstance(seen[-1], Completed)


async def test_handler_sees_the_task(make_server: MakeServer, client: Node) -> None:
    def look(task: Task) -> dict[str, Any]:
        return {
            "kind": task.kind,
            "id": task.task_id,
            "peer": task.peer_id,
            "meta": task.metadata,
            "input": task.input,
            "data": task.data.hex(),
        }

    server = await make_server({"look": PythonHandler(look)})
    out = await run_task(
        client,
        addr_of(server.node),
        [Part.of_text("ab"), Part.of_bytes(b"\x00")],
        kind="look",
        metadata={"n": 3},
        task_id="t-1",
    )
    assert out.parts[0].value == {
        "kind": "look",
        "id": "t-1",
        "peer": str(client.peer_id),
        "meta": {"n": 3},
        "input": "ab",
        "data": "616200",
    }


async def test_exec_streams_stdin_and_stdout_as_raw_bytes(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server({"cat": ExecHandler(["cat"], media_type="image/png")})
    out = await run_task(client, addr_of(server.node), PNG + ALL_BYTES, kind="cat")
    assert out.data == PNG + ALL_BYTES
    assert out.parts[0].media_type == "image/png"


async def test_cancel_kills_the_exec_process_group(
    make_server: MakeServer, client: Node, tmp_path: Any
) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; echo started; sleep 60"
    server = await make_server({"hang": ExecHandler(["sh", "-c", script])})
    logs: list[TaskLogRecord] = []
    server.on_log = logs.append
    async for event in stream_task(client, addr_of(server.node), "", kind="hang"):
        if isinstance(event, OutputChunk):
            break  # leaving the loop cancels the task
    pid = int(pidfile.read_text())
    async with asyncio.timeout(10):
        while not logs:
            await asyncio.sleep(0.01)
    assert logs[0].outcome in ("cancelled", "failed")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_explicit_cancel_answers_cancelled_once(
    make_server: MakeServer, client: Node
) -> None:
    started = asyncio.Event()

    async def hang(task: Task) -> AsyncIterator[str]:
        yield "started"
        started.set()
        await asyncio.Event().wait()

    server = await make_server({"hang": PythonHandler(hang)})
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID_V2])
    await stream.write(frame(Request("c1", "hang", [Part.of_text("")], stream=True)))
    session = ClientSession("c1")
    events: list[Any] = []
    while not any(isinstance(e, OutputChunk) for e in events):
        events += session.receive_data(await stream.read())
    await stream.write(frame(Cancel()) + frame(Cancel()))  # twice: idempotent
    while not session.done:
        chunk = await stream.read()
        if not chunk:
            break
        events += session.receive_data(chunk)
    assert isinstance(session.terminal, Failed) and session.terminal.code == "cancelled"
    await stream.write(frame(Cancel()))  # after the terminal event: ignored
    assert await stream.read() == b""


async def test_retry_with_the_same_id_is_answered_from_the_cache(
    make_server: MakeServer, client: Node
) -> None:
    calls = 0

    def count(task: Task) -> str:
        nonlocal calls
        calls += 1
        return f"run {calls}"

    server = await make_server({"count": PythonHandler(count)})
    first = await run_task(client, addr_of(server.node), "x", kind="count", task_id="same")
    again = await run_task(client, addr_of(server.node), "x", kind="count", task_id="same")
    other = await run_task(client, addr_of(server.node), "x", kind="count", task_id="other")
    assert (first.text, first.cached) == ("run 1", False)
    assert (again.text, again.cached) == ("run 1", True)
    assert other.text == "run 2" and calls == 2


async def test_a_retry_of_a_running_task_waits_for_it(
    make_server: MakeServer, client: Node
) -> None:
    release = asyncio.Event()
    calls = 0

    async def slow(task: Task) -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "done"

    server = await make_server({"slow": PythonHandler(slow)})
    one = asyncio.ensure_future(
        run_task(client, addr_of(server.node), "", kind="slow", task_id="r")
    )
    async with asyncio.timeout(5):
        while calls == 0:
            await asyncio.sleep(0.005)
    two = asyncio.ensure_future(
        run_task(client, addr_of(server.node), "", kind="slow", task_id="r")
    )
    async with asyncio.timeout(5):
        while not server.v2.cache.running or len(server._running) != 1:
            await asyncio.sleep(0.005)
    release.set()
    first, second = await asyncio.gather(one, two)
    assert (first.text, second.text, second.cached, calls) == ("done", "done", True, 1)


async def test_unknown_kind_and_busy_are_refusals(make_server: MakeServer, client: Node) -> None:
    server = await make_server(max_concurrent=0)
    with pytest.raises(TaskRefusedError, match="unknown_kind"):
        await run_task(client, addr_of(server.node), "x", kind="nope")
    with pytest.raises(TaskRefusedError, match="busy"):
        await run_task(client, addr_of(server.node), "x")


async def test_handler_failure_is_failed(make_server: MakeServer, client: Node) -> None:
    def boom(task: Task) -> str:
        raise ValueError("nope")

    server = await make_server({"boom": PythonHandler(boom)}, expose_errors=True)
    with pytest.raises(TaskFailedError, match="ValueError: nope"):
        await run_task(client, addr_of(server.node), "x", kind="boom")


async def test_falls_back_to_protocol_1(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    server.node.remove_handler(PROTOCOL_ID_V2)
    out = await run_task(client, addr_of(server.node), "plain text")
    assert (out.text, out.protocol) == ("plain text", PROTOCOL_ID)
    with pytest.raises(ProtocolNotSupportedError, match="one text"):
        await run_task(client, addr_of(server.node), b"\x89PNG")


async def test_protocol_1_still_served(make_server: MakeServer, client: Node) -> None:
    from p2pnode.protocols.task.client import send_task

    server = await make_server()
    assert (await send_task(client, addr_of(server.node), "v1")).output == "v1"


async def test_big_non_streamed_output_comes_in_chunks(
    make_server: MakeServer, client: Node
) -> None:
    blob = os.urandom(5 * 1024 * 1024)
    server = await make_server({"blob": PythonHandler(lambda task: blob)})
    out = await run_task(client, addr_of(server.node), "", kind="blob")
    assert out.data == blob


async def test_non_streamed_output_beyond_the_limit_fails(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server(
        {"blob": PythonHandler(lambda task: b"x" * 2000)}, max_response_size=1000
    )
    with pytest.raises(TaskFailedError, match="ask for a stream"):
        await run_task(client, addr_of(server.node), "", kind="blob")


def test_client_session_rejects_out_of_order_events() -> None:
    session = ClientSession("t")
    with pytest.raises(DecodeError, match="before accepting"):
        session.receive_data(frame(OutputChunk(Part.of_text("x"))))
    session = ClientSession("t")
    session.receive_data(frame(Accepted("t")) + frame(Completed("t")))
    with pytest.raises(DecodeError, match="after the terminal"):
        session.receive_data(frame(Failed("t", "failed", "again")))
    session = ClientSession("t")
    with pytest.raises(DecodeError, match="answered for task"):
        session.receive_data(frame(Accepted("t")) + frame(Completed("u")))
    session = ClientSession("t")
    with pytest.raises(DecodeError, match="appended to"):
        session.receive_data(frame(Accepted("t")) + frame(OutputChunk(Part.of_text("x"), True)))


def test_a_frame_is_the_length_then_the_body() -> None:
    assert decode_server_event(frame(Accepted("a"))[1:]) == Accepted("a")
    assert InputChunk(end=True) == InputChunk(None, False, True)


async def test_every_handler_shape_gives_the_same_output(
    make_server: MakeServer, client: Node
) -> None:
    def plain(task: Task) -> str:
        return "ab"

    async def coroutine(task: Task) -> str:
        return "ab"

    def returns_generator(task: Task) -> Any:
        return iter(["a", "b"])

    def generator(task: Task) -> Any:
        yield "a"
        yield "b"

    async def async_generator(task: Task) -> AsyncIterator[str]:
        yield "a"
        yield "b"

    shapes = {f.__name__: PythonHandler(f) for f in
              (plain, coroutine, returns_generator, generator, async_generator)}  # fmt: skip
    server = await make_server(shapes)
    for kind in shapes:
        for streamed in (False, True):
            out = await run_task(client, addr_of(server.node), "", kind=kind, stream=streamed)
            assert [p.text for p in out.parts] == ["ab"], (kind, streamed)


async def test_cancel_reaches_a_non_streamed_coroutine(
    make_server: MakeServer, client: Node
) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def wait_forever(task: Task) -> str:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return ""

    server = await make_server({"wait": PythonHandler(wait_forever)})
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID_V2])
    await stream.write(frame(Request("w", "wait", [Part.of_text("")])))
    await entered.wait()
    await stream.write(frame(Cancel()))
    session = ClientSession("w")
    while not session.done and (chunk := await stream.read()):
        session.receive_data(chunk)
    assert isinstance(session.terminal, Failed) and session.terminal.code == "cancelled"
    assert cancelled.is_set() and server.running == 0
