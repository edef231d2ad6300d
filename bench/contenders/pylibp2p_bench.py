"""py-libp2p contender (PyPI ``libp2p``, trio): bench/CONTRACT.md with Noise + yamux.

Runs in its own virtualenv (bench/contenders/install_pylibp2p.sh), never in p2pnode's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from .contract import (
    BULK_HEADER,
    BULK_PROTOCOL,
    BULK_RECEIVE,
    BULK_SEND,
    bulk_pieces,
    parse_args,
    run_and_report,
)

PING = TProtocol("/ipfs/ping/1.0.0")
TASK = TProtocol("/p2pnode/task/1.0.0")
BULK = TProtocol(BULK_PROTOCOL)
MAX_MESSAGE = 4 << 20


def uvarint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame(body: bytes) -> bytes:
    return uvarint(len(body)) + body


class Reader:
    """Buffered reads on a py-libp2p stream (its read(n) returns at most n bytes)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def fill(self) -> bool:
        chunk = await self.stream.read(1 << 20)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self.fill():
                raise EOFError(f"stream ended after {len(self.buffer)} of {size} bytes")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def message(self) -> bytes:
        while True:
            value = shift = 0
            for pos, byte in enumerate(self.buffer):
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    del self.buffer[: pos + 1]
                    if value > MAX_MESSAGE:
                        raise ValueError(f"message of {value} bytes is too large")
                    return await self.exactly(value)
            if not await self.fill():
                raise EOFError("stream ended before a length prefix")


async def task_handler(stream: Any) -> None:
    started = time.perf_counter()
    request = json.loads(await Reader(stream).message())
    response = {
        "task_id": request["task_id"],
        "output": request["input"],
        "latency_ms": round((time.perf_counter() - started) * 1000),
    }
    await stream.write(frame(json.dumps(response).encode()))
    await stream.close()


async def bulk_handler(stream: Any) -> None:
    reader = Reader(stream)
    size, mode = BULK_HEADER.unpack(await reader.exactly(BULK_HEADER.size))
    if mode == BULK_SEND:
        for piece in bulk_pieces(size):
            await stream.write(piece)
    else:
        remaining = size - len(reader.buffer)
        reader.buffer.clear()
        while remaining > 0:
            chunk = await stream.read(1 << 20)
            if not chunk:
                raise EOFError("bulk sender stopped early")
            remaining -= len(chunk)
        await stream.write(b"\x01")
    await stream.close()


def make_host(muxer: str) -> Any:
    return new_host(muxer_preference=muxer.upper())


def full_addr(host: Any) -> str:
    for addr in host.get_addrs():
        text = str(addr)
        if "/tcp/" in text:
            return text if "/p2p/" in text else f"{text}/p2p/{host.get_id()}"
    raise RuntimeError("the host has no TCP address")


async def serve(muxer: str) -> None:
    host = make_host(muxer)
    host.set_stream_handler(TASK, task_handler)
    host.set_stream_handler(BULK, bulk_handler)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            print(json.dumps({"event": "listening", "addr": full_addr(host)}), flush=True)
            async for _ in signals:
                break


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def send_task(host: Any, peer: Any, text: str) -> None:
    stream = await host.new_stream(peer, [TASK])
    body = json.dumps({"task_id": os.urandom(8).hex(), "input": text}).encode()
    await stream.write(frame(body))
    await stream.close_write()
    response = json.loads(await Reader(stream).message())
    if response.get("output") != text:
        raise RuntimeError(f"bad task response {str(response)[:200]}")
    await stream.close()


async def connect(host: Any, info: Any, args: argparse.Namespace) -> dict[str, Any]:
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        await host.connect(info)
        await host.new_stream(info.peer_id, [PING])
        samples.append(ms_since(started))
        await host.disconnect(info.peer_id)
    return {"measurement": "connect", "samples_ms": samples}


async def ping(host: Any, info: Any, args: argparse.Namespace) -> dict[str, Any]:
    await host.connect(info)
    stream = await host.new_stream(info.peer_id, [PING])
    reader = Reader(stream)
    payload = bytes(32)
    samples = []
    for _ in range(args.n + 20):  # the first 20 warm up
        started = time.perf_counter()
        await stream.write(payload)
        await reader.exactly(32)
        samples.append(ms_since(started))
    return {"measurement": "ping", "samples_ms": samples[20:]}


async def task(host: Any, info: Any, args: argparse.Namespace) -> dict[str, Any]:
    await host.connect(info)
    text = "x" * args.size
    for _ in range(min(20, args.n)):
        await send_task(host, info.peer_id, text)
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        await send_task(host, info.peer_id, text)
        samples.append(ms_since(started))
    return {"measurement": "task", "size": args.size, "samples_ms": samples}


async def rate(host: Any, info: Any, args: argparse.Namespace) -> dict[str, Any]:
    per_connection = args.n // args.connections
    result: dict[str, Any] = {}

    async def run_on(hosts: list[Any], total: int) -> None:
        async def worker(h: Any, count: int) -> None:
            for _ in range(count):
                await send_task(h, info.peer_id, "x" * 64)

        async with trio.open_nursery() as nursery:
            for h in hosts:
                share, extra = divmod(total, args.inflight)
                for i in range(args.inflight):
                    nursery.start_soon(worker, h, share + (i < extra))

    async def with_hosts(hosts: list[Any]) -> None:
        if len(hosts) < args.connections:
            extra = make_host(args.muxer)
            async with extra.run(listen_addrs=[]):
                await with_hosts([*hosts, extra])
            return
        for h in hosts:
            await h.connect(info)
        await run_on(hosts, min(200, per_connection))
        started = time.perf_counter()
        await run_on(hosts, per_connection)
        result["seconds"] = time.perf_counter() - started

    await with_hosts([host])
    return {
        "measurement": "rate",
        "tasks": per_connection * args.connections,
        "inflight": args.inflight,
        "connections": args.connections,
        "seconds": result["seconds"],
    }


async def throughput(host: Any, info: Any, args: argparse.Namespace) -> dict[str, Any]:
    await host.connect(info)
    per_stream = args.bytes // args.streams

    async def one(size: int) -> None:
        stream = await host.new_stream(info.peer_id, [BULK])
        if args.direction == "up":
            await stream.write(BULK_HEADER.pack(size, BULK_RECEIVE))
            for piece in bulk_pieces(size):
                await stream.write(piece)
            await Reader(stream).exactly(1)
        else:
            await stream.write(BULK_HEADER.pack(size, BULK_SEND))
            await stream.close_write()
            remaining = size
            while remaining > 0:
                chunk = await stream.read(1 << 20)
                if not chunk:
                    raise EOFError("bulk source stopped early")
                remaining -= len(chunk)
        await stream.close()

    async def all_streams(size: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(args.streams):
                nursery.start_soon(one, size)

    await all_streams(min(per_stream, 4 << 20))
    started = time.perf_counter()
    await all_streams(per_stream)
    seconds = time.perf_counter() - started
    return {
        "measurement": "throughput",
        "bytes": per_stream * args.streams,
        "streams": args.streams,
        "direction": args.direction,
        "seconds": seconds,
    }


MEASUREMENTS: dict[str, Callable[[Any, Any, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "connect": connect,
    "ping": ping,
    "task": task,
    "rate": rate,
    "throughput": throughput,
}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    host = make_host(args.muxer)
    info = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
    async with host.run(listen_addrs=[]):
        return await MEASUREMENTS[args.measurement](host, info, args)


def main() -> None:
    args = parse_args(MEASUREMENTS, __doc__, asyncio_program=False)
    if args.mode == "server":
        run_and_report(lambda: trio.run(serve, args.muxer))
    else:
        run_and_report(lambda: trio.run(measure, args))
    # py-libp2p leaves background services behind: do not wait for them at exit
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
