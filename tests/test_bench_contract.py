"""The benchmark contenders keep bench/CONTRACT.md: a server line, one result line, and a
server that stops when its runner's pipe closes (so none outlives a runner that died)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = {
    "floor": [sys.executable, "-m", "bench.contenders.floor_bench"],
    "p2pnode": [sys.executable, "-m", "bench.contenders.p2pnode_bench"],
}


def start_server(argv: list[str]) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [*argv, "server"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = json.loads(server.stdout.readline())
    assert line["event"] == "listening"
    return server, line["addr"]


@pytest.mark.parametrize("name", sorted(CONTENDERS))
def test_server_stops_when_its_stdin_pipe_ends(name: str) -> None:
    server, _ = start_server(CONTENDERS[name])
    try:
        assert server.poll() is None
        assert server.stdin is not None
        server.stdin.close()
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("name", sorted(CONTENDERS))
@pytest.mark.parametrize(
    ("args", "check"),
    [
        (["ping", "--n", "20"], lambda r: len(r["samples_ms"]) == 20),
        (["task", "--n", "10", "--size", "1024"], lambda r: r["size"] == 1024),
        (
            ["throughput", "--bytes", str(1 << 20), "--streams", "2", "--direction", "down"],
            lambda r: r["bytes"] == 1 << 20 and r["seconds"] > 0,
        ),
        (["rate", "--n", "40", "--inflight", "4"], lambda r: r["tasks"] == 40),
    ],
    ids=["ping", "task", "throughput", "rate"],
)
def test_client_prints_one_result_line(name: str, args: list[str], check: object) -> None:
    server, addr = start_server(CONTENDERS[name])
    try:
        done = subprocess.run(
            [*CONTENDERS[name], "client", addr, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(lines) == 1
        assert lines[0]["measurement"] == args[0]
        assert callable(check) and check(lines[0])
    finally:
        server.terminate()
        assert server.wait(timeout=20) == 0
