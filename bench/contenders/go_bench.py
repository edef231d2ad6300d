"""The go-libp2p contender (bench/CONTRACT.md): go-libp2p v0.32.1 inside the ``p2pd`` daemon of
the hivemind 1.1.12 wheel (tests/interop/go/install_p2pd.sh), driven over its control socket
by our client ``tests/interop/p2pd.py``.

What each figure contains:

- the connection work (TCP, multistream, Noise, yamux, identify) and the ping protocol are
  go's own: the server's ping is go's ping service, with nothing in Python behind it;
- every stream that reaches Python crosses the daemon's bridge: a unix-socket connection
  that the daemon copies to and from the libp2p stream. The client's streams always do (the
  client is Python driving a daemon); the server's task and bulk handlers are Python behind
  the bridge too. So ping, task, rate and throughput include one bridge on the client and
  (task, rate, throughput) one more on the server, plus the Python asyncio code at each end;
- ``connect`` and every ``task`` sample include control-socket round trips (a new unix
  connection and a request per CONNECT / STREAM_OPEN), which a go program would not pay.

The bridge passes no half-close (a FIN closes the other side fully), so the task client
writes its request and reads the length-prefixed response without closing its write side,
and bulk transfers end by byte counts. The server's handlers never close first: when the
unix side ends, p2pd closes the stream, and its other copy loop, failing on the closed
stream, resets it (doStreamPipe); the reset can discard the answer's last bytes before the
client's daemon has passed them on (seen: with 4 tasks in flight, a response was lost
within a few thousand tasks). So a handler answers, then waits for the client to close.

Both ends allow only Noise (``-tls=false``); go has only yamux. The daemons listen on
127.0.0.1 and dial nothing by themselves: no bootstrap (no ``-b``), no DHT, no relay
(``-relay=false``); AutoNAT, NAT port mapping and auto-relay are off by default; p2pd has
no mDNS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr
from tests.interop.p2pd import (
    P2pd,
    StreamInfo,
    close_writer,
    encode_uvarint,
    read_delimited,
)

from .contract import (
    BULK_HEADER,
    BULK_PROTOCOL,
    BULK_RECEIVE,
    BULK_SEND,
    asyncio_runner,
    bulk_pieces,
    parse_args,
    run_and_report,
    until_stopped,
)

PING = "/ipfs/ping/1.0.0"
TASK = "/p2pnode/task/1.0.0"
FLAGS = ["-tls=false", "-relay=false"]  # Noise only; see the module docstring for the rest
MAX_MESSAGE = 4 << 20  # task messages: up to 2 MiB of input plus JSON
READ_SIZE = 1 << 20
HOLD = 30.0  # seconds a server handler waits, after its answer, for the client to close
CLIENT_DEADLINE = 270.0  # seconds; run.py kills a client after 300 s, this reports why instead

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def check_muxer(muxer: str) -> None:
    if muxer != "yamux":  # p2pd accepts -muxer mplex but still offers yamux only
        raise ValueError(f"go-libp2p in p2pd offers only yamux, not {muxer!r}")


def frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return encode_uvarint(len(body)) + body


async def discard(reader: Reader, size: int) -> None:
    """Read and drop ``size`` bulk bytes."""
    while size:
        chunk = await reader.read(min(size, READ_SIZE))
        if not chunk:
            raise RuntimeError(f"bulk data ended {size} bytes early")
        size -= len(chunk)


# --- server: go's host, with the task and bulk handlers in Python behind the bridge ---------


async def until_client_closes(reader: Reader) -> None:
    """Hold the stream open until the client closes it (see the module docstring)."""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(HOLD):
            while await reader.read(READ_SIZE):
                pass


async def task_handler(info: StreamInfo, reader: Reader, writer: Writer) -> None:
    """docs/task-protocol.md with the echo handler."""
    request = json.loads(await read_delimited(reader, MAX_MESSAGE))
    ok = isinstance(request, dict) and isinstance(request.get("input"), str)
    response: dict[str, Any] = {
        "task_id": request.get("task_id", "") if isinstance(request, dict) else "",
        "output": request["input"] if ok else "",
        "latency_ms": 0,
    }
    if not ok:
        response["error"] = {"code": "bad_request", "message": "a JSON object with input"}
    elif request.get("kind", "default") != "default":
        response["output"] = ""
        response["error"] = {"code": "unknown_kind", "message": "kinds: default"}
    writer.write(frame(response))
    await writer.drain()
    await until_client_closes(reader)


async def bulk_handler(info: StreamInfo, reader: Reader, writer: Writer) -> None:
    size, mode = BULK_HEADER.unpack(await reader.readexactly(BULK_HEADER.size))
    if mode == BULK_SEND:
        for piece in bulk_pieces(size):
            writer.write(piece)
            await writer.drain()
    else:
        await discard(reader, size)
        writer.write(b"\x01")
        await writer.drain()
    await until_client_closes(reader)


async def serve(args: argparse.Namespace) -> None:
    check_muxer(args.muxer)
    async with P2pd(extra_args=FLAGS) as go:
        await go.add_handler(TASK, task_handler)
        await go.add_handler(BULK_PROTOCOL, bulk_handler)
        addr = Multiaddr.from_bytes(go.addrs[0]).with_peer_id(PeerId.from_bytes(go.peer_id))
        print(json.dumps({"event": "listening", "addr": str(addr)}), flush=True)
        await until_stopped()
        for exc in go.handler_errors:
            print(f"go_bench server: handler failed: {exc!r}", file=sys.stderr)


# --- client: a second daemon, driven over its control socket --------------------------------


class Target:
    """The server's PeerId and address, as the control protocol takes them (binary)."""

    def __init__(self, text: str) -> None:
        addr = Multiaddr.from_string(text)
        if addr.peer_id is None:
            raise ValueError(f"{text} has no /p2p/<id>")
        self.peer = addr.peer_id.to_bytes()
        self.addrs = [addr.without_peer_id().to_bytes()]

    async def connect(self, go: P2pd) -> None:
        await go.connect(self.peer, self.addrs)


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    check_muxer(args.muxer)
    async with asyncio.timeout(CLIENT_DEADLINE), P2pd(extra_args=FLAGS) as go:
        return await MEASUREMENTS[args.measurement](go, Target(args.addr), args)


async def connect(go: P2pd, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """CONNECT, then STREAM_OPEN of ping: two control round trips inside each sample."""
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        await target.connect(go)
        _, writer, _ = await go.open_stream(target.peer, [PING])
        samples.append(ms_since(started))
        await close_writer(writer)
        await go.disconnect(target.peer)
        if any(p.peer == target.peer for p in await go.list_peers()):
            raise RuntimeError("still connected after DISCONNECT: the next sample would not dial")
    return {"measurement": "connect", "samples_ms": samples}


async def ping(go: P2pd, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    await target.connect(go)
    reader, writer, _ = await go.open_stream(target.peer, [PING])
    payload = os.urandom(32)
    samples = []
    try:
        for _ in range(args.n + 20):  # the first 20 warm up
            started = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            if await reader.readexactly(32) != payload:
                raise RuntimeError("ping answered with other bytes")
            samples.append(ms_since(started))
    finally:
        await close_writer(writer)
    return {"measurement": "ping", "samples_ms": samples[20:]}


async def one_task(go: P2pd, target: Target, text: str) -> None:
    """One task on a new stream: STREAM_OPEN, the request, the response (no half-close)."""
    task_id = os.urandom(8).hex()
    reader, writer, _ = await go.open_stream(target.peer, [TASK])
    try:
        writer.write(frame({"task_id": task_id, "input": text}))
        await writer.drain()
        response = json.loads(await read_delimited(reader, MAX_MESSAGE))
    finally:
        writer.close()  # not awaited: the response is complete
    if response.get("error") or response.get("output") != text:
        raise RuntimeError(f"task {task_id} failed: {str(response)[:200]}")


async def task(go: P2pd, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    await target.connect(go)
    text = "x" * args.size
    for _ in range(min(20, args.n)):
        await one_task(go, target, text)
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        await one_task(go, target, text)
        samples.append(ms_since(started))
    return {"measurement": "task", "size": args.size, "samples_ms": samples}


async def rate(go: P2pd, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """One daemon (one go host) per connection: a host keeps one connection to a peer."""
    async with AsyncExitStack() as stack:
        others = [P2pd(extra_args=FLAGS) for _ in range(args.connections - 1)]
        for daemon in others:
            stack.push_async_callback(daemon.stop)
        outcomes = await asyncio.gather(*(d.start() for d in others), return_exceptions=True)
        for failure in outcomes:  # raised once all have finished starting, so all are stopped
            if isinstance(failure, BaseException):
                raise failure
        daemons = [go, *others]
        for daemon in daemons:
            await target.connect(daemon)
        text = "x" * 64
        per_connection = args.n // args.connections

        async def worker(daemon: P2pd, count: int) -> None:
            for _ in range(count):
                await one_task(daemon, target, text)

        async def run(total: int) -> None:
            jobs = []
            for daemon in daemons:
                share, extra = divmod(total, args.inflight)
                jobs += [worker(daemon, share + (i < extra)) for i in range(args.inflight)]
            await asyncio.gather(*jobs)

        await run(min(200, per_connection))
        started = time.perf_counter()
        await run(per_connection)
        seconds = time.perf_counter() - started
    return {
        "measurement": "rate",
        "tasks": per_connection * args.connections,
        "inflight": args.inflight,
        "connections": args.connections,
        "seconds": seconds,
    }


async def throughput(go: P2pd, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    await target.connect(go)
    per_stream = args.bytes // args.streams

    async def one(size: int) -> None:
        reader, writer, _ = await go.open_stream(target.peer, [BULK_PROTOCOL])
        try:
            if args.direction == "up":
                writer.write(BULK_HEADER.pack(size, BULK_RECEIVE))
                for piece in bulk_pieces(size):
                    writer.write(piece)
                    await writer.drain()
                if await reader.readexactly(1) != b"\x01":
                    raise RuntimeError("the server did not confirm the upload")
            else:
                writer.write(BULK_HEADER.pack(size, BULK_SEND))
                await writer.drain()
                await discard(reader, size)  # by count: the server's close does not cross
        finally:
            await close_writer(writer)

    await asyncio.gather(*(one(min(per_stream, 4 << 20)) for _ in range(args.streams)))
    started = time.perf_counter()
    await asyncio.gather(*(one(per_stream) for _ in range(args.streams)))
    seconds = time.perf_counter() - started
    return {
        "measurement": "throughput",
        "bytes": per_stream * args.streams,
        "streams": args.streams,
        "direction": args.direction,
        "seconds": seconds,
    }


MEASUREMENTS: dict[str, Callable[[P2pd, Target, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "connect": connect,
    "ping": ping,
    "task": task,
    "rate": rate,
    "throughput": throughput,
}


def main() -> None:
    args = parse_args(MEASUREMENTS, __doc__)
    runner = asyncio_runner(args)
    if args.mode == "server":
        run_and_report(lambda: runner(serve(args)))
    else:
        run_and_report(lambda: runner(measure(args)))


if __name__ == "__main__":
    main()
