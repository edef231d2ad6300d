"""The delayed-link proxy of bench/delay_proxy.py: delays (lower bounds only), order, close."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bench.delay_proxy import C2S, S2C, DelayProxy

D = 0.020  # one-way delay, seconds
ROOT = Path(__file__).resolve().parents[1]

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def proxied(handler: Handler, **options: int) -> AsyncIterator[DelayProxy]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with DelayProxy(("127.0.0.1", port), D, **options) as proxy:
            yield proxy
    finally:
        server.close()


async def test_echo_takes_at_least_a_round_trip_and_connect_one_more() -> None:
    async with proxied(echo) as proxy:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        first = time.monotonic() - started
        started = time.monotonic()
        writer.write(b"again")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"again"
        second = time.monotonic() - started
        writer.close()
    # TCP's round trip, then the bytes' own: 2 RTT from the connect, 1 RTT afterwards
    assert first >= 4 * D
    assert second >= 2 * D
    flights = [(f.direction, f.bytes) for f in proxy.links[0].flights]
    assert flights == [(C2S, 5), (S2C, 5), (C2S, 5), (S2C, 5)]
    assert proxy.links[0].flights[0].sent >= 2 * D - 1e-9  # sent once the SYN-ACK is back


async def test_connect_reaches_the_server_late() -> None:
    events: dict[str, float] = {}

    async def note(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events["accepted"] = time.monotonic()
        await reader.readexactly(1)
        events["first byte"] = time.monotonic()
        writer.close()

    async with proxied(note) as proxy:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the server closed
        writer.close()
    assert events["accepted"] - started >= D  # the SYN took D
    assert events["first byte"] - started >= 3 * D  # after the SYN-ACK, then D on the way


async def test_large_transfer_keeps_content_and_order() -> None:
    payload = os.urandom(4 << 20)
    async with proxied(echo, max_buffer=256 << 10) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)

        async def send() -> None:
            for offset in range(0, len(payload), 100_000):
                writer.write(payload[offset : offset + 100_000])
                await writer.drain()

        received, _ = await asyncio.wait_for(
            asyncio.gather(reader.readexactly(len(payload)), send()), 30
        )
        writer.close()
    assert received == payload
    link = proxy.links[0]
    assert link.bytes == {C2S: len(payload), S2C: len(payload)}
    assert max(link.peak_buffered.values()) <= (256 << 10) + 65536


async def test_buffers_are_bounded_when_the_server_does_not_read() -> None:
    stalled = asyncio.Event()

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stalled.wait()
        writer.close()

    async with proxied(never_read, max_buffer=128 << 10) as proxy:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        block = bytes(1 << 20)
        sent = 0
        with contextlib.suppress(TimeoutError):
            for _ in range(64):  # at most 64 MiB: the kernel's buffers plus ours are less
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 1)
                sent += len(block)
        assert sent < 64 << 20, "the proxy kept reading from a client whose server stalled"
        assert proxy.links[0].peak_buffered[C2S] <= (128 << 10) + 65536
        stalled.set()
        writer.transport.abort()


@pytest.mark.parametrize("closer", ["client", "server"])
async def test_one_side_closing_closes_both(closer: str) -> None:
    server_saw: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if closer == "server":
            writer.write(b"bye")
            writer.close()
            return
        server_saw.set_result(await reader.read())
        writer.close()

    async with proxied(handler) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        started = time.monotonic()
        if closer == "client":
            writer.write(b"data")
            writer.close()
            assert await asyncio.wait_for(server_saw, 5) == b"data"
        else:
            assert await asyncio.wait_for(reader.read(), 5) == b"bye"  # data, then EOF
            writer.close()
        async with asyncio.timeout(5):
            while not proxy.links[0].closed_by:
                await asyncio.sleep(0.01)
        assert time.monotonic() - started >= D
    assert proxy.links[0].closed_by == closer


async def test_no_server_closes_the_client() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with DelayProxy(("127.0.0.1", port), D) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_command_line_reports_each_link() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bench.delay_proxy", "--delay-ms", "5"],
        *["--target", f"127.0.0.1:{port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proxy.stdout is not None and proxy.stdin is not None
    try:
        async with asyncio.timeout(20):
            listening = json.loads(await proxy.stdout.readline())
            assert listening["event"] == "listening"
            reader, writer = await asyncio.open_connection("127.0.0.1", listening["port"])
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            link = json.loads(await proxy.stdout.readline())
            proxy.stdin.close()
            assert await proxy.wait() == 0
    finally:
        if proxy.returncode is None:
            proxy.kill()
            await proxy.wait()
        server.close()
    assert link["event"] == "link" and link["closed_by"] == "client"
    assert [[f[0], f[2]] for f in link["flights"]] == [[">", 4], ["<", 4]]
    assert link["flights"][1][1] >= 15  # the server answered at 3D or later (ms)


def test_targets_are_judged_as_measured_and_net_of_what_the_emulation_adds() -> None:
    from bench.delayed_link import targets

    stats = {"connect": {"p50_ms": 43.5}, "first": {"p50_ms": 64.0}, "warm": None}
    raw = targets(stats, 20.0)
    assert [t["pass"] for t in raw] == [False, False] and "net_ms" not in raw[0]
    net = targets(stats, 20.0, emulation=1.4)  # the floor took 2 RTT + 1.4 ms
    assert [round(t["net_ms"], 2) for t in net] == [42.1, 61.9]  # 1.4 per 2 RTT, 2.1 per 3
    assert [t["pass"] for t in net] == [False, False]  # the measured verdicts stay
    assert [t["net_pass"] for t in net] == [True, True]
    assert "net of the emulation's 2.1 ms: 61.9 ms: PASS" in net[1]["verdict"]


def test_another_process_s_cpu_clock_agrees_with_its_own() -> None:
    from bench.system import process_cpu_ns

    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "sum(i * i for i in range(2_000_000))\n"  # some CPU, a fixed amount of work
         "print(time.process_time_ns(), flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        own = int(child.stdout.readline())
        seen = process_cpu_ns(child.pid)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert own > 10_000_000  # the loop took some CPU: a clock that stood still would fail
    assert own <= seen < own + 200_000_000  # what it used since: printing, a blocking read


def test_the_cpu_table_shows_each_path_and_the_ratio_of_their_medians() -> None:
    from bench.delayed_link import Row, report

    row = Row("p2pnode->p2pnode", "task 64 B", connect_ms=[44.0], first_ms=[67.0])
    row.cpu_ms = {
        "delayed link": {"dialer": [4.0, 5.0, 6.0], "listener": [3.0, 4.0, 9.0]},
        "loopback": {"dialer": [2.0, 2.5, 3.0], "listener": [2.0, 2.0, 1.0]},
    }
    go = Row("p2pnode->go", "ping 32 B", connect_ms=[44.0], first_ms=[64.0])
    go.cpu_ms = {"delayed link": {"dialer": [3.0], "listener": []}}
    text, data = report([row, go], 10.0, "test")
    assert "| p2pnode->p2pnode | delayed link | 5.00 ms | 4.00 ms | 9.00 ms |" in text
    assert "| p2pnode->p2pnode | loopback | 2.50 ms | 2.00 ms | 4.50 ms |" in text
    assert "| p2pnode->p2pnode | delayed / loopback | 2.00x | 2.00x | 2.00x |" in text
    assert "| p2pnode->go | delayed link | 3.00 ms | n/a | n/a |" in text  # no listener: go's
    assert data["rows"][0]["cpu_ratio_delayed_to_loopback"] == [2.0, 2.0, 2.0]
    assert "cpu_ratio_delayed_to_loopback" not in data["rows"][1]
