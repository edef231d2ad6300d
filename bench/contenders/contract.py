"""What every contender shares (bench/CONTRACT.md): the command line, the bulk header, the
result line. Standard library only: the py-libp2p contender imports it from its own venv."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any

BULK_PROTOCOL = "/p2pnode/bulk/1.0.0"
BULK_HEADER = struct.Struct(">QB")  # byte count, then mode: 1 = server sends, 2 = server reads
BULK_SEND, BULK_RECEIVE = 1, 2
BLOCK = b"\xa5" * 65536


def bulk_pieces(size: int) -> Iterable[memoryview]:
    """``size`` bytes to send, as views of one preallocated block."""
    view = memoryview(BLOCK)
    while size:
        piece = view[: min(size, len(BLOCK))]
        size -= len(piece)
        yield piece


def parse_args(
    measurements: Iterable[str], doc: str | None, *, asyncio_program: bool = True
) -> argparse.Namespace:
    """``<program> [options] server`` or ``<program> [options] client ADDR MEASUREMENT ...``."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--muxer", default="yamux")
    if asyncio_program:
        parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("server")
    client = sub.add_parser("client")
    client.add_argument("addr")
    client.add_argument("measurement", choices=sorted(measurements))
    client.add_argument("--n", type=int, default=100)
    client.add_argument("--size", type=int, default=64)
    client.add_argument("--inflight", type=int, default=1)
    client.add_argument("--connections", type=int, default=1)
    client.add_argument("--bytes", type=int, default=64 << 20)
    client.add_argument("--streams", type=int, default=1)
    client.add_argument("--direction", choices=["up", "down"], default="up")
    return parser.parse_args()


def asyncio_runner(args: argparse.Namespace) -> Callable[[Any], Any]:
    """``asyncio.run``, or ``uvloop.run`` with ``--uvloop``."""
    if args.uvloop:
        import uvloop

        return uvloop.run  # type: ignore[no-any-return]
    import asyncio

    return asyncio.run


def stdin_is_a_pipe() -> bool:
    """True when stdin is a pipe or socket, whose end of file means "stop serving"."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def until_stopped() -> None:
    """Return at SIGTERM or SIGINT, or when stdin, a pipe, reaches its end (the runner died)."""
    import asyncio

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if stdin_is_a_pipe():

        def on_stdin() -> None:
            if not os.read(0, 65536):
                loop.remove_reader(0)
                stop.set()

        loop.add_reader(0, on_stdin)
    await stop.wait()


def run_and_report(run: Callable[[], dict[str, Any] | None]) -> None:
    """Run the server or one measurement; print its result line, or an error line and exit 1."""
    try:
        result = run()
    except Exception as exc:
        print(json.dumps({"event": "error", "message": f"{type(exc).__name__}: {exc}"}))
        sys.exit(1)
    if result is not None:
        print(json.dumps(result), flush=True)
