"""Python opcodes per operation: a cost measure that the machine's speed does not move.

    python -m bench.opcodes [--against BASE_TREE] [--json OUT]

This machine's speed swings about 2x within an hour, which hides a 5 % change in any
timing. The interpreter's work does not swing: this counts the Python opcodes (and the
calls into C functions) that one operation costs, both nodes in one process, with
``sys.settrace``. It does not see time spent inside C (crypto, the kernel), so it
complements the timings of ``bench.run`` rather than replacing them: a change that only
moves work into C, or adds a system call, looks free here.

With ``--against``, the same operations are counted in another p2pnode tree (a git
worktree of an older commit, say) and the table shows HEAD/BASE. Trees from before the
layered layout (``p2pnode/node.py`` with ``p2pnode/identity.py``) work too.

Operations (after a warm-up of the same operation):

- ``task 64 B, 64 in flight``: 640 echo tasks of ``/p2pnode/task/1.0.0``, 64 at a time;
- ``task 64 B, one at a time``: 200 of them in a row;
- ``ping``: 200 pings (``/ipfs/ping/1.0.0``, 32 bytes);
- ``bulk, per MiB``: 4 streams of 16 MiB each to a sink;
- ``fresh dial + task``: 20 new nodes, each dials and runs one task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

HEAD = Path(__file__).resolve().parent.parent
BULK_PROTOCOL = "/bench/bulk/1"
TASK_INPUT = "x" * 64


class _Counter:
    """Counts opcodes and C calls while it is installed as the trace function."""

    def __init__(self) -> None:
        self.opcodes = 0
        self.c_calls = 0

    def trace(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            self.opcodes += 1
        elif event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        return self.trace

    def profile(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "c_call":
            self.c_calls += 1

    async def count(self, operations: int, run: Callable[[], Awaitable[None]]) -> dict[str, float]:
        await run()  # warm-up: caches, first-time paths
        self.opcodes = self.c_calls = 0
        sys.setprofile(self.profile)
        sys.settrace(self.trace)
        try:
            await run()
        finally:
            sys.settrace(None)
            sys.setprofile(None)
        return {"opcodes": self.opcodes / operations, "c_calls": self.c_calls / operations}


def _import_tree() -> tuple[Any, Any, Any, Any, Any, Any]:
    """Node, NodeConfig, Identity, TaskServer, EchoHandler, send_task from either layout."""
    try:
        from p2pnode.node import Node, NodeConfig
        from p2pnode.protocols.task.client import send_task
        from p2pnode.protocols.task.server import EchoHandler, TaskServer
        from p2pnode.wire.identity import Identity
    except ImportError:  # the flat layout of older trees
        from p2pnode.identity import Identity  # type: ignore[no-redef]
        from p2pnode.node import Node, NodeConfig  # type: ignore[no-redef]
        from p2pnode.task_client import send_task  # type: ignore[no-redef]
        from p2pnode.task_server import EchoHandler, TaskServer  # type: ignore[no-redef]
    return Node, NodeConfig, Identity, TaskServer, EchoHandler, send_task


async def count_operations() -> dict[str, dict[str, float]]:
    """Count every operation in this process's p2pnode tree."""
    node_class, node_config, identity, task_server, echo, send_task = _import_tree()
    server = await node_class.start(identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    task_server(server, {"default": echo()}, max_concurrent=4096).install()

    async def sink(stream: Any) -> None:
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
        await stream.write(total.to_bytes(8, "big"))
        await stream.close()

    server.set_handler(BULK_PROTOCOL, sink)
    addr = str(server.listen_addrs[0].with_peer_id(server.peer_id))
    client = node_class(identity.generate(), node_config(keepalive_interval=None))
    peer = (await client.dial(addr)).remote_peer

    async def tasks_in_flight() -> None:
        async def worker() -> None:
            for _ in range(10):
                await send_task(client, peer, TASK_INPUT)

        await asyncio.gather(*(worker() for _ in range(64)))

    async def tasks_in_a_row() -> None:
        for _ in range(200):
            await send_task(client, peer, TASK_INPUT)

    async def pings() -> None:
        await client.ping(peer, count=200)

    block = b"y" * (1 << 20)

    async def bulk() -> None:
        for _ in range(4):
            stream = await client.new_stream(peer, [BULK_PROTOCOL])
            for _ in range(16):
                await stream.write(block)
            await stream.close_write()
            if int.from_bytes(await stream.readexactly(8), "big") != 16 << 20:
                raise RuntimeError("the sink counted other bytes than were sent")

    async def fresh_dials() -> None:
        for _ in range(20):
            dialer = node_class(identity.generate(), node_config(keepalive_interval=None))
            conn = await dialer.dial(addr)
            await send_task(dialer, conn.remote_peer, TASK_INPUT)
            await dialer.stop()

    counter = _Counter()
    try:
        return {
            "task 64 B, 64 in flight": await counter.count(640, tasks_in_flight),
            "task 64 B, one at a time": await counter.count(200, tasks_in_a_row),
            "ping": await counter.count(200, pings),
            "bulk, per MiB": await counter.count(64, bulk),
            "fresh dial + task": await counter.count(20, fresh_dials),
        }
    finally:
        await client.stop()
        await server.stop()


def count_in(tree: Path) -> dict[str, dict[str, float]]:
    """Run the count in a fresh process that imports p2pnode from ``tree``."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--count"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"counting in {tree} failed:\n{done.stderr[-2000:]}")
    result: dict[str, dict[str, float]] = json.loads(done.stdout)
    return result


def report(head: dict[str, dict[str, float]], base: dict[str, dict[str, float]] | None) -> str:
    if base is None:
        lines = ["| operation | opcodes | C calls |", "|---|---|---|"]
        lines += [f"| {op} | {v['opcodes']:.0f} | {v['c_calls']:.0f} |" for op, v in head.items()]
        return "\n".join(lines)
    lines = [
        "| operation | opcodes BASE | opcodes HEAD | HEAD/BASE | C calls BASE | C calls HEAD "
        "| HEAD/BASE |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, now in head.items():
        then = base.get(op)
        if then is None:
            continue
        lines.append(
            f"| {op} | {then['opcodes']:.0f} | {now['opcodes']:.0f} "
            f"| {now['opcodes'] / then['opcodes']:.3f} | {then['c_calls']:.0f} "
            f"| {now['c_calls']:.0f} | {now['c_calls'] / then['c_calls']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another p2pnode tree to compare with")
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count:  # the child: count in this process, print JSON
        print(json.dumps(asyncio.run(count_operations())))
        return
    head = count_in(HEAD)
    base = count_in(args.against.resolve()) if args.against else None
    print(report(head, base))
    if args.json:
        args.json.write_text(json.dumps({"head": head, "base": base}, indent=1))


if __name__ == "__main__":
    main()
