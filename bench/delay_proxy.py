"""A TCP proxy on 127.0.0.1 that makes a link with a one-way delay of D (user space: no netem).

The model. The proxy stands for the wire: a byte arriving at the proxy from one end is
the moment that end *sent* it, and it is delivered to the other end D later. Chunks are
delivered in order, each at ``sent + D`` (delays are not serialized: a burst that arrives
together is delivered together D later); ready chunks are written out in one write.

TCP's handshake is modelled as on a real link, with t0 the moment the proxy accepts
(on loopback the dialer's ``connect()`` returns at once, so t0 is the dialer's connect):

- SYN at t0 reaches the server at t0 + D (the proxy connects upstream then);
- SYN-ACK reaches the dialer at t0 + 2D: the dialer may send from then on, so its bytes
  count as sent at ``max(arrival, t0 + 2D)`` and reach the server at the earliest at
  t0 + 3D, 1.5 RTT after the connect began, as on a real link;
- the server's ``accept()`` completes when the ACK arrives, t0 + 3D: its bytes count as sent
  at ``max(arrival, t0 + 3D)``.

So a client that writes right after connecting sees the same times as on a real link, but
its ``connect()`` itself takes no time here: time TCP's round trip from the first flight.

Close: the end of one direction (EOF or an error) is delivered like a chunk; then the
proxy closes both sockets (the libp2p stacks measured here never half-close TCP).
Backpressure: each direction holds at most ``max_buffer`` bytes before it stops reading.

Flights: a flight is a run of chunks in one direction until the other direction sends;
each link keeps its flights (direction, sent and delivered times from t0, bytes) and how
late the proxy delivered (``late_ms``: timer lateness; the floor row of
``bench/delayed_link.py`` shows all that the emulation adds).

Run alone: ``python -m bench.delay_proxy --target HOST:PORT [--delay-ms 10]`` prints
``{"event": "listening", "port": N}``, then one ``{"event": "link", ...}`` line (see
:meth:`Link.summary`) per closed connection, until stdin ends. Timers wake late (~0.3 ms
on a VM): the last ``SPIN`` (0.5 ms) before each delivery is waited out busily, so
``late_ms`` is ~0 unless the machine is busy. A ``select`` event loop: its timeouts are
microsecond-precise (epoll's are whole milliseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import selectors
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CHUNK = 65536
MAX_FLIGHTS = 200  # per link; more are counted, not kept
SPIN = 0.0005  # seconds before a delivery that are waited out busily, not with a timer
C2S, S2C = ">", "<"  # client to server, server to client


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class Flight:
    direction: str
    sent: float  # seconds since t0 (the model's send time)
    bytes: int
    delivered: float | None = None  # seconds since t0, when the proxy wrote its first byte


@dataclass
class Link:
    """One proxied connection: its flights and the proxy's delivery lateness."""

    t0: float  # loop.time() at accept
    t0_wall: float = field(default_factory=time.time)  # the same moment, time.time()
    flights: list[Flight] = field(default_factory=list)
    flight_count: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    late: list[float] = field(default_factory=list)  # seconds, one per write
    peak_buffered: dict[str, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    closed_by: str = ""  # "client" or "server": whose end (or error) ended the link

    def arrived(self, direction: str, sent: float, size: int) -> Flight | None:
        """Account a chunk; the flight it starts, if it starts one."""
        self.bytes[direction] += size
        last = self.flights[-1] if self.flights else None
        if self.flight_count and last is not None and last.direction == direction:
            last.bytes += size
            return None
        self.flight_count += 1
        flight = Flight(direction, sent - self.t0, size)
        if len(self.flights) < MAX_FLIGHTS:
            self.flights.append(flight)
        return flight

    def summary(self, delay: float) -> dict[str, Any]:
        late = sorted(self.late)
        return {
            "event": "link",
            "t0": self.t0,
            "t0_wall": self.t0_wall,
            "delay_ms": delay * 1000,
            "flight_count": self.flight_count,
            "flights": [
                [f.direction, _ms(f.sent), f.bytes, _ms(f.delivered)] for f in self.flights
            ],
            "bytes": dict(self.bytes),
            "late_ms": {
                "p50": _ms(late[len(late) // 2]) if late else None,
                "max": _ms(late[-1]) if late else None,
                "writes": len(late),
            },
            "peak_buffered": dict(self.peak_buffered),
            "closed_by": self.closed_by,
        }


class _Direction:
    """Chunks in flight one way: read, stamped ``sent + delay``, written when due."""

    def __init__(self, link: Link, direction: str, not_before: float, delay: float, limit: int):
        self.link, self.direction = link, direction
        self.not_before, self.delay, self.limit = not_before, delay, limit
        self.queue: deque[tuple[float, bytes, Flight | None]] = deque()
        self.buffered = 0
        self.changed = asyncio.Event()  # a chunk was queued or written

    async def read_from(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self.buffered >= self.limit:  # backpressure: stop reading
                self.changed.clear()
                await self.changed.wait()
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""
            sent = max(loop.time(), self.not_before)
            flight = self.link.arrived(self.direction, sent, len(data)) if data else None
            self.queue.append((sent + self.delay, data, flight))
            self.buffered += len(data)
            peak = self.link.peak_buffered
            peak[self.direction] = max(peak[self.direction], self.buffered)
            self.changed.set()
            if not data:
                return

    async def write_to(self, writer: asyncio.StreamWriter) -> None:
        """Deliver chunks when due; return at the end of this direction."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.changed.clear()
                await self.changed.wait()
            due = self.queue[0][0]
            if (wait := due - loop.time() - SPIN) > 0:
                await asyncio.sleep(wait)
            while (now := loop.time()) < due:
                pass  # the last SPIN seconds: a timer here wakes ~0.3 ms late (a VM's)
            self.link.late.append(now - due)
            pieces: list[bytes] = []
            while self.queue and self.queue[0][0] <= now:
                _, data, flight = self.queue.popleft()
                if not data:
                    if pieces:
                        writer.write(b"".join(pieces))
                    return
                if flight is not None:
                    flight.delivered = now - self.link.t0
                pieces.append(data)
                self.buffered -= len(data)
            writer.write(b"".join(pieces))
            self.changed.set()
            try:
                await writer.drain()
            except OSError:
                return


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DelayProxy:
    """Listens on 127.0.0.1 and forwards each connection to ``target`` over a delayed link.

    ``links`` has every connection from its accept on; ``on_link(link)`` is called when
    one has closed (then ``link.closed_by`` is set).
    """

    def __init__(
        self,
        target: tuple[str, int],
        delay: float,
        *,
        max_buffer: int = 1 << 20,
        on_link: Any = None,
    ) -> None:
        self.target, self.delay, self.max_buffer = target, delay, max_buffer
        self.on_link = on_link
        self.links: list[Link] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        """Start listening; the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        link = Link(loop.time())
        self.links.append(link)
        _nodelay(c_writer)
        d = self.delay
        c2s = _Direction(link, C2S, link.t0 + 2 * d, d, self.max_buffer)
        s2c = _Direction(link, S2C, link.t0 + 3 * d, d, self.max_buffer)
        jobs: list[asyncio.Future[Any]] = []

        async def connect_upstream() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            await asyncio.sleep(d)  # the SYN reaches the server
            reader, writer = await asyncio.open_connection(*self.target)
            _nodelay(writer)
            jobs.append(asyncio.ensure_future(s2c.read_from(reader)))
            return reader, writer

        upstream = asyncio.ensure_future(connect_upstream())

        async def to_server() -> None:
            with contextlib.suppress(OSError):  # no server there: close the client
                _, writer = await asyncio.shield(upstream)
                await c2s.write_to(writer)

        async def to_client() -> None:
            with contextlib.suppress(OSError):
                await asyncio.shield(upstream)
                await s2c.write_to(c_writer)

        ends = {
            asyncio.ensure_future(to_server()): "client",
            asyncio.ensure_future(to_client()): "server",
        }
        jobs += [upstream, *ends, asyncio.ensure_future(c2s.read_from(c_reader))]
        try:  # the first direction to end (a delivered EOF, an error) ends the link
            done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            link.closed_by = ends[done.pop()]
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            writers = [c_writer]
            if upstream.done() and not upstream.cancelled() and upstream.exception() is None:
                writers.append(upstream.result()[1])
            for writer in writers:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            if self.on_link is not None:
                self.on_link(link)
            self._tasks.discard(task)


async def _main(args: argparse.Namespace) -> None:
    host, port = args.target.rsplit(":", 1)
    delay = args.delay_ms / 1000

    def report(link: Link) -> None:
        print(json.dumps(link.summary(delay)), flush=True)

    async with DelayProxy((host, int(port)), delay, on_link=report) as proxy:
        print(json.dumps({"event": "listening", "port": proxy.port}), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.buffer.read)  # until stdin ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay")
    args = parser.parse_args()
    selector = selectors.SelectSelector()  # microsecond timeouts (epoll: milliseconds)
    with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
        runner.run(_main(args))


if __name__ == "__main__":
    main()
