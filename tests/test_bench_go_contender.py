"""The go-libp2p contender (bench/contenders/go_bench.py, p2pd) keeps bench/CONTRACT.md: one
listening line, one result line per measurement, a server that stops at the end of its
stdin pipe, and no daemon or unix socket left behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pnode import Identity, Node

from .interop.p2pd import require_p2pd

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parent.parent
GO = [sys.executable, "-m", "bench.contenders.go_bench"]
Check = Callable[[dict[str, Any]], bool]


def environment(tmp: Path) -> dict[str, str]:
    """Our environment with TMPDIR in ``tmp``, where the daemons make their socket dirs."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}


def start_server(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [*GO, "server"],
        cwd=ROOT,
        env=environment(tmp),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = json.loads(server.stdout.readline())
    assert line["event"] == "listening", line
    assert "/ip4/127.0.0.1/tcp/" in line["addr"] and "/p2p/" in line["addr"], line
    return server, line["addr"]


def stop(server: subprocess.Popen[str]) -> int:
    if server.poll() is None:
        server.terminate()
    try:
        return server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def client(
    tmp: Path, addr: str, *args: str, options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GO, *options, "client", addr, *args],
        cwd=ROOT,
        env=environment(tmp),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def go_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    require_p2pd()
    tmp = tmp_path_factory.mktemp("go-bench")
    server, addr = start_server(tmp)
    try:
        yield tmp, addr
    finally:
        assert stop(server) == 0
        assert list(tmp.iterdir()) == [], "a daemon's socket directory was left behind"


@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["connect", "--n", "3"], lambda r: len(r["samples_ms"]) == 3),
        (["ping", "--n", "20"], lambda r: len(r["samples_ms"]) == 20),
        (["task", "--n", "10", "--size", "1024"], lambda r: r["size"] == 1024),
        (
            ["rate", "--n", "400", "--inflight", "8", "--connections", "2"],
            lambda r: (r["tasks"], r["inflight"], r["connections"]) == (400, 8, 2),
        ),
        *(
            (
                ["throughput", "--bytes", str(1 << 20), "--streams", "2", "--direction", way],
                lambda r, way=way: (r["bytes"], r["direction"]) == (1 << 20, way),
            )
            for way in ("up", "down")
        ),
    ],
    ids=["connect", "ping", "task", "rate", "throughput-up", "throughput-down"],
)
def test_client_prints_one_result_line(
    go_server: tuple[Path, str], args: list[str], check: Check
) -> None:
    done = client(*go_server, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 1 and lines[0]["measurement"] == args[0], lines
    result = lines[0]
    assert all(ms > 0 for ms in result.get("samples_ms", [])), result
    assert result.get("seconds", 1) > 0 and check(result), result


def test_other_muxers_are_refused_with_an_error_line(go_server: tuple[Path, str]) -> None:
    done = client(*go_server, "ping", "--n", "1", options=("--muxer", "mplex"))
    assert done.returncode == 1
    line = json.loads(done.stdout)
    assert line["event"] == "error" and "only yamux" in line["message"], line


def test_server_stops_when_its_stdin_pipe_ends(tmp_path: Path) -> None:
    require_p2pd()
    server, _ = start_server(tmp_path)
    try:
        assert server.stdin is not None
        server.stdin.close()
        assert server.wait(timeout=20) == 0
    finally:
        stop(server)
    assert list(tmp_path.iterdir()) == [], "the daemon's socket directory was left behind"


async def test_each_connect_sample_is_a_new_connection(tmp_path: Path) -> None:
    # The daemon reuses a live connection; the client must disconnect between samples.
    require_p2pd()
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    inbound: list[str] = []
    node.on_event(lambda e: inbound.append(e.kind) if e.direction == "inbound" else None)
    try:
        addr = str(node.listen_addrs[0].with_peer_id(node.peer_id))
        proc = await asyncio.create_subprocess_exec(
            *GO, "client", addr, "connect", "--n", "5",
            cwd=ROOT, env=environment(tmp_path), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out
        assert len(json.loads(out)["samples_ms"]) == 5
        assert inbound.count("connected") == 5, inbound
    finally:
        await node.stop()
