"""The command line as a user runs it: real processes on loopback (no mDNS here)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pnode.wire.identity import Identity

from .netns import Process

P2PNODE = [sys.executable, "-m", "p2pnode"]


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*P2PNODE, *args], capture_output=True, text=True, env=env, timeout=60, input=stdin
    )


@pytest.fixture
def server(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Process, dict]]:
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    marker = tmp_path / "started"
    slow = f"slow=sh -c 'touch {marker}; cat {fifo} >/dev/null; echo done'"
    proc = Process(
        [*P2PNODE, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--json",
         "--exec", "upper=tr a-z A-Z", "--exec", "fail=sh -c 'echo broken >&2; exit 3'",
         "--exec", slow, "--grace", "30"],
        cli_env,
    )  # fmt: skip
    listening = proc.event("listening")
    yield proc, listening
    proc.stop()


def test_id_creates_a_private_key_file_once(cli_env: dict[str, str], tmp_path: Path) -> None:
    first = json.loads(run(cli_env, "id", "--json").stdout)
    second = json.loads(run(cli_env, "id", "--json").stdout)
    assert first["peer_id"] == second["peer_id"]
    key = Path(first["identity"])
    assert key == tmp_path / "config" / "p2pnode" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Identity.load(key).peer_id.__str__() == first["peer_id"]
    os.chmod(key, 0o644)
    refused = run(cli_env, "id")
    assert refused.returncode == 1 and "chmod 600" in refused.stderr


def test_serve_ping_and_send_task(server: tuple[Process, dict], cli_env: dict[str, str]) -> None:
    proc, listening = server
    addr = listening["addrs"][0]
    assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith(f"/p2p/{listening['peer_id']}")
    pings = [
        json.loads(line)
        for line in run(cli_env, "ping", addr, "-c", "3", "--json").stdout.splitlines()
    ]
    assert [p["event"] for p in pings] == ["connected", "pong", "pong", "pong", "summary"]
    assert pings[-1]["p50_ms"] > 0
    assert run(cli_env, "send-task", addr, "hello", "--kind", "upper").stdout == "HELLO\n"
    assert run(cli_env, "send-task", addr, "-", stdin="from stdin").stdout == "from stdin\n"
    detailed = json.loads(run(cli_env, "send-task", addr, "x", "--json").stdout)
    assert detailed["output"] == "x" and detailed["timings"]["round_trip_ms"] > 0
    log = proc.event("task", kind="upper")
    assert log["outcome"] == "ok" and log["peer"]


def test_exit_codes_tell_failures_apart(
    server: tuple[Process, dict], cli_env: dict[str, str]
) -> None:
    _, listening = server
    addr = listening["addrs"][0]
    wrong_id = addr.rsplit("/p2p/", 1)[0] + f"/p2p/{Identity.generate().peer_id}"
    cases = {
        "unreachable": (["ping", "/ip4/127.0.0.1/tcp/1/p2p/" + listening["peer_id"]], 3),
        "wrong identity": (["ping", wrong_id], 4),
        "unknown kind": (["send-task", addr, "x", "--kind", "nope"], 6),
        "task failed": (["send-task", addr, "x", "--kind", "fail"], 7),
        "no /p2p": (["send-task", addr.rsplit("/p2p/", 1)[0], "x"], 1),
    }
    for name, (args, code) in cases.items():
        result = run(cli_env, *args)
        assert result.returncode == code, f"{name}: {result.returncode} {result.stderr}"
        assert result.stderr.startswith("error: "), name
    failed = run(cli_env, "send-task", addr, "x", "--kind", "fail")
    assert "broken" in failed.stderr


def test_timeout_exit_code(
    server: tuple[Process, dict], cli_env: dict[str, str], tmp_path: Path
) -> None:
    _, listening = server
    result = run(
        cli_env, "send-task", listening["addrs"][0], "x", "--kind", "slow", "--timeout", "0.5"
    )
    assert result.returncode == 5, result.stderr
    with open(tmp_path / "release", "w") as fifo:  # let the killed task's reader go
        fifo.write("")


def wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_graceful_shutdown_answers_tasks_in_flight(
    server: tuple[Process, dict], cli_env: dict[str, str], tmp_path: Path
) -> None:
    proc, listening = server
    addr = listening["addrs"][0]
    in_flight = subprocess.Popen(
        [*P2PNODE, "send-task", addr, "x", "--kind", "slow", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env,
    )  # fmt: skip
    wait_for(tmp_path / "started")
    proc.proc.send_signal(signal.SIGTERM)
    proc.event("stopping")
    refused = run(cli_env, "send-task", addr, "late")
    assert refused.returncode == 6 and "shutting_down" in refused.stderr
    with open(tmp_path / "release", "w") as fifo:
        fifo.write("go")
    out, err = in_flight.communicate(timeout=30)
    assert in_flight.returncode == 0, err
    assert json.loads(out)["output"] == "done\n"
    proc.event("stopped")
    assert proc.proc.wait(20) == 0


def test_mplex_only_nodes_talk(cli_env: dict[str, str]) -> None:
    proc = Process(
        [*P2PNODE, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--json",
         "--muxer", "mplex", "--ephemeral"],
        cli_env,
    )  # fmt: skip
    try:
        addr = proc.event("listening")["addrs"][0]
        first = json.loads(run(cli_env, "ping", addr, "-c", "1", "--json").stdout.splitlines()[0])
        assert first["muxer"] == "/mplex/6.7.0"
        assert (
            run(cli_env, "send-task", addr, "over mplex", "--muxer", "mplex").stdout
            == "over mplex\n"
        )
        refused = run(cli_env, "ping", addr, "--muxer", "yamux")
        assert refused.returncode == 4 and "yamux" in refused.stderr
    finally:
        assert proc.stop() == 0


def test_bad_arguments_are_explained(cli_env: dict[str, str]) -> None:
    bad_addr = run(cli_env, "ping", "not-a-multiaddr")
    assert bad_addr.returncode == 1 and "must start with '/'" in bad_addr.stderr
    bad_exec = run(cli_env, "serve", "--no-mdns", "--ephemeral", "--handler", "nosuchmodule:f")
    assert bad_exec.returncode == 1 and "cannot import" in bad_exec.stderr


def test_allow_list_and_python_handler(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "agent_tools.py").write_text(
        "def shout(request):\n    return request.input.upper() + '!'\n"
    )
    allowed_env = dict(cli_env, XDG_CONFIG_HOME=str(tmp_path / "allowed"))
    other_env = dict(cli_env, XDG_CONFIG_HOME=str(tmp_path / "other"))
    allowed_id = json.loads(run(allowed_env, "id", "--json").stdout)["peer_id"]
    allow_file = tmp_path / "allow.txt"
    allow_file.write_text(f"# agents we trust\n{allowed_id}\n\n")
    proc = Process(
        [*P2PNODE, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--json",
         "--ephemeral", "--allow-file", str(allow_file), "--handler", "agent_tools:shout"],
        dict(cli_env, PYTHONPATH=str(tmp_path)),
    )  # fmt: skip
    try:
        addr = proc.event("listening")["addrs"][0]
        assert run(allowed_env, "send-task", addr, "hi").stdout == "HI!\n"
        refused = run(other_env, "send-task", addr, "hi")
        assert refused.returncode == 6 and "unauthorized" in refused.stderr
        assert "--allow" in refused.stderr  # it says what to do
        log = proc.event("task", outcome="unauthorized")
        assert log["peer"] != allowed_id
    finally:
        assert proc.stop() == 0


async def test_serve_freezes_its_start_up_heap() -> None:
    """Once listening, `serve` moves what it started with out of the collector's sight."""
    import asyncio
    import gc
    from typing import Any

    from p2pnode.cli.output import Output
    from p2pnode.cli.serve import ServeOptions, run_serve

    loop = asyncio.get_running_loop()
    frozen: list[int] = []

    class Recorder(Output):
        def emit(self, event: str, human: str, **fields: Any) -> None:
            if event == "listening":
                loop.call_soon(os.kill, os.getpid(), signal.SIGTERM)  # run_serve handles it
            elif event == "stopping":
                frozen.append(gc.get_freeze_count())

    gc.unfreeze()
    try:
        options = ServeOptions(listen_addrs=["/ip4/127.0.0.1/tcp/0"], ephemeral=True, mdns=False)
        await run_serve(options, Recorder(as_json=True))
    finally:
        gc.unfreeze()
    assert frozen and frozen[0] > 1000
