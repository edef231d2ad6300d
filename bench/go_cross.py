"""Cross pairs between go-libp2p (p2pd) and p2pnode: connect, ping and task, each way.

``python -m bench.go_cross [--n-connect N] [--n-ping N] [--n-task N] [--size S]`` prints one
JSON line per figure (median and p99 in ms):

- go client -> p2pnode server: bench/contenders/go_bench.py's client against
  bench/contenders/p2pnode_bench.py's server (the go figures carry the client's bridge and,
  for connect and task, its control-socket round trips; see go_bench's docstring);
- p2pnode client -> go server: p2pnode_bench's client for connect and ping (go's own ping
  service answers); tasks with the keep-open client below, since p2pnode's ``send_task``
  half-closes and the daemon's bridge turns that into a full close before the Python
  server behind it can answer. The task figures include the go server's bridge;
- p2pnode client (keep-open) -> p2pnode server, to compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GO = [sys.executable, "-m", "bench.contenders.go_bench"]
P2PNODE = [sys.executable, "-m", "bench.contenders.p2pnode_bench"]


def start_server(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [*argv, "server"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    line = json.loads(server.stdout.readline())
    if line.get("event") != "listening":
        server.kill()
        raise RuntimeError(f"{argv}: {line}")
    return server, line["addr"]


def stop_server(server: subprocess.Popen[str]) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_client(argv: list[str], addr: str, *args: str) -> list[float]:
    done = subprocess.run(
        [*argv, "client", addr, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    result = json.loads(done.stdout.splitlines()[-1])
    if done.returncode:
        raise RuntimeError(f"{args[0]}: {result.get('message', done.stderr[-500:])}")
    return list(result["samples_ms"])


async def keep_open_tasks(addr: str, n: int, size: int) -> list[float]:
    """p2pnode tasks without the half-close: request, then the length-prefixed response."""
    from p2pnode import Identity, Node, NodeConfig
    from p2pnode.net.framed import read_frame
    from p2pnode.protocols.task.messages import (
        PROTOCOL_ID,
        TaskRequest,
        decode_response,
        encode_request,
    )
    from p2pnode.wire.framing import encode_frame

    node = Node(Identity.generate(), NodeConfig(keepalive_interval=None))
    text = "x" * size
    samples = []
    try:
        conn = await node.dial(addr)
        for i in range(n + 20):  # the first 20 warm up
            request = TaskRequest(os.urandom(8).hex(), text, "default", None)
            started = time.perf_counter()
            stream = await conn.new_stream([PROTOCOL_ID], optimistic=True)
            await stream.write(encode_frame(encode_request(request)))
            body = await read_frame(stream, 4 << 20)
            samples.append((time.perf_counter() - started) * 1000)
            stream.reset()  # the server has answered; nothing more to exchange
            if body is None or decode_response(body).output != text:
                raise RuntimeError(f"task {i} failed: {body!r:.200}")
    finally:
        await node.stop()
    return samples[20:]


def summary(pair: str, measurement: str, samples: list[float]) -> dict[str, Any]:
    return {
        "pair": pair,
        "measurement": measurement,
        "n": len(samples),
        "median_ms": round(statistics.median(samples), 4),
        "p99_ms": round(statistics.quantiles(samples, n=100)[98], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-connect", type=int, default=50)
    parser.add_argument("--n-ping", type=int, default=2000)
    parser.add_argument("--n-task", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    connect = ["connect", "--n", str(args.n_connect)]
    ping = ["ping", "--n", str(args.n_ping)]
    task = ["task", "--n", str(args.n_task), "--size", str(args.size)]
    for server_argv, server_name in ((P2PNODE, "p2pnode"), (GO, "go")):
        server, addr = start_server(server_argv)
        try:
            client_argv = GO if server_name == "p2pnode" else P2PNODE
            pair = f"{'go' if server_name == 'p2pnode' else 'p2pnode'} -> {server_name}"
            figures = [
                ("connect", run_client(client_argv, addr, *connect)),
                ("ping", run_client(client_argv, addr, *ping)),
            ]
            if server_name == "p2pnode":
                figures.append(("task", run_client(client_argv, addr, *task)))
            keep_open = asyncio.run(keep_open_tasks(addr, args.n_task, args.size))
            figures.append(("task (p2pnode keep-open client)", keep_open))
            for measurement, samples in figures:
                name = f"p2pnode -> {server_name}" if "keep-open" in measurement else pair
                print(json.dumps(summary(name, measurement, samples)), flush=True)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
