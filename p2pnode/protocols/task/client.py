"""Sending a task: one stream, one request, one response."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import msgspec

from p2pnode.errors import DecodeError, P2PError, StreamResetError
from p2pnode.net.framed import read_frame
from p2pnode.protocols.task.messages import (
    DEFAULT_KIND,
    MAX_RESPONSE_SIZE,
    PROTOCOL_ID,
    TaskRequest,
    TaskTimeoutError,
    decode_response,
    encode_request,
    error_from_response,
    new_task_id,
)
from p2pnode.wire.framing import encode_frame

if TYPE_CHECKING:
    from p2pnode.net.host import Host, PeerLike
    from p2pnode.net.stream import Stream

#: How long, after the answer, the peer gets to close its side of the stream. Servers that
#: send their close apart from the answer (py-libp2p) would otherwise find the connection
#: gone under them when a short-lived client (the CLI) exits at once, and log a failure.
PEER_CLOSE_GRACE = 0.25


class TaskResult(msgspec.Struct):
    """A finished task: the output, the peer's handler time, and our timings."""

    task_id: str
    output: str
    latency_ms: int
    connect_ms: float
    round_trip_ms: float


async def send_task(
    node: Host,
    peer: PeerLike,
    input: str,
    *,
    kind: str = DEFAULT_KIND,
    timeout: float | None = None,
    task_id: str | None = None,
    max_response_size: int = MAX_RESPONSE_SIZE,
) -> TaskResult:
    """Run one task on ``peer``; raise a TaskError subclass when the peer reports a failure."""
    task_id = task_id or new_task_id()
    request = TaskRequest(
        task_id, input, kind, round(timeout * 1000) if timeout is not None else None
    )
    try:
        async with asyncio.timeout(timeout):
            started = time.perf_counter()
            conn = await node.connect(peer)
            connected = time.perf_counter()
            stream = await conn.new_stream([PROTOCOL_ID], optimistic=True)
            try:
                try:
                    await stream.write(encode_frame(encode_request(request)))
                    await stream.close_write()
                except StreamResetError:
                    pass  # refused before it read everything: its answer may be buffered
                body = await read_frame(stream, max_response_size)
            except BaseException:
                stream.reset()
                raise
            finished = time.perf_counter()
    except TimeoutError:
        raise TaskTimeoutError(
            "timeout", f"task {task_id}: no response within {timeout}s", task_id
        ) from None
    if body is None:
        raise DecodeError(f"task {task_id}: the peer closed the stream without answering")
    await _await_peer_close(stream)
    response = decode_response(body)
    if response.error is not None:
        raise error_from_response(response)
    if response.task_id != task_id:
        raise DecodeError(f"task {task_id}: the peer answered for task {response.task_id!r}")
    return TaskResult(
        task_id,
        response.output,
        response.latency_ms,
        round((connected - started) * 1000, 3),
        round((finished - connected) * 1000, 3),
    )


async def _await_peer_close(stream: Stream) -> None:
    """Give the peer a moment to close its side after its answer; reset if it sends more."""
    if stream.at_eof:
        return
    with contextlib.suppress(P2PError, TimeoutError):
        async with asyncio.timeout(PEER_CLOSE_GRACE):
            if await stream.read(1):
                stream.reset()  # bytes after the answer: nothing we will read
