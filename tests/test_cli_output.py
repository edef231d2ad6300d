"""``serve`` output never blocks serving: a stdout nobody reads, a stdout that closes."""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pnode.demo.netns import Host
from p2pnode.protocols.task.client import send_task
from p2pnode.wire.identity import Identity

from .conftest import start_node
from .netns import Process, p2pnode

P2PNODE = [sys.executable, "-m", "p2pnode"]
SERVE = [*P2PNODE, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--json",
         "--ephemeral"]  # fmt: skip


def stop_and_drain(
    proc: subprocess.Popen[bytes], timeout: float = 20.0
) -> tuple[int, list[dict[str, object]]]:
    """SIGTERM, then read stdout while the process ends: its exit code and last lines."""
    proc.terminate()
    events = drain(proc, timeout)
    return proc.wait(timeout), events


def drain(proc: subprocess.Popen[bytes], timeout: float) -> list[dict[str, object]]:
    """Everything the process writes to stdout until it closes it."""
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def fail_handshakes(host: str, port: int, count: int) -> None:
    for _ in range(count):
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"\x13/not-multistream/1\n")
            while sock.recv(4096):  # until the node gives up on us: its failure is counted
                pass


def test_serve_keeps_serving_when_nobody_reads_its_stdout(cli_env: dict[str, str]) -> None:
    serve = Process(SERVE, cli_env)
    try:
        addr = serve.event("listening")["addrs"][0]  # the last line this test reads for now

        async def tasks_and_pings() -> tuple[list[str], list[float]]:
            client = await start_node()
            try:
                # Each task is a log line of ~150 bytes: 2,000 of them overflow a 64 KiB
                # pipe many times over; a blocking print would freeze the node after ~400.
                outputs = []
                for batch in range(20):
                    results = await asyncio.gather(
                        *(send_task(client, addr, f"{batch}-{i}", timeout=10) for i in range(100))
                    )
                    outputs += [r.output for r in results]
                rtts = await asyncio.wait_for(client.ping(addr, count=5), 10)
                return outputs, rtts
            finally:
                await client.stop()

        outputs, rtts = asyncio.run(tasks_and_pings())
        assert outputs == [f"{b}-{i}" for b in range(20) for i in range(100)]
        assert len(rtts) == 5
        code, events = stop_and_drain(serve.proc)
        assert code == 0
    finally:
        serve.stop()
    dropped = sum(int(e["lines"]) for e in events if e["event"] == "output_dropped")  # type: ignore[call-overload]
    tasks = sum(1 for e in events if e["event"] == "task")
    assert dropped > 0, [e for e in events if e["event"] != "task"][:5]
    assert tasks + dropped >= 2000  # every task line either got through or was counted
    assert events[-1]["event"] == "stopped"


def test_repeated_handshake_failures_from_one_address_are_folded(
    cli_env: dict[str, str],
) -> None:
    serve = Process(SERVE, cli_env)
    try:
        addr = serve.event("listening")["addrs"][0]
        port = int(addr.split("/")[4])
        fail_handshakes("127.0.0.1", port, 50)
        first = serve.event("handshake_failed")
        assert "repeated" not in first
        code, events = stop_and_drain(serve.proc)  # the fold is reported at exit at the latest
        assert code == 0
    finally:
        serve.stop()
    folded = [e for e in events if e["event"] == "handshake_failed"]
    assert folded == [{"event": "handshake_failed", "addr": "127.0.0.1", "repeated": 49}]


def test_serve_piped_into_head_ends_output_quietly(cli_env: dict[str, str], tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        serve = subprocess.Popen(SERVE, stdout=subprocess.PIPE, stderr=stderr, env=cli_env)
    try:
        assert serve.stdout is not None
        listening = json.loads(serve.stdout.readline())
        addr = listening["addrs"][0]
        serve.stdout.close()  # what `| head -1` does once it has its line

        async def tasks() -> list[str]:
            client = await start_node()
            try:
                results = [await send_task(client, addr, str(i), timeout=10) for i in range(20)]
                return [r.output for r in results]
            finally:
                await client.stop()

        assert asyncio.run(tasks()) == [str(i) for i in range(20)]
        serve.terminate()
        assert serve.wait(20) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert stderr_path.read_text() == ""


def test_json_errors_carry_code_task_id_and_exit_code(cli_env: dict[str, str]) -> None:
    serve = Process(SERVE, cli_env)
    try:
        addr = serve.event("listening")["addrs"][0]
        result = subprocess.run(
            [*P2PNODE, "send-task", "--json", "--kind", "nope", addr, "hi"],
            capture_output=True, text=True, env=cli_env, timeout=60,
        )  # fmt: skip
    finally:
        serve.stop()
    assert result.returncode == 6
    error = json.loads(result.stderr)
    assert error["event"] == "error"
    assert error["code"] == "unknown_kind"
    assert error["exit_code"] == 6
    assert len(error["task_id"]) == 16
    assert error["task_id"] in error["message"]


def test_json_errors_without_a_protocol_code_name_the_exit_code(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    key = tmp_path / "garbage.key"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    result = subprocess.run(
        [*P2PNODE, "id", "--json", "--identity", str(key)],
        capture_output=True, text=True, env=cli_env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    error = json.loads(result.stderr)
    assert (error["event"], error["code"], error["exit_code"]) == ("error", "error", 1)
    assert str(key) in error["message"]


@pytest.mark.netns
@pytest.mark.parametrize("restricted", [False, True])
def test_serve_warns_when_anyone_can_run_its_commands(
    hosts: tuple[Host, Host], cli_env: dict[str, str], restricted: bool
) -> None:
    a, _ = hosts
    argv = ["serve", "--ephemeral", "--json", "--no-mdns", "--dht", "off"]
    argv += ["--listen", f"/ip4/{a.ip}/tcp/0", "--exec", "up=tr a-z A-Z"]
    if restricted:
        argv += ["--allow", str(Identity.generate().peer_id)]
    serve = Process(p2pnode(a, *argv), cli_env)
    try:
        serve.event("listening")
        early = [json.loads(line) for line in serve._buffer.splitlines() if line.strip()]
        code, events = stop_and_drain(serve.proc)
    finally:
        serve.stop()
    assert code == 0 and events[-1]["event"] == "stopped"
    warnings = [e for e in early + events if e["event"] == "warning"]
    if restricted:
        assert warnings == []
    else:
        (warning,) = warnings
        assert warning["code"] == "open_handlers" and "--allow" in str(warning["message"])
