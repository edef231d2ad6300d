"""The task exchange in one process: every handler type, error code, limit and shutdown path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, P2PError, StreamResetError
from p2pnode.net.framed import read_frame
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols.task.client import send_task
from p2pnode.protocols.task.handlers import EchoHandler, ExecHandler, PythonHandler
from p2pnode.protocols.task.messages import (
    PROTOCOL_ID,
    ErrorCode,
    TaskError,
    TaskFailedError,
    TaskRefusedError,
    TaskRequest,
    TaskResponse,
    TaskTimeoutError,
    decode_request,
    decode_response,
    encode_response,
)
from p2pnode.protocols.task.server import TaskLogRecord, TaskServer, format_log_json
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.varint import encode_uvarint

from .conftest import MakeServer, addr_of, start_node


class Gate:
    """An async handler that holds every task until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.all_entered = asyncio.Condition()

    async def __call__(self, request: TaskRequest) -> str:
        async with self.all_entered:
            self.entered += 1
            self.all_entered.notify_all()
        await self.release.wait()
        return request.input

    async def wait_entered(self, count: int) -> None:
        async with self.all_entered:
            await self.all_entered.wait_for(lambda: self.entered >= count)


async def raw_exchange(client: Node, server: TaskServer, payload: bytes) -> TaskResponse:
    """Send ``payload`` as-is on a task stream, half-close, decode the answer."""
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID])
    await stream.write(payload)
    await stream.close_write()
    body = await read_frame(stream, 1 << 20)
    assert body is not None, "the server closed without answering"
    return decode_response(body)


def error_code(response: TaskResponse) -> str:
    assert response.error is not None, f"expected an error, got {response!r}"
    assert response.output == ""
    return response.error.code


# -- handlers ------------------------------------------------------------------------------


async def test_echo_is_the_default(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    result = await send_task(client, addr_of(server.node), "héllo wörld")
    assert result.output == "héllo wörld"
    assert result.latency_ms >= 0 and result.round_trip_ms > 0


async def test_exec_handler_feeds_stdin_and_returns_stdout(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server({"upper": ExecHandler(["tr", "a-z", "A-Z"])})
    result = await send_task(client, addr_of(server.node), "shout\n" * 1000, kind="upper")
    assert result.output == "SHOUT\n" * 1000


async def test_exec_nonzero_exit_is_failed_with_stderr_tail(
    make_server: MakeServer, client: Node
) -> None:
    script = "import sys; sys.stderr.write('x' * 5000 + 'the real reason'); sys.exit(4)"
    server = await make_server({"default": ExecHandler([sys.executable, "-c", script])})
    with pytest.raises(TaskFailedError) as caught:
        await send_task(client, addr_of(server.node), "in")
    assert caught.value.code == "failed"
    assert "status 4" in str(caught.value) and "the real reason" in str(caught.value)
    assert len(str(caught.value)) < 3000  # only the tail of stderr


async def test_exec_missing_command_is_failed(make_server: MakeServer, client: Node) -> None:
    server = await make_server({"default": ExecHandler(["/nonexistent/p2pnode-tool"])})
    with pytest.raises(TaskFailedError, match="cannot run"):
        await send_task(client, addr_of(server.node), "in")


async def test_exec_timeout_kills_the_process(
    make_server: MakeServer, client: Node, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; exec sleep 300"
    server = await make_server({"default": ExecHandler(["sh", "-c", script])})
    body = b'{"task_id":"slow","input":"in","timeout_ms":500}'
    response = await raw_exchange(client, server, encode_frame(body))
    assert error_code(response) == "timeout" and response.task_id == "slow"
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


def _gone(pid: int) -> bool:
    """True when no process ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def test_exec_timeout_kills_the_whole_process_group(
    make_server: MakeServer, client: Node, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    server = await make_server(
        {"default": ExecHandler(["sh", "-c", script]), "echo": EchoHandler()}, max_concurrent=1
    )
    body = b'{"task_id":"slow","input":"in","timeout_ms":300}'
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(10):
        response = await raw_exchange(client, server, encode_frame(body))
    assert error_code(response) == "timeout"
    assert loop.time() - started < 5  # not held up by the grandchild's copy of stdout
    assert _gone(int(pidfile.read_text()))
    assert server.running == 0
    result = await send_task(client, addr_of(server.node), "next", kind="echo")
    assert result.output == "next"  # the slot was freed: not busy


async def test_exec_cancelled_by_shutdown_kills_the_group(
    make_server: MakeServer, client: Node, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    server = await make_server({"default": ExecHandler(["sh", "-c", script])})
    body = b'{"task_id":"slow","input":"in"}'
    exchange = asyncio.create_task(raw_exchange(client, server, encode_frame(body)))
    async with asyncio.timeout(10):
        while not pidfile.exists() or not pidfile.read_text().strip():
            await asyncio.sleep(0.01)  # polling for a file the command writes
        await server.shutdown(0.1)
        response = await exchange
    assert error_code(response) == "shutting_down"
    assert _gone(int(pidfile.read_text()))


async def test_python_handlers_sync_and_async(make_server: MakeServer, client: Node) -> None:
    def reverse(request: TaskRequest) -> str:
        return request.input[::-1]

    async def count(request: TaskRequest) -> str:
        await asyncio.sleep(0)
        return str(len(request.input))

    server = await make_server({"reverse": PythonHandler(reverse), "count": PythonHandler(count)})
    addr = addr_of(server.node)
    assert (await send_task(client, addr, "abc", kind="reverse")).output == "cba"
    assert (await send_task(client, addr, "abcd", kind="count")).output == "4"


async def test_python_handler_exception_and_wrong_type_are_failed(
    make_server: MakeServer, client: Node
) -> None:
    def broken(request: TaskRequest) -> str:
        raise ValueError("no good input")

    def wrong(request: TaskRequest) -> str:
        return 42  # type: ignore[return-value]

    server = await make_server(
        {"broken": PythonHandler(broken), "wrong": PythonHandler(wrong)}, expose_errors=True
    )
    addr = addr_of(server.node)
    with pytest.raises(TaskFailedError, match="ValueError: no good input"):
        await send_task(client, addr, "x", kind="broken")
    with pytest.raises(TaskFailedError, match="returned int, not str"):
        await send_task(client, addr, "x", kind="wrong")


async def test_unknown_kind_names_the_known_ones(make_server: MakeServer, client: Node) -> None:
    server = await make_server({"default": EchoHandler(), "summarize": EchoHandler()})
    with pytest.raises(TaskRefusedError) as caught:
        await send_task(client, addr_of(server.node), "x", kind="translate")
    assert caught.value.code == "unknown_kind"
    assert "summarize" in str(caught.value)


async def test_output_over_the_response_limit_is_failed(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server(max_response_size=1000)
    addr = addr_of(server.node)
    assert (await send_task(client, addr, "y" * 1000)).output == "y" * 1000
    with pytest.raises(TaskFailedError, match="exceeds 1000"):
        await send_task(client, addr, "y" * 1001)


async def test_handler_timeout_from_the_request(make_server: MakeServer, client: Node) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)})
    body = b'{"task_id":"t","input":"x","timeout_ms":300}'
    response = await raw_exchange(client, server, encode_frame(body))
    assert error_code(response) == "timeout" and "0.3" in response.error.message  # type: ignore[union-attr]
    assert server.running == 0  # the handler was cancelled, not left running


async def test_peer_reset_cancels_the_handler(
    make_server: MakeServer, client: Node, tmp_path: Path
) -> None:
    records: list[TaskLogRecord] = []
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 300"
    server = await make_server(
        {"default": ExecHandler(["sh", "-c", script])}, on_log=records.append
    )
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID])
    await stream.write(encode_frame(b'{"task_id":"gone","input":"x"}'))
    await stream.close_write()
    while not pidfile.exists():  # the handler is running once the command wrote its pid
        await asyncio.sleep(0.01)
    stream.reset()
    await server.shutdown(grace=10)  # returns once nothing is being served
    assert server.running == 0
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)
    assert [(r.task_id, r.outcome) for r in records] == [("gone", "failed")]
    assert "reset" in records[0].message


async def test_server_caps_the_timeout(make_server: MakeServer, client: Node) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)}, max_timeout=0.2)
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID])
    await stream.write(encode_frame(b'{"task_id":"t","input":"x","timeout_ms":600000}'))
    await stream.close_write()
    body = await read_frame(stream, 1 << 20)
    assert body is not None
    response = decode_response(body)
    assert error_code(response) == "timeout" and response.task_id == "t"


# -- bad requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "task_id", "mentions"),
    [
        (b"{not json", "", "invalid task request"),
        (b'{"task_id": 7, "input": "x"}', "", "str"),
        (b'{"task_id": "t1", "input": 5}', "t1", "input"),
        (b'{"task_id": "t2"}', "t2", "input"),
        (b'{"input": "x"}', "", "task_id"),
        (b'["task_id", "input"]', "", "object"),
        (b'{"task_id": "t3", "input": "x", "timeout_ms": -5}', "t3", "positive"),
        (b'{"task_id": "t4", "input": "x", "kind": null}', "t4", "kind"),
        (b"\xff\xfe not utf-8", "", "invalid task request"),
    ],
)
async def test_malformed_requests_get_bad_request(
    make_server: MakeServer, client: Node, body: bytes, task_id: str, mentions: str
) -> None:
    server = await make_server()
    response = await raw_exchange(client, server, encode_frame(body))
    assert error_code(response) == "bad_request"
    assert response.task_id == task_id
    assert response.error is not None and mentions in response.error.message


async def test_unknown_fields_are_ignored(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    body = b'{"task_id":"f","input":"ok","priority":9,"meta":{"a":[1,2]},"kind":"default"}'
    response = await raw_exchange(client, server, encode_frame(body))
    assert response.error is None and response.output == "ok" and response.task_id == "f"


async def test_truncated_request_is_bad_request(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    frame = encode_frame(b'{"task_id":"t","input":"xxxxxxxx"}')
    response = await raw_exchange(client, server, frame[:-5])
    assert error_code(response) == "bad_request"
    assert "ended before a whole request" in response.error.message  # type: ignore[union-attr]


async def test_silent_peer_gets_bad_request_after_the_read_timeout(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server(request_read_timeout=0.2)
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID])
    body = await read_frame(stream, 1 << 20)  # we never write
    assert body is not None
    response = decode_response(body)
    assert error_code(response) == "bad_request" and "no request within" in response.error.message  # type: ignore[union-attr]


async def test_oversized_length_prefix_is_refused_without_reading_the_body(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server(max_request_size=1024)
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID])
    # Announce 1 TiB and send only the prefix: the answer cannot depend on reading the body.
    await stream.write(encode_uvarint(1 << 40))
    body = await read_frame(stream, 1 << 20)
    assert body is not None
    response = decode_response(body)
    assert error_code(response) == "too_large"
    assert "1024" in response.error.message  # type: ignore[union-attr]
    with pytest.raises(StreamResetError):  # the rest of the request is refused
        await stream.write(b"x" * 100)
        await stream.read()


async def test_too_large_input_through_the_client(make_server: MakeServer, client: Node) -> None:
    server = await make_server(max_request_size=64 * 1024)
    addr = addr_of(server.node)
    with pytest.raises(TaskFailedError) as caught:
        await send_task(client, addr, "z" * (4 << 20))  # far beyond the window: the write blocks
    assert caught.value.code == "too_large"
    assert (await send_task(client, addr, "fits")).output == "fits"  # same connection still good


async def test_default_request_limit_is_one_mebibyte(make_server: MakeServer, client: Node) -> None:
    server = await make_server()
    addr = addr_of(server.node)
    assert len((await send_task(client, addr, "a" * 1_000_000)).output) == 1_000_000
    with pytest.raises(TaskFailedError, match="too_large"):
        await send_task(client, addr, "a" * (1 << 20))


async def test_reset_mid_request_is_logged_and_others_are_served(
    make_server: MakeServer, client: Node
) -> None:
    records: list[TaskLogRecord] = []
    server = await make_server(on_log=records.append)
    stream = await client.new_stream(addr_of(server.node), [PROTOCOL_ID])
    await stream.write(encode_frame(b'{"task_id":"cut","input":"' + b"q" * 5000 + b'"}')[:3000])
    stream.reset()
    assert (await send_task(client, addr_of(server.node), "after")).output == "after"
    assert any(r.outcome in ("failed", "bad_request") for r in records)


# -- limits, authorization, shutdown -----------------------------------------------------


async def test_busy_beyond_max_concurrent(make_server: MakeServer, client: Node) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)}, max_concurrent=2)
    addr = addr_of(server.node)
    held = [asyncio.create_task(send_task(client, addr, f"held{i}")) for i in range(2)]
    await gate.wait_entered(2)
    with pytest.raises(TaskRefusedError) as caught:
        await send_task(client, addr, "third")
    assert caught.value.code == "busy" and "retry later" in str(caught.value)
    gate.release.set()
    assert sorted(r.output for r in await asyncio.gather(*held)) == ["held0", "held1"]
    assert (await send_task(client, addr, "now fine")).output == "now fine"


async def test_only_allowed_peers_run_tasks(make_server: MakeServer, client: Node) -> None:
    records: list[TaskLogRecord] = []
    allowed = await start_node()
    try:
        server = await make_server(allow={allowed.peer_id}, on_log=records.append)
        addr = addr_of(server.node)
        with pytest.raises(TaskRefusedError) as caught:
            await send_task(client, addr, "x")
        assert caught.value.code == "unauthorized"
        assert str(client.peer_id) in str(caught.value)
        assert (await send_task(allowed, addr, "y")).output == "y"
    finally:
        await allowed.stop()
    outcomes = {(r.peer_id, r.outcome) for r in records}
    assert outcomes == {(str(client.peer_id), "unauthorized"), (str(allowed.peer_id), "ok")}


async def test_shutdown_finishes_running_tasks_and_refuses_new_ones(
    make_server: MakeServer, client: Node
) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)})
    addr = addr_of(server.node)
    running = [asyncio.create_task(send_task(client, addr, f"r{i}")) for i in range(5)]
    await gate.wait_entered(5)
    shutdown = asyncio.create_task(server.shutdown(grace=30))
    with pytest.raises(TaskRefusedError) as caught:
        await send_task(client, addr, "late")
    assert caught.value.code == "shutting_down"
    assert not shutdown.done()
    gate.release.set()
    await shutdown
    assert sorted(r.output for r in await asyncio.gather(*running)) == [f"r{i}" for i in range(5)]


async def test_shutdown_grace_expiry_still_answers(make_server: MakeServer, client: Node) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)})
    running = asyncio.create_task(send_task(client, addr_of(server.node), "stuck"))
    await gate.wait_entered(1)
    await server.shutdown(grace=0.2)
    with pytest.raises(TaskRefusedError) as caught:
        await running
    assert caught.value.code == "shutting_down" and "grace period" in str(caught.value)
    assert server.running == 0


async def test_node_stop_cancels_a_running_handler(make_server: MakeServer, client: Node) -> None:
    """Handlers run in their stream's own task: stopping the node ends them too."""
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(request: TaskRequest) -> str:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return request.input

    server = await make_server({"default": PythonHandler(stuck)})
    running = asyncio.create_task(send_task(client, addr_of(server.node), "x"))
    await asyncio.wait_for(entered.wait(), 10)
    assert server.running == 1
    await asyncio.wait_for(server.node.stop(), 10)
    assert cancelled.is_set()
    assert server.running == 0
    with pytest.raises(P2PError):
        await asyncio.wait_for(running, 10)


async def test_a_handler_that_finishes_as_the_grace_ends_is_answered(
    make_server: MakeServer, client: Node
) -> None:
    """A handler that catches the grace-period cancellation and returns is still answered,
    and the stream's task is left able to write that answer."""

    entered = asyncio.Event()

    async def stubborn(request: TaskRequest) -> str:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "finished anyway"
        return request.input

    def log(record: TaskLogRecord) -> None:  # runs in the stream's task, after the answer
        task = asyncio.current_task()
        assert task is not None
        pending_cancels.append(task.cancelling())

    pending_cancels: list[int] = []
    server = await make_server({"default": PythonHandler(stubborn)}, on_log=log)
    running = asyncio.create_task(send_task(client, addr_of(server.node), "x"))
    await asyncio.wait_for(entered.wait(), 10)
    await server.shutdown(grace=0.1)
    assert (await asyncio.wait_for(running, 10)).output == "finished anyway"
    assert pending_cancels == [0]  # the cancellation it swallowed is not left pending


async def test_every_task_is_logged(make_server: MakeServer, client: Node) -> None:
    records: list[TaskLogRecord] = []
    server = await make_server(on_log=records.append)
    addr = addr_of(server.node)
    await send_task(client, addr, "one")
    with pytest.raises(TaskRefusedError):
        await send_task(client, addr, "two", kind="nope")
    assert [(r.kind, r.outcome) for r in records] == [("default", "ok"), ("nope", "unknown_kind")]
    line = json.loads(format_log_json(records[1]))
    assert line["event"] == "task" and line["peer_id"] == str(client.peer_id)
    assert line["outcome"] == "unknown_kind" and line["task_id"] == records[1].task_id


async def test_client_refuses_an_oversized_response(make_server: MakeServer, client: Node) -> None:
    from p2pnode.protocols.task.client import send_task

    server = await make_server()
    with pytest.raises(DecodeError, match="exceeds"):
        await send_task(client, addr_of(server.node), "w" * 5000, max_response_size=1000)


async def test_client_timeout_resets_the_stream(make_server: MakeServer, client: Node) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)}, max_timeout=None)
    with pytest.raises(TaskTimeoutError, match="no response within"):
        await send_task(client, addr_of(server.node), "x", timeout=0.3)
    gate.release.set()


async def test_a_peer_that_does_not_read_its_answer_times_out_and_frees_the_slot(
    make_server: MakeServer, client: Node
) -> None:
    records: list[TaskLogRecord] = []
    given_up = asyncio.Event()

    def log(record: TaskLogRecord) -> None:
        records.append(record)
        if record.task_id == "stalled":
            given_up.set()

    def big(request: TaskRequest) -> str:
        return "o" * (24 << 20)  # more than the window and the socket buffers hold

    server = await make_server(
        {"default": PythonHandler(big), "echo": EchoHandler()},
        max_concurrent=1,
        max_response_size=32 << 20,
        response_write_timeout=0.5,
        on_log=log,
    )
    addr = addr_of(server.node)
    stream = await client.new_stream(addr, [PROTOCOL_ID])
    await stream.write(encode_frame(b'{"task_id":"stalled","input":""}'))
    await stream.close_write()
    stream.connection._transport.pause_reading()  # we never take the answer
    other = await start_node()
    try:
        with pytest.raises(TaskRefusedError, match="busy"):  # its output still holds the slot
            await send_task(other, addr, "x", kind="echo")
        await asyncio.wait_for(given_up.wait(), 10)
        assert (await send_task(other, addr, "free again", kind="echo")).output == "free again"
    finally:
        await other.stop()
    stalled = next(r for r in records if r.task_id == "stalled")
    assert stalled.outcome == "failed" and "did not take the response" in stalled.message


# -- a peer that opens a thousand task streams at once -----------------------------------


async def test_thousand_streams_at_once_memory_stays_bounded(
    make_server: MakeServer, client: Node
) -> None:
    gate = Gate()
    server = await make_server({"default": PythonHandler(gate)}, max_concurrent=64)
    addr = addr_of(server.node)
    conn = await client.connect(addr)
    request = encode_frame(b'{"task_id":"flood","input":"' + b"p" * 1000 + b'"}')

    async def one() -> str:
        try:
            stream = await conn.new_stream([PROTOCOL_ID], optimistic=True)
            await stream.write(request)
            await stream.close_write()
            body = await read_frame(stream, 1 << 20)
        except P2PError:
            return "reset"
        assert body is not None
        error = decode_response(body).error
        return error.code if error else "ok"

    tracemalloc.start()
    try:
        flood = [asyncio.create_task(one()) for _ in range(1000)]
        await gate.wait_entered(64)
        assert server.running == 64
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gate.release.set()
    outcomes = await asyncio.gather(*flood)
    assert outcomes.count("ok") >= 64
    assert set(outcomes) <= {"ok", "busy", "reset"}
    assert outcomes.count("busy") + outcomes.count("reset") > 0
    # 1000 requests of ~1 KB: the server holds them only transiently, never a copy per stream
    # beyond the muxer's limits; 64 MiB is far above that yet far below unbounded growth.
    assert peak < 64 << 20
    other = await start_node()
    try:
        assert (await send_task(other, addr, "still serving")).output == "still serving"
    finally:
        await other.stop()


# -- the decoders never raise anything but our own error ---------------------------------


_DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id":"x","input":"a","kind":' + b"[" * _DEEP + b"]" * _DEEP + b"}",
        b'{"task_id":"x","input":' + b"[" * _DEEP + b"]" * _DEEP + b"}",
        b'{"task_id":"x","input":"a","extra":' + b"[" * _DEEP + b"]" * _DEEP + b"}",
        b'{"task_id":"x","input":"a","extra":' + b'{"a":' * _DEEP + b"1" + b"}" * _DEEP + b"}",
        b'{"task_id":"x","input":"\xff\xfe"}',
        b'{"task_id":"x","input":"caf\xc3"}',
        b'{"task_id":"x","input":5}',
        b'{"task_id":["x"],"input":"a"}',
        b'{"task_id":"x","input":"a","timeout_ms":"soon"}',
        b"[1,2]",
    ],
    ids=["deep-kind", "deep-input", "deep-extra", "deep-object", "bad-utf8", "cut-utf8",
         "int-input", "list-id", "str-timeout", "array"],
)  # fmt: skip
def test_hostile_request_bodies_are_decode_errors(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_request(body)
    from p2pnode.protocols.task.messages import task_id_of

    assert isinstance(task_id_of(body), str)


async def test_deeply_nested_request_gets_bad_request(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server()
    body = b'{"task_id":"x","input":"a","extra":' + b"[" * _DEEP + b"]" * _DEEP + b"}"
    response = await raw_exchange(client, server, encode_frame(body))
    assert error_code(response) == "bad_request"
    deep_id = b'{"task_id":' + b"[" * _DEEP + b"]" * _DEEP + b',"input":"a"}'
    response = await raw_exchange(client, server, encode_frame(deep_id))
    assert error_code(response) == "bad_request"
    assert (await send_task(client, addr_of(server.node), "still up")).output == "still up"


@given(st.binary(max_size=300))
@settings(deadline=None)
def test_decode_request_fuzz(body: bytes) -> None:
    try:
        request = decode_request(body)
    except DecodeError:
        return
    assert isinstance(request.task_id, str) and isinstance(request.input, str)


@given(
    st.dictionaries(
        st.sampled_from(["task_id", "input", "kind", "timeout_ms", "extra", "output", "error"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=10), st.booleans()),
    )
)
@settings(deadline=None)
def test_decode_request_fuzz_structured(fields: dict[str, object]) -> None:
    body = json.dumps(fields).encode()
    try:
        request = decode_request(body)
    except DecodeError:
        return
    assert request.task_id == fields["task_id"] and request.input == fields["input"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


@given(st.sampled_from(["task_id", "input", "kind", "timeout_ms", "extra"]), _json_values)
@settings(deadline=None)
def test_decode_request_fuzz_any_json_in_any_field(field: str, value: object) -> None:
    fields: dict[str, object] = {"task_id": "t", "input": "i", field: value}
    try:
        request = decode_request(json.dumps(fields).encode())
    except DecodeError:
        return
    assert isinstance(request, TaskRequest)


def test_deep_response_is_a_decode_error() -> None:
    body = b'{"task_id":"x","output":"","latency_ms":1,"e":' + b"[" * _DEEP + b"]" * _DEEP + b"}"
    with pytest.raises(DecodeError):
        decode_response(body)


@given(st.binary(max_size=300))
def test_decode_response_fuzz(body: bytes) -> None:
    try:
        response = decode_response(body)
    except DecodeError:
        return
    assert isinstance(response.output, str)


def test_error_codes_map_to_error_types() -> None:
    from p2pnode.protocols.task.messages import error_from_response, error_response

    kinds: dict[type[TaskError], set[str]] = {}
    for code in ErrorCode:
        error = error_from_response(error_response("id", code, "why"))
        assert error.code == code.value and error.task_id == "id" and "why" in str(error)
        kinds.setdefault(type(error), set()).add(code.value)
    assert kinds[TaskRefusedError] == {"unauthorized", "busy", "shutting_down", "unknown_kind"}
    assert kinds[TaskTimeoutError] == {"timeout"}
    assert kinds[TaskFailedError] == {"bad_request", "too_large", "failed", "cancelled"}


def test_exec_spec_syntax() -> None:
    from p2pnode.errors import LocalProtocolError
    from p2pnode.protocols.task.handlers import parse_handler_specs

    handlers = parse_handler_specs(["upper=tr a-z A-Z", "my-kind_2=cat", "sort -r"], [])
    assert isinstance(handlers["upper"], ExecHandler) and handlers["upper"].argv[0] == "tr"
    assert isinstance(handlers["my-kind_2"], ExecHandler)
    default = handlers["default"]
    assert isinstance(default, ExecHandler) and default.argv == ["sort", "-r"]
    bad = {
        "LANG=C sort": "env LANG=C sort",
        "=cat": "empty",
        "echo=cat": "built in",
        "nope=/nonexistent/p2pnode-tool": "not found",
        "x=": "no command",
    }
    for spec, message in bad.items():
        with pytest.raises(LocalProtocolError, match=message):
            parse_handler_specs([spec], [])
    with pytest.raises(LocalProtocolError, match="twice"):
        parse_handler_specs(["a=cat", "a=sort"], [])


async def test_handler_exceptions_are_logged_and_hidden_from_the_peer(
    make_server: MakeServer, client: Node, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: TaskRequest) -> str:
        raise ValueError("secret path /etc/thing")

    server = await make_server({"broken": PythonHandler(broken)})
    with (
        caplog.at_level("ERROR", logger="p2pnode.protocols.task.server"),
        pytest.raises(TaskFailedError) as caught,
    ):
        await send_task(client, addr_of(server.node), "x", kind="broken")
    assert "secret" not in str(caught.value) and "see the server's log" in str(caught.value)
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.name == "p2pnode.protocols.task.server"
    assert record.exc_info is not None and "secret path" in caplog.text


async def test_exec_stderr_on_success_is_logged_at_debug(
    make_server: MakeServer, client: Node, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_server({"default": ExecHandler(["sh", "-c", "echo note >&2; cat"])})
    with caplog.at_level("DEBUG", logger="p2pnode.protocols.task.server"):
        assert (await send_task(client, addr_of(server.node), "in")).output == "in"
    assert any("note" in r.getMessage() and r.levelname == "DEBUG" for r in caplog.records)


async def test_sync_handlers_run_in_the_servers_own_threads(
    make_server: MakeServer, client: Node
) -> None:
    import threading

    def where(request: TaskRequest) -> str:
        return threading.current_thread().name

    server = await make_server({"default": PythonHandler(where)}, max_concurrent=3)
    name = (await send_task(client, addr_of(server.node), "x")).output
    assert name.startswith("p2pnode-task")
    executor = server._executor
    assert executor is not None and executor._max_workers == 3
    await server.shutdown(1)
    assert executor._shutdown


async def test_handlers_get_a_task_context(
    make_server: MakeServer, client: Node, tmp_path: Path
) -> None:
    from p2pnode.protocols.task.handlers import TaskContext

    seen: list[TaskContext] = []

    async def with_context(request: TaskRequest, context: TaskContext) -> str:
        seen.append(context)
        return context.peer_id

    script = 'echo "$P2PNODE_TASK_ID $P2PNODE_TASK_KIND $P2PNODE_PEER_ID $HOME"'
    server = await make_server(
        {"ctx": PythonHandler(with_context), "env": ExecHandler(["sh", "-c", script])}
    )
    addr = addr_of(server.node)
    result = await send_task(client, addr, "x", kind="ctx", timeout=20)
    assert result.output == str(client.peer_id)
    (context,) = seen
    assert context.kind == "ctx" and context.task_id == result.task_id
    assert context.deadline is not None
    env = await send_task(client, addr, "x", kind="env")
    assert env.output.split() == [env.task_id, "env", str(client.peer_id), os.environ["HOME"]]


def test_handler_signatures_are_checked_at_start() -> None:
    from p2pnode.errors import LocalProtocolError

    def none() -> str:
        return ""

    def three(a: object, b: object, c: object) -> str:
        return ""

    for func in (none, three):
        with pytest.raises(LocalProtocolError, match="parameters"):
            PythonHandler(func)  # type: ignore[arg-type]
    PythonHandler(lambda request, context=None: "")


# -- answer memory -------------------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_peer_that_does_not_read_its_answers_gets_busy_not_more_memory(
    make_server: MakeServer, client: Node
) -> None:
    size = 20_000_000  # beyond the 16 MiB our client's yamux buffers without reading

    async def big(request: TaskRequest) -> str:
        return "x" * size

    server = await make_server(
        {"default": EchoHandler(), "big": PythonHandler(big)},
        max_response_size=2 * size,
        max_answer_memory_per_peer=30_000_000,
    )
    addr = addr_of(server.node)
    request = encode_frame(msgspec.json.encode(TaskRequest("unread", "", kind="big")))
    unread = await client.new_stream(addr, [PROTOCOL_ID])
    await unread.write(request)
    await unread.close_write()  # and never read
    await wait_until(lambda: server.answer_memory.used_by(client.peer_id) > 0)
    held = server.answer_memory.used_by(client.peer_id)
    assert held > size

    with pytest.raises(TaskRefusedError) as refused:  # a second one would not fit
        await send_task(client, addr, "", kind="big", timeout=10)
    assert refused.value.code == "busy"
    assert "still unread" in str(refused.value)
    assert server.answer_memory.used_by(client.peer_id) == held  # nothing more held
    small = await send_task(client, addr, "small answers still fit", timeout=10)
    assert small.output == "small answers still fit"

    other = await start_node()
    try:  # another peer has its own share
        result = await send_task(
            other, addr, "", kind="big", timeout=10, max_response_size=2 * size
        )
        assert len(result.output) == size
    finally:
        await other.stop()

    body = await read_frame(unread, 2 * size)  # the first peer reads at last
    assert body is not None and len(decode_response(body).output) == size
    await wait_until(lambda: server.answer_memory.node.used == 0)


async def test_busy_replies_to_a_peer_that_does_not_read_hold_no_outputs(
    make_server: MakeServer, client: Node
) -> None:
    """Outputs refused for want of answer memory are dropped at once, even while their
    ``busy`` replies wait for a socket the peer does not drain."""
    size = 12 << 20  # more than loopback's socket buffers take: the connection backs up
    gate = Gate()

    async def big(request: TaskRequest) -> str:
        await gate(request)  # every task is past negotiation before any output is written
        return "x" * size

    server = await make_server(
        {"default": PythonHandler(big)},
        max_response_size=2 * size,
        max_answer_memory_per_peer=size + (1 << 20),  # room for one answer
    )
    conn = await client.connect(addr_of(server.node))
    request = encode_frame(msgspec.json.encode(TaskRequest("unread", "")))
    for _ in range(9):
        stream = await conn.new_stream([PROTOCOL_ID], optimistic=True)
        await stream.write(request)
        await stream.close_write()
    await gate.wait_entered(9)
    conn._transport.pause_reading()  # we never read an answer
    tracemalloc.start()
    try:
        gate.release.set()
        await wait_until(lambda: server._answering == 9)  # one answer, eight busy replies
        await asyncio.sleep(0.1)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the answer encoded (in the budget) and pieces of it on their way; each of the
    # eight busy replies waiting for the socket used to keep its 12 MiB output alive
    assert held < 3 * size, f"{held / 2**20:.0f} MiB held for 9 outputs of 12 MiB"


async def test_unfinished_requests_from_one_peer_are_held_within_its_share(
    make_server: MakeServer, client: Node
) -> None:
    server = await make_server(max_request_memory_per_peer=4_000_000)
    addr = addr_of(server.node)
    # each stream announces a 1 MB request and sends 900 kB of it, never the rest
    body = msgspec.json.encode(TaskRequest("t", "x" * 1_000_000))
    unfinished = encode_uvarint(len(body)) + body[:900_000]
    streams = [await client.new_stream(addr, [PROTOCOL_ID]) for _ in range(8)]
    for stream in streams:
        with contextlib.suppress(StreamResetError):  # the server may refuse it midway
            await stream.write(unfinished)
    await wait_until(lambda: server.request_memory.used_by(client.peer_id) >= 3_600_000)
    assert server.request_memory.used_by(client.peer_id) <= 4_000_000  # four fit, no more
    refusals = []
    for stream in streams[4:]:  # told why, then reset
        with contextlib.suppress(StreamResetError):
            frame = await asyncio.wait_for(read_frame(stream, 1 << 20), 10)
            refusals.append(decode_response(frame or b""))
    assert refusals and all(r.error and r.error.code == "busy" for r in refusals)
    assert "unfinished requests" in refusals[0].error.message  # type: ignore[union-attr]
    small = await send_task(client, addr, "one read", timeout=10)  # small ones still run
    assert small.output == "one read"
    for stream in streams:
        stream.reset()
    await wait_until(lambda: server.request_memory.node.used == 0)


async def test_the_client_lets_a_server_close_after_its_answer(server: Node) -> None:
    """A server that closes its side a moment after the answer (py-libp2p does) finishes
    cleanly even when the client's process stops its node at once (the CLI)."""
    closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def answer_then_close(stream: Stream) -> None:
        body = await read_frame(stream, 1 << 20)
        assert body is not None
        request = decode_request(body)
        await stream.write(encode_frame(encode_response(TaskResponse(request.task_id, "ok", 0))))
        await asyncio.sleep(0.05)  # the close goes out later, on its own
        if stream.connection.is_closed:
            closed.set_result("the client had gone before the server's close")
            return
        await stream.close_write()
        closed.set_result("closed")

    server.set_handler(PROTOCOL_ID, answer_then_close)
    client = await start_node()
    try:
        result = await send_task(client, addr_of(server), "x", timeout=5)
    finally:
        await client.stop()
    assert result.output == "ok"
    assert await asyncio.wait_for(closed, 5) == "closed"
