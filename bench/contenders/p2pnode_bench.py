"""The p2pnode contender (bench/CONTRACT.md). ``--uvloop`` runs it on uvloop."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from p2pnode import Identity, Node, NodeConfig, Stream
from p2pnode.protocols.task.client import send_task
from p2pnode.protocols.task.handlers import EchoHandler
from p2pnode.protocols.task.server import TaskServer

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


async def receive_exactly(stream: Stream, size: int) -> None:
    """Read and drop ``size`` bulk bytes."""
    while size:
        chunk = await stream.read()
        if not chunk:
            raise RuntimeError(f"bulk data ended {size} bytes early")
        size -= len(chunk)


async def bulk_handler(stream: Stream) -> None:
    size, mode = BULK_HEADER.unpack(await stream.readexactly(BULK_HEADER.size))
    if mode == BULK_SEND:
        for piece in bulk_pieces(size):
            await stream.write(piece)
    else:
        await receive_exactly(stream, size)
        await stream.write(b"\x01")
    await stream.close()


async def serve(muxers: tuple[str, ...]) -> None:
    node = await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=muxers)
    )
    handlers = {"default": EchoHandler()}
    TaskServer(node, handlers, max_concurrent=4096, max_request_size=2 << 20).install()
    node.set_handler(BULK_PROTOCOL, bulk_handler)
    addr = str(node.listen_addrs[0].with_peer_id(node.peer_id))
    print(json.dumps({"event": "listening", "addr": addr}), flush=True)
    gc.collect()  # as `p2pnode serve` does once it is up (p2pnode/serve.py)
    gc.freeze()
    await until_stopped()
    await node.stop()


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    muxers = tuple(args.muxer.split(","))
    node = Node(Identity.generate(), NodeConfig(muxers=muxers, keepalive_interval=None))
    try:
        return await MEASUREMENTS[args.measurement](node, args)
    finally:
        await node.stop()


async def connect(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        conn = await node.dial(args.addr)
        await conn.new_stream(["/ipfs/ping/1.0.0"])
        samples.append(ms_since(started))
        await conn.close()
    return {"measurement": "connect", "samples_ms": samples}


async def ping(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    conn = await node.dial(args.addr)
    stream = await conn.new_stream(["/ipfs/ping/1.0.0"])
    rtts = await _pings(stream, args.n + 20)  # the first 20 warm up
    return {"measurement": "ping", "samples_ms": rtts[20:]}


async def _pings(stream: Stream, count: int) -> list[float]:
    payload = bytes(32)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await stream.write(payload)
        await stream.readexactly(32)
        samples.append(ms_since(started))
    return samples


async def task(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    conn = await node.dial(args.addr)
    text = "x" * args.size
    for _ in range(min(20, args.n)):
        await send_task(node, conn.remote_peer, text)
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        await send_task(node, conn.remote_peer, text)
        samples.append(ms_since(started))
    return {"measurement": "task", "size": args.size, "samples_ms": samples}


async def rate(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    nodes = [node] + [
        Node(Identity.generate(), NodeConfig(keepalive_interval=None))
        for _ in range(args.connections - 1)
    ]
    try:
        peers = [(await n.dial(args.addr)).remote_peer for n in nodes]
        text = "x" * 64
        per_connection = args.n // args.connections

        async def worker(n: Node, count: int) -> None:
            for _ in range(count):
                await send_task(n, peers[0], text)

        async def run(total: int) -> None:
            jobs = []
            for n in nodes:
                share, extra = divmod(total, args.inflight)
                jobs += [worker(n, share + (i < extra)) for i in range(args.inflight)]
            await asyncio.gather(*jobs)

        await run(min(200, per_connection))
        started = time.perf_counter()
        await run(per_connection)
        seconds = time.perf_counter() - started
    finally:
        for extra_node in nodes[1:]:
            await extra_node.stop()
    return {
        "measurement": "rate",
        "tasks": per_connection * args.connections,
        "inflight": args.inflight,
        "connections": args.connections,
        "seconds": seconds,
    }


async def throughput(node: Node, args: argparse.Namespace) -> dict[str, Any]:
    conn = await node.dial(args.addr)
    per_stream = args.bytes // args.streams

    async def one(size: int) -> None:
        stream = await conn.new_stream([BULK_PROTOCOL])
        if args.direction == "up":
            await stream.write(BULK_HEADER.pack(size, BULK_RECEIVE))
            for piece in bulk_pieces(size):
                await stream.write(piece)
            await stream.readexactly(1)
        else:
            await stream.write(BULK_HEADER.pack(size, BULK_SEND))
            await stream.close_write()
            await receive_exactly(stream, size)
        await stream.close()

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


MEASUREMENTS: dict[str, Callable[[Node, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
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
        run_and_report(lambda: runner(serve(tuple(args.muxer.split(",")))))
    else:
        run_and_report(lambda: runner(measure(args)))


if __name__ == "__main__":
    main()
