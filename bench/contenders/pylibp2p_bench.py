"""py-libp2p contender (PyPI ``libp2p`` 0.8.1, trio): bench/CONTRACT.md over Noise + yamux.

Runs in its own virtualenv (bench/contenders/install_pylibp2p.sh), never in p2pnode's:
``bench/.contenders/pylibp2p-venv/bin/python -m bench.contenders.pylibp2p_bench ...`` from the
repository root (as a module: it imports the shared contract beside it).

Both ends are py-libp2p with an Ed25519 identity, Noise as the only security protocol and the
``--muxer`` as the only stream muxer, so nothing else can be negotiated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair as create_ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TMuxerOptions, TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from .contract import (
    BULK_HEADER,
    BULK_PROTOCOL,
    BULK_RECEIVE,
    BULK_SEND,
    bulk_pieces,
    parse_args,
    run_and_report,
    stdin_is_a_pipe,
)

PING = TProtocol("/ipfs/ping/1.0.0")
TASK = TProtocol("/p2pnode/task/1.0.0")
BULK = TProtocol(BULK_PROTOCOL)
MUXERS: dict[str, tuple[TProtocol, Any]] = {
    "yamux": (TProtocol(YAMUX_PROTOCOL_ID), Yamux),
    "mplex": (TProtocol(MPLEX_PROTOCOL_ID), Mplex),
}
MAX_MESSAGE = 4 << 20  # task messages: 1 MiB of input plus JSON, with room to spare
READ_SIZE = 1 << 20
CLIENT_DEADLINE = 270.0  # seconds; run.py kills a client after 300 s, this reports why instead
SHUTDOWN_GRACE = 2.0  # seconds the server gives py-libp2p to close its connections


# --- hosts ---------------------------------------------------------------------------------


def muxer_options(names: str) -> TMuxerOptions:
    """``yamux``, ``mplex`` or a comma-separated preference list of both."""
    options: TMuxerOptions = {}
    for name in names.split(","):
        if name not in MUXERS:
            raise ValueError(f"unknown muxer {name!r} (py-libp2p has {', '.join(MUXERS)})")
        protocol, muxer = MUXERS[name]
        options[protocol] = muxer
    return options


def make_host(muxers: str, *, dialer: bool) -> IHost:
    """A host with a fresh Ed25519 identity, Noise only, and only the given muxers.

    A dialer allows one connection per peer: py-libp2p 0.8.1's dial races a peer's addresses
    "happy eyeballs" style and, after starting the last one, waits 250 ms for it to fail unless
    the per-peer connection limit (default 3) has been reached, so with the default every
    dial of a single address takes at least 250 ms. The benchmark never wants a second
    connection to the same peer (each ``rate`` connection is its own host).
    """
    key_pair = create_ed25519_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt=muxer_options(muxers),
        connection_config=ConnectionConfig(max_connections_per_peer=1) if dialer else None,
    )


def full_addr(host: IHost) -> str:
    for addr in host.get_addrs():
        text = str(addr)
        if "/tcp/" in text:
            return text if "/p2p/" in text else f"{text}/p2p/{host.get_id()}"
    raise RuntimeError("the host has no TCP address")


# --- framing -------------------------------------------------------------------------------


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
    """Buffered reads on a py-libp2p stream (its ``read(n)`` returns at most ``n`` bytes and
    raises ``StreamEOF``, an ``EOFError``, at the end)."""

    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _chunk(self) -> bytes:
        try:
            return await self.stream.read(READ_SIZE)
        except EOFError:
            return b""

    async def fill(self) -> bool:
        chunk = await self._chunk()
        self.buffer += chunk
        return bool(chunk)

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self.fill():
                raise EOFError(f"stream ended after {len(self.buffer)} of {size} bytes")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def discard(self, size: int) -> None:
        """Read and drop ``size`` bytes (bulk data) without buffering them."""
        buffered = min(size, len(self.buffer))
        del self.buffer[:buffered]
        size -= buffered
        while size > 0:
            chunk = await self._chunk()
            if not chunk:
                raise EOFError(f"bulk data ended {size} bytes early")
            size -= len(chunk)
        if size < 0:
            raise ValueError(f"{-size} bytes more bulk data than announced")

    async def message(self) -> bytes:
        """One unsigned-varint length-prefixed message (docs/task-protocol.md)."""
        while True:
            value = shift = 0
            for pos, byte in enumerate(self.buffer[:9]):
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    del self.buffer[: pos + 1]
                    if value > MAX_MESSAGE:
                        raise ValueError(f"a message of {value} bytes is too large")
                    return await self.exactly(value)
            if len(self.buffer) >= 9:
                raise ValueError("a length prefix longer than 9 bytes")
            if not await self.fill():
                raise EOFError("stream ended before a length prefix")


# --- server --------------------------------------------------------------------------------


async def task_handler(stream: INetStream) -> None:
    """Echo task: output = input."""
    try:
        started = time.perf_counter()
        request = json.loads(await Reader(stream).message())
        response = {
            "task_id": request["task_id"],
            "output": request["input"],
            "latency_ms": round((time.perf_counter() - started) * 1000),
        }
        await stream.write(frame(json.dumps(response).encode()))
        await stream.close()
    except Exception as exc:
        print(f"task stream failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        await stream.reset()


async def bulk_handler(stream: INetStream) -> None:
    """Header: 8-byte big-endian N + mode; 1: send N bytes, 2: read N bytes and answer 0x01."""
    try:
        reader = Reader(stream)
        size, mode = BULK_HEADER.unpack(await reader.exactly(BULK_HEADER.size))
        if mode == BULK_SEND:
            for piece in bulk_pieces(size):
                await stream.write(piece)
        elif mode == BULK_RECEIVE:
            await reader.discard(size)
            await stream.write(b"\x01")
        else:
            raise ValueError(f"unknown bulk mode {mode}")
        await stream.close()
    except Exception as exc:
        print(f"bulk stream failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        await stream.reset()


async def until_stopped(signals: Any) -> None:
    """Return at SIGTERM or SIGINT, or when stdin, a pipe, reaches its end."""
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()

        async def on_stdin_end() -> None:
            while await trio.to_thread.run_sync(os.read, 0, 65536, abandon_on_cancel=True):
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        if stdin_is_a_pipe():
            nursery.start_soon(on_stdin_end)


async def serve(muxers: str) -> None:
    host = make_host(muxers, dialer=False)  # serves ping with py-libp2p's own handler
    host.set_stream_handler(TASK, task_handler)
    host.set_stream_handler(BULK, bulk_handler)
    with (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        trio.CancelScope() as shutdown,
    ):
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            print(json.dumps({"event": "listening", "addr": full_addr(host)}), flush=True)
            await until_stopped(signals)
            shutdown.deadline = trio.current_time() + SHUTDOWN_GRACE


# --- client --------------------------------------------------------------------------------


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def send_task(host: IHost, peer: ID, text: str) -> None:
    """One echo task on a new stream: request, half-close, response."""
    stream = await host.new_stream(peer, [TASK])
    task_id = os.urandom(8).hex()
    await stream.write(frame(json.dumps({"task_id": task_id, "input": text}).encode()))
    await stream.close_write()
    response = json.loads(await Reader(stream).message())
    if response.get("task_id") != task_id or response.get("output") != text:
        raise RuntimeError(f"bad task response {str(response)[:200]}")
    await stream.close()


async def connect(host: IHost, info: PeerInfo, args: argparse.Namespace) -> dict[str, Any]:
    samples = []
    for _ in range(args.n):
        if info.peer_id in host.get_connected_peers():
            raise RuntimeError("the previous connection is still open: no new dial to time")
        started = time.perf_counter()
        await host.connect(info)
        await host.new_stream(info.peer_id, [PING])
        samples.append(ms_since(started))
        await host.disconnect(info.peer_id)
    return {"measurement": "connect", "samples_ms": samples}


async def ping(host: IHost, info: PeerInfo, args: argparse.Namespace) -> dict[str, Any]:
    await host.connect(info)
    stream = await host.new_stream(info.peer_id, [PING])
    reader = Reader(stream)
    payload = os.urandom(32)
    samples = []
    for _ in range(args.n + 20):  # the first 20 warm up
        started = time.perf_counter()
        await stream.write(payload)
        if await reader.exactly(32) != payload:
            raise RuntimeError("the ping payload came back different")
        samples.append(ms_since(started))
    await stream.close()
    return {"measurement": "ping", "samples_ms": samples[20:]}


async def task(host: IHost, info: PeerInfo, args: argparse.Namespace) -> dict[str, Any]:
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


async def rate(host: IHost, info: PeerInfo, args: argparse.Namespace) -> dict[str, Any]:
    """``--connections`` C: C hosts (C identities), one connection each, in this process."""
    per_connection = args.n // args.connections
    text = "x" * 64

    async def worker(client: IHost, count: int) -> None:
        for _ in range(count):
            await send_task(client, info.peer_id, text)

    async def run(clients: list[IHost], total: int) -> None:
        """``total`` tasks on each client's connection, ``--inflight`` at a time."""
        share, extra = divmod(total, args.inflight)
        async with trio.open_nursery() as nursery:
            for client in clients:
                for i in range(args.inflight):
                    nursery.start_soon(worker, client, share + (i < extra))

    with trio.CancelScope() as teardown:
        async with AsyncExitStack() as stack:
            clients = [host]
            for _ in range(args.connections - 1):
                client = make_host(args.muxer, dialer=True)
                await stack.enter_async_context(client.run(listen_addrs=[]))
                clients.append(client)
            for client in clients:
                await client.connect(info)
            await run(clients, min(200, per_connection))
            started = time.perf_counter()
            await run(clients, per_connection)
            seconds = time.perf_counter() - started
            teardown.deadline = trio.current_time() + SHUTDOWN_GRACE
    return {
        "measurement": "rate",
        "tasks": per_connection * args.connections,
        "inflight": args.inflight,
        "connections": args.connections,
        "seconds": seconds,
    }


async def throughput(host: IHost, info: PeerInfo, args: argparse.Namespace) -> dict[str, Any]:
    await host.connect(info)
    per_stream = args.bytes // args.streams

    async def one(size: int) -> None:
        stream = await host.new_stream(info.peer_id, [BULK])
        reader = Reader(stream)
        if args.direction == "up":
            await stream.write(BULK_HEADER.pack(size, BULK_RECEIVE))
            for piece in bulk_pieces(size):
                await stream.write(piece)
            if await reader.exactly(1) != b"\x01":
                raise RuntimeError("the server did not confirm the bulk upload")
        else:
            await stream.write(BULK_HEADER.pack(size, BULK_SEND))
            await stream.close_write()
            await reader.discard(size)
        await stream.close()

    async def all_streams(size: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(args.streams):
                nursery.start_soon(one, size)

    await all_streams(min(per_stream, 4 << 20))  # warm-up
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


MEASUREMENTS: dict[str, Callable[[IHost, PeerInfo, argparse.Namespace], Awaitable[dict[str, Any]]]]
MEASUREMENTS = {
    "connect": connect,
    "ping": ping,
    "task": task,
    "rate": rate,
    "throughput": throughput,
}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    info = info_from_p2p_addr(multiaddr.Multiaddr(args.addr))
    host = make_host(args.muxer, dialer=True)
    result: dict[str, Any] | None = None
    try:
        with trio.CancelScope(deadline=trio.current_time() + CLIENT_DEADLINE) as scope:
            async with host.run(listen_addrs=[]):
                result = await MEASUREMENTS[args.measurement](host, info, args)
                # py-libp2p's teardown sleeps 0.2 s per connection: bound it
                scope.deadline = trio.current_time() + SHUTDOWN_GRACE
    except Exception:
        if result is None:
            raise
    if result is None:
        raise RuntimeError(f"{args.measurement} did not finish within {CLIENT_DEADLINE:.0f} s")
    return result


def run_trio(function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``trio.run``, with an exception group's first leaf (and its cause) as the error."""
    try:
        return trio.run(function, *args)
    except Exception as exc:
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        if leaf is exc:
            raise
        cause = leaf.__cause__ or leaf.__context__
        why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        raise RuntimeError(f"{type(leaf).__name__}: {leaf}{why}") from exc


def main() -> None:
    args = parse_args(MEASUREMENTS, __doc__, asyncio_program=False)
    code = 0
    try:
        if args.mode == "server":
            run_and_report(lambda: run_trio(serve, args.muxer))
        else:
            run_and_report(lambda: run_trio(measure, args))
    except SystemExit as exc:  # run_and_report's exit 1 after the error line
        code = exc.code if isinstance(exc.code, int) else 1
    # py-libp2p leaves threads and background services behind: do not wait for them at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
