"""Task protocol 2 against protocol 1, side by side in interleaved rounds.

A p2pnode server runs in its own process (echo for both protocols, a streaming ``blob``
kind, the bulk protocol); this process is the client. Each round measures on one
connection: 64 B task round trips and tasks/s with 64 in flight, protocol 1 and 2 in
alternating slices (ABBA, so that the machine's drift hits both alike); one streamed
64 MiB task output against one bulk stream of 64 MiB (the one-stream throughput
figure); and the time to the first chunk of a streamed task. Ratios are taken per
round; the report gives their median and spread.

    python -m bench.task2 [--rounds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from bench.contenders.contract import BULK_HEADER, BULK_PROTOCOL, BULK_SEND
from bench.contenders.p2pnode_bench import bulk_handler, receive_exactly
from p2pnode import Identity, Node, NodeConfig
from p2pnode.protocols.task.client import send_task
from p2pnode.protocols.task.client2 import run_task, stream_task
from p2pnode.protocols.task.handlers import EchoHandler, PythonHandler
from p2pnode.protocols.task.handlers2 import Task
from p2pnode.protocols.task.messages2 import OutputChunk
from p2pnode.protocols.task.server import TaskServer
from p2pnode.wire.identity import PeerId

BLOCK = bytes(range(256)) * 1024  # 256 KiB


async def blob(task: Task) -> AsyncIterator[bytes]:
    """``metadata.size`` bytes in 256 KiB chunks."""
    left = int(task.metadata.get("size", 0))
    while left > 0:
        piece = BLOCK if left >= len(BLOCK) else BLOCK[:left]
        left -= len(piece)
        yield piece


async def serve() -> None:
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    handlers = {"default": EchoHandler(), "blob": PythonHandler(blob)}
    TaskServer(node, handlers, max_concurrent=4096).install()
    node.set_handler(BULK_PROTOCOL, bulk_handler)
    print(json.dumps({"addr": str(node.listen_addrs[0].with_peer_id(node.peer_id))}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    await node.stop()


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


Call = Callable[[], Awaitable[Any]]
SLICES = 8  # each figure of the two protocols is measured in this many alternating slices


def _order(i: int, a: Call, b: Call) -> tuple[Call, Call]:
    """ABBA: slice i of the pair, so that a drift of the machine's speed hits both alike."""
    return (a, b) if i % 4 in (0, 3) else (b, a)


async def round_trip_pair(a: Call, b: Call, count: int) -> tuple[float, float]:
    """p50 of ``count`` sequential calls of each, in ms, the two measured in alternating
    slices (after a few untimed calls of each)."""
    for call in (a, b):
        for _ in range(20):
            await call()
    samples: dict[Call, list[float]] = {a: [], b: []}
    for i in range(SLICES):
        for call in _order(i, a, b):
            for _ in range(count // SLICES):
                started = time.perf_counter()
                await call()
                samples[call].append(_ms(started))
    return statistics.median(samples[a]), statistics.median(samples[b])


async def _batch(call: Call, per_worker: int, inflight: int) -> float:
    """Seconds for ``inflight`` workers to make ``per_worker`` calls each."""

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return time.perf_counter() - started


async def rate_pair(a: Call, b: Call, total: int, inflight: int = 64) -> tuple[float, float]:
    """Calls/s of each with ``inflight`` at once, the two measured in alternating slices."""
    for call in (a, b):
        await _batch(call, 10, inflight)
    per_worker = max(total // inflight // SLICES, 1)
    seconds = {a: 0.0, b: 0.0}
    for i in range(SLICES):
        for call in _order(i, a, b):
            seconds[call] += await _batch(call, per_worker, inflight)
    done = per_worker * inflight * SLICES
    return done / seconds[a], done / seconds[b]


async def streamed_mb_per_s(node: Node, peer: PeerId, size: int) -> float:
    started = time.perf_counter()
    got = 0
    async for event in stream_task(node, peer, kind="blob", metadata={"size": size}):
        if isinstance(event, OutputChunk):
            got += len(event.part.data or b"")
    assert got == size, (got, size)
    return size / (time.perf_counter() - started) / 1e6


async def bulk_mb_per_s(node: Node, peer: PeerId, size: int) -> float:
    started = time.perf_counter()
    stream = await node.new_stream(peer, [BULK_PROTOCOL])
    await stream.write(BULK_HEADER.pack(size, BULK_SEND))
    await stream.close_write()
    await receive_exactly(stream, size)
    await stream.close()
    return size / (time.perf_counter() - started) / 1e6


async def first_chunk_ms(node: Node, peer: PeerId, count: int) -> float:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        events = stream_task(node, peer, kind="blob", metadata={"size": 1 << 20})
        async for event in events:
            if isinstance(event, OutputChunk):
                samples.append(_ms(started))
                break
        await events.aclose()  # type: ignore[attr-defined]
    return statistics.median(samples)


async def one_round(node: Node, peer: PeerId, quick: bool) -> dict[str, float]:
    n, total, size = (200, 2000, 16 << 20) if quick else (1000, 10000, 64 << 20)
    text = "x" * 64

    def v1() -> Awaitable[Any]:
        return send_task(node, peer, text)

    def v2() -> Awaitable[Any]:
        return run_task(node, peer, text)

    v1_ms, v2_ms = await round_trip_pair(v1, v2, n)
    v1_rate, v2_rate = await rate_pair(v1, v2, total)
    figures = {
        "v1_task_64_p50_ms": v1_ms,
        "v2_task_64_p50_ms": v2_ms,
        "v1_tasks_per_s": v1_rate,
        "v2_tasks_per_s": v2_rate,
        "bulk_mb_per_s": await bulk_mb_per_s(node, peer, size),
        "streamed_mb_per_s": await streamed_mb_per_s(node, peer, size),
        "first_chunk_p50_ms": await first_chunk_ms(node, peer, 50 if quick else 200),
    }
    bulk = await bulk_mb_per_s(node, peer, size)  # again after: the bulk figure brackets it
    figures["bulk_mb_per_s"] = (figures["bulk_mb_per_s"] + bulk) / 2
    figures["task_ratio"] = figures["v2_task_64_p50_ms"] / figures["v1_task_64_p50_ms"]
    figures["rate_ratio"] = figures["v2_tasks_per_s"] / figures["v1_tasks_per_s"]
    figures["stream_ratio"] = figures["streamed_mb_per_s"] / figures["bulk_mb_per_s"]
    return figures


def summarize(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Per figure: median and spread (min, max) over the rounds."""
    return {
        key: {
            "median": statistics.median(r[key] for r in rounds),
            "min": min(r[key] for r in rounds),
            "max": max(r[key] for r in rounds),
        }
        for key in rounds[0]
    }


async def measure(rounds: int, quick: bool) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.task2", "--serve"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        addr = json.loads(server.stdout.readline())["addr"]
        node = Node(Identity.generate(), NodeConfig(keepalive_interval=None))
        try:
            peer = (await node.dial(addr)).remote_peer
            results = [await one_round(node, peer, quick) for _ in range(rounds)]
        finally:
            await node.stop()
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(30)
    return {"rounds": results, "summary": summarize(results)}


def report(summary: dict[str, Any]) -> str:
    def cell(key: str, digits: int = 3) -> str:
        s = summary[key]
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    task_ok = verdict(summary["task_ratio"]["median"] <= 1.10)
    rate_ok = verdict(summary["rate_ratio"]["median"] >= 0.90)
    stream_ok = verdict(summary["stream_ratio"]["median"] >= 0.60)
    lines = [
        "| figure | median (min-max over rounds) | target |",
        "|---|---|---|",
        f"| task 64 B p50, protocol 1 (ms) | {cell('v1_task_64_p50_ms')} | |",
        f"| task 64 B p50, protocol 2 (ms) | {cell('v2_task_64_p50_ms')} | |",
        f"| ratio 2/1, per round | {cell('task_ratio')} | <= 1.10: {task_ok} |",
        f"| tasks/s, 64 in flight, protocol 1 | {cell('v1_tasks_per_s', 0)} | |",
        f"| tasks/s, 64 in flight, protocol 2 | {cell('v2_tasks_per_s', 0)} | |",
        f"| ratio 2/1, per round | {cell('rate_ratio')} | >= 0.90: {rate_ok} |",
        f"| one bulk stream (MB/s) | {cell('bulk_mb_per_s', 0)} | |",
        f"| one streamed task output (MB/s) | {cell('streamed_mb_per_s', 0)} | |",
        f"| ratio streamed/bulk, per round | {cell('stream_ratio')} | >= 0.60: {stream_ok} |",
        f"| time to first streamed chunk p50 (ms) | {cell('first_chunk_p50_ms')} | |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    data = asyncio.run(measure(args.rounds, args.quick))
    print(json.dumps(data) if args.json else report(data["summary"]))


if __name__ == "__main__":
    main()
