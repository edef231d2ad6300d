"""The floor: the same message patterns over plain asyncio TCP, no encryption, no muxing.

ping = 32-byte echo on one connection; task = varint-length JSON request/response
(msgspec), each on the same connection (there are no streams); rate pipelines K
requests per connection; throughput uses one TCP connection per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec

from p2pnode.protocols.task.messages import (
    TaskRequest,
    TaskResponse,
    decode_request,
    encode_request,
    encode_response,
)
from p2pnode.wire.framing import FrameDecoder, encode_frame

from .contract import (
    BULK_HEADER,
    BULK_RECEIVE,
    BULK_SEND,
    asyncio_runner,
    bulk_pieces,
    parse_args,
    run_and_report,
    until_stopped,
)

KIND_PING, KIND_TASK, KIND_BULK = b"P", b"T", b"B"


class FloorServer(asyncio.Protocol):
    """One connection; the first byte says what it is for."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.kind: bytes | None = None
        self.decoder = FrameDecoder(2 << 20)
        self.buffer = bytearray()
        self.bulk_remaining = -1

    def data_received(self, data: bytes) -> None:
        if self.kind is None:
            self.kind, data = data[:1], data[1:]
        if self.kind == KIND_PING:
            self.transport.write(data)
        elif self.kind == KIND_TASK:
            out = []
            for body in self.decoder.receive_data(data):
                request = decode_request(body)
                response = TaskResponse(request.task_id, request.input, 0)
                out.append(encode_frame(encode_response(response)))
            if out:
                self.transport.write(b"".join(out))
        else:
            self._bulk(data)

    def _bulk(self, data: bytes) -> None:
        if self.bulk_remaining < 0:
            self.buffer += data
            if len(self.buffer) < BULK_HEADER.size:
                return
            size, mode = BULK_HEADER.unpack_from(self.buffer)
            data = bytes(self.buffer[BULK_HEADER.size :])
            if mode == BULK_SEND:
                self.sender = asyncio.ensure_future(self._send(size))
                return
            self.bulk_remaining = size
        self.bulk_remaining -= len(data)
        if self.bulk_remaining == 0:
            self.transport.write(b"\x01")

    async def _send(self, size: int) -> None:
        for piece in bulk_pieces(size):
            self.transport.write(piece)
            if self.transport.get_write_buffer_size() > 1 << 20:
                await asyncio.sleep(0)  # let the loop flush; a bare Protocol has no drain()
        self.transport.close()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorServer, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print(json.dumps({"event": "listening", "addr": f"{host}:{port}"}), flush=True)
    await until_stopped()
    server.close()


async def open_conn(addr: str, kind: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(kind)
    return reader, writer


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def connect(args: argparse.Namespace) -> dict[str, Any]:
    samples = []
    for _ in range(args.n):
        started = time.perf_counter()
        _, writer = await open_conn(args.addr, KIND_PING)
        samples.append(ms_since(started))
        writer.close()
        await writer.wait_closed()
    return {"measurement": "connect", "samples_ms": samples}


async def ping(args: argparse.Namespace) -> dict[str, Any]:
    reader, writer = await open_conn(args.addr, KIND_PING)
    payload, samples = bytes(32), []
    for i in range(args.n + 20):
        started = time.perf_counter()
        writer.write(payload)
        await reader.readexactly(32)
        if i >= 20:
            samples.append(ms_since(started))
    writer.close()
    return {"measurement": "ping", "samples_ms": samples}


async def _read_response(reader: asyncio.StreamReader, decoder: FrameDecoder) -> None:
    while not decoder.receive_data(await reader.read(65536)):
        pass


_response = msgspec.json.Decoder(TaskResponse)


async def task(args: argparse.Namespace) -> dict[str, Any]:
    reader, writer = await open_conn(args.addr, KIND_TASK)
    decoder = FrameDecoder(4 << 20)
    text, samples = "x" * args.size, []
    for i in range(args.n + 20):
        started = time.perf_counter()
        writer.write(encode_frame(encode_request(TaskRequest(str(i), text))))
        while True:
            messages = decoder.receive_data(await reader.read(1 << 20))
            if messages:
                _response.decode(messages[0])
                break
        if i >= 20:
            samples.append(ms_since(started))
    writer.close()
    return {"measurement": "task", "size": args.size, "samples_ms": samples}


async def rate(args: argparse.Namespace) -> dict[str, Any]:
    per_connection = args.n // args.connections
    conns = [await open_conn(args.addr, KIND_TASK) for _ in range(args.connections)]
    request = encode_frame(encode_request(TaskRequest("t", "x" * 64)))

    async def pipeline(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int
    ) -> None:
        decoder = FrameDecoder(1 << 20)
        sent = min(args.inflight, count)
        writer.write(request * sent)
        done = 0
        while done < count:
            finished = len(decoder.receive_data(await reader.read(65536)))
            done += finished
            more = min(finished, count - sent)
            if more:
                writer.write(request * more)
                sent += more

    await asyncio.gather(*(pipeline(r, w, min(200, per_connection)) for r, w in conns))
    started = time.perf_counter()
    await asyncio.gather(*(pipeline(r, w, per_connection) for r, w in conns))
    seconds = time.perf_counter() - started
    result = {"measurement": "rate", "tasks": per_connection * args.connections}
    return {
        **result,
        "inflight": args.inflight,
        "connections": args.connections,
        "seconds": seconds,
    }


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    per_stream = args.bytes // args.streams

    async def one(size: int) -> None:
        reader, writer = await open_conn(args.addr, KIND_BULK)
        if args.direction == "up":
            writer.write(BULK_HEADER.pack(size, BULK_RECEIVE))
            for piece in bulk_pieces(size):
                writer.write(piece)
                await writer.drain()
            await reader.readexactly(1)
        else:
            writer.write(BULK_HEADER.pack(size, BULK_SEND))
            remaining = size
            while remaining:
                chunk = await reader.read(1 << 20)
                if not chunk:
                    raise RuntimeError("bulk source stopped early")
                remaining -= len(chunk)
        writer.close()

    await asyncio.gather(*(one(min(per_stream, 4 << 20)) for _ in range(args.streams)))
    started = time.perf_counter()
    await asyncio.gather(*(one(per_stream) for _ in range(args.streams)))
    seconds = time.perf_counter() - started
    result = {"measurement": "throughput", "bytes": per_stream * args.streams}
    return {**result, "streams": args.streams, "direction": args.direction, "seconds": seconds}


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "connect": connect,
    "ping": ping,
    "task": task,
    "rate": rate,
    "throughput": throughput,
}


def main() -> None:
    # --muxer is accepted and ignored: the floor has no muxer
    args = parse_args(MEASUREMENTS, __doc__)
    runner = asyncio_runner(args)
    if args.mode == "server":
        run_and_report(lambda: runner(serve()))
    else:
        run_and_report(lambda: runner(MEASUREMENTS[args.measurement](args)))


if __name__ == "__main__":
    main()
