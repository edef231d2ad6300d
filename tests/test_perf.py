"""The perf protocol /perf/1.0.0: its header codec, two in-process nodes, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.cli.main import main
from p2pnode.cli.perf import describe, human_size, parse_size
from p2pnode.errors import (
    DecodeError,
    LocalProtocolError,
    ProtocolNotSupportedError,
    RemoteProtocolError,
    StreamResetError,
)
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols.perf import (
    CHUNK_SIZE,
    HEADER_SIZE,
    PROTOCOL_ID,
    PerfResult,
    decode_header,
    encode_header,
    measure_perf,
    serve_perf,
)

from .conftest import addr_of, start_node
from .netns import Process

MIB = 1 << 20
LIMIT = 4 * MIB  # the test servers' max_download
P2PNODE = [sys.executable, "-m", "p2pnode"]
PERF_LOG = "p2pnode.protocols.perf"
ROOT = Path(__file__).resolve().parent.parent

# -- the header codec ---------------------------------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_header_round_trip(size: int) -> None:
    header = encode_header(size)
    assert len(header) == HEADER_SIZE
    assert decode_header(header) == size


def test_header_is_big_endian() -> None:
    assert encode_header(1) == b"\0" * 7 + b"\1"
    assert encode_header(0x0102030405060708) == bytes(range(1, 9))
    assert decode_header(b"\xff" * 8) == 2**64 - 1


@pytest.mark.parametrize("size", [-1, 2**64])
def test_header_out_of_range_is_refused(size: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_header(size)


@settings(max_examples=300)
@given(st.binary(max_size=24))
def test_header_parser_on_arbitrary_bytes(data: bytes) -> None:
    if len(data) == HEADER_SIZE:
        size = decode_header(data)
        assert 0 <= size < 2**64 and encode_header(size) == data
    else:
        with pytest.raises(DecodeError):
            decode_header(data)


# -- sizes and output of the CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("4096", 4096), ("10MiB", 10 * MIB), ("1M", 10**6), ("1MB", 10**6),
     ("1.5KiB", 1536), ("2g", 2 * 10**9), ("1 GiB", 1 << 30), ("0.5k", 500)],
)  # fmt: skip
def test_sizes_with_suffixes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5", "abc", "1X", "1.0001K", "1e6"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_human_output() -> None:
    result = PerfResult(10 * MIB, 0, 0.05, 0.001, 0.051, None)
    human, fields = describe(result)
    assert human == (
        "upload 10.0 MiB in 0.050 s (200.0 MiB/s), download 0 B in 0.001 s; "
        "total 10.0 MiB in 0.051 s (196.1 MiB/s)"
    )
    assert fields["upload_bytes_per_s"] == 10 * MIB / 0.05
    assert fields["download_bytes_per_s"] is None and fields["first_byte_ms"] is None
    assert human_size(512) == "512 B" and human_size(3 << 30) == "3.0 GiB"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upload", "1.5"], "not a whole number of bytes"),
        (["--download", "lots"], "is not a size"),
        (["--download", str(2**64)], "over the maximum"),
    ],
)
def test_bad_sizes_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["perf", "/ip4/127.0.0.1/tcp/1", *args])
    assert result.exit_code == 2 and message in result.output, result.output


# -- two nodes on loopback ------------------------------------------------------------------


@pytest.fixture
async def perf_server() -> AsyncIterator[Node]:
    node = await start_node()
    serve_perf(node, max_download=LIMIT)
    yield node
    await node.stop()


@pytest.mark.parametrize(
    ("upload", "download", "muxer"),
    [
        (3 * MIB, 0, "yamux"),
        (0, 3 * MIB, "yamux"),
        (MIB + 1, 2 * MIB - 7, "yamux"),
        (MIB + 1, 2 * MIB - 7, "mplex"),
        (1, CHUNK_SIZE + 1, "yamux"),
        (0, 0, "yamux"),
        (0, LIMIT, "yamux"),
    ],
)
async def test_transfers(
    perf_server: Node, caplog: pytest.LogCaptureFixture, upload: int, download: int, muxer: str
) -> None:
    client = await start_node(muxers=(muxer,))
    caplog.set_level(logging.INFO, PERF_LOG)
    try:
        result = await measure_perf(client, addr_of(perf_server), upload, download)
    finally:
        await client.stop()
    assert (result.upload_bytes, result.download_bytes) == (upload, download)
    assert f"uploaded {upload} bytes and downloaded {download}" in caplog.text  # server's count
    assert 0 <= result.upload_seconds <= result.total_seconds
    assert result.upload_seconds + result.download_seconds == pytest.approx(result.total_seconds)
    if download:
        assert result.first_byte_seconds is not None
        assert 0 <= result.first_byte_seconds <= result.download_seconds
    else:
        assert result.first_byte_seconds is None


async def test_oversize_download_is_refused(
    perf_server: Node, client: Node, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(RemoteProtocolError, match="reset the perf stream during the"):
        await measure_perf(client, addr_of(perf_server), MIB, LIMIT + 1)
    assert f"asked for {LIMIT + 1} bytes, over the limit of {LIMIT}" in caplog.text
    again = await measure_perf(client, perf_server.peer_id, 0, 1)  # the connection lives on
    assert again.download_bytes == 1


async def test_truncated_header_resets_the_stream(
    perf_server: Node, client: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await client.dial(addr_of(perf_server))
    stream = await client.new_stream(perf_server.peer_id, [PROTOCOL_ID])
    await stream.write(b"\0\0\0")
    await stream.close_write()
    with pytest.raises(StreamResetError):
        await stream.read()
    assert "perf request from" in caplog.text and "cut short" in caplog.text


async def short_server(stream: Stream) -> None:
    """Sends half of what was asked, then closes."""
    wanted = decode_header(await stream.readexactly(HEADER_SIZE))
    while await stream.read():
        pass
    await stream.write(bytes(wanted // 2))
    await stream.close()


async def generous_server(stream: Stream) -> None:
    """Sends one byte more than was asked."""
    wanted = decode_header(await stream.readexactly(HEADER_SIZE))
    await stream.write(bytes(wanted + 1))
    await stream.close()


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (short_server, f"closed the perf stream after {MIB // 2} of the {MIB} bytes"),
        (generous_server, f"sent more than the {MIB} bytes asked for"),
    ],
)
async def test_a_peer_sending_the_wrong_count_is_an_error(
    server: Node, client: Node, handler: object, message: str
) -> None:
    server.set_handler(PROTOCOL_ID, handler)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError, match=message):
        await measure_perf(client, addr_of(server), 1000, MIB)


async def test_perf_is_not_served_unless_enabled(server: Node, client: Node) -> None:
    assert PROTOCOL_ID not in server.protocols
    with pytest.raises(ProtocolNotSupportedError, match=r"serve --perf"):
        await measure_perf(client, addr_of(server), 0, 1)


# -- the command line ---------------------------------------------------------------------


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *P2PNODE, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


async def test_cli_perf_against_a_node(
    perf_server: Node, server: Node, cli_env: dict[str, str]
) -> None:
    code, out, err = await run_cli(
        cli_env, "perf", addr_of(perf_server), "--upload", "1MiB", "--download", "2MiB", "--json"
    )
    assert code == 0, err
    connected, event = (json.loads(line) for line in out.splitlines())
    assert connected["event"] == "connected" and connected["peer_id"] == str(perf_server.peer_id)
    assert event["event"] == "perf"
    assert (event["upload_bytes"], event["download_bytes"]) == (MIB, 2 * MIB)
    assert event["total_ms"] >= event["download_ms"] >= event["first_byte_ms"] >= 0
    assert event["download_bytes_per_s"] > 0

    code, out, err = await run_cli(
        cli_env, "perf", addr_of(perf_server), "--upload", "1000", "--download", "3MiB"
    )
    assert code == 0, err
    assert re.search(r"^upload 1000 B in [\d.]+ s \([\d.]+ \w+/s\), download 3\.0 MiB", out, re.M)

    code, out, err = await run_cli(cli_env, "perf", addr_of(server), "--download", "1")
    assert code == 4 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "p2pnode serve --perf" in line


def test_serve_perf_option(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = Process(
        [*P2PNODE, "serve", "--perf", "--perf-max-download", "1MiB", "--listen",
         "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--dht", "off", "--ephemeral", "--json"],
        cli_env,
    )  # fmt: skip
    try:
        listening = proc.event("listening")
        assert listening["perf"] is True
        addr = listening["addrs"][0]
        code, out, err = asyncio.run(run_cli(cli_env, "perf", addr, "--download", "1MiB", "--json"))
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["download_bytes"] == MIB
        code, out, err = asyncio.run(run_cli(cli_env, "perf", addr, "--download", "1048577"))
        assert code == 1 and "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert "reset the perf stream" in line
    finally:
        assert proc.stop() == 0
    assert proc.proc.stderr is not None
    assert "over the limit of 1048576" in proc.proc.stderr.read().decode()


def test_bench_perf_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf", "--mib", "1", "--runs", "1", "--only", "p2pnode",
         "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["rows"]
    assert (row["client"], row["server"]) == ("p2pnode", "p2pnode")
    assert row["up_mb_per_s"] > 0 and row["down_mb_per_s"] > 0
