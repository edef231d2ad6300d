"""The command line as a user runs it: real processes on loopback (no mDNS here)."""

from __future__ import annotations

import errno
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
    env: dict[str, str],
    *args: str,
    stdin: str | bytes | None = None,
    cwd: Path | None = None,
    argv: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    if isinstance(stdin, bytes):
        done = subprocess.run(
            [*(argv or P2PNODE), *args], capture_output=True, env=env, timeout=60, input=stdin,
            cwd=cwd,
        )  # fmt: skip
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )
    return subprocess.run(
        [*(argv or P2PNODE), *args], capture_output=True, text=True, env=env, timeout=60,
        input=stdin, cwd=cwd,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The command failed with ``code`` and printed exactly one ``error:`` line."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


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
    assert pings[0]["addr"] == addr and pings[-1]["p50_ms"] > 0
    assert run(cli_env, "send-task", addr, "hello", "--kind", "upper").stdout == "HELLO\n"
    assert run(cli_env, "send-task", addr, "-", stdin="from stdin").stdout == "from stdin\n"
    detailed = json.loads(run(cli_env, "send-task", addr, "x", "--json").stdout)
    assert detailed["output"] == "x" and detailed["timings"]["round_trip_ms"] > 0
    log = proc.event("task", kind="upper")
    assert log["outcome"] == "ok" and log["peer_id"]


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
    assert "no result within --timeout 0.5s" in result.stderr
    try:  # the whole process group was killed: no reader is left on the fifo
        os.close(os.open(tmp_path / "release", os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        assert exc.errno == errno.ENXIO  # no reader
    else:
        raise AssertionError("the slow command's `cat` outlived its killed task")


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
        dict(cli_env, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])),  # noqa: E501
    )  # fmt: skip
    try:
        addr = proc.event("listening")["addrs"][0]
        assert run(allowed_env, "send-task", addr, "hi").stdout == "HI!\n"
        refused = run(other_env, "send-task", addr, "hi")
        assert refused.returncode == 6 and "unauthorized" in refused.stderr
        assert "--allow" in refused.stderr  # it says what to do
        log = proc.event("task", outcome="unauthorized")
        assert log["peer_id"] != allowed_id
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


NOWHERE = "/ip4/127.0.0.1/tcp/1/p2p/" + str(Identity.generate().peer_id)


def test_bad_key_files_are_one_line_errors(cli_env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "good.key"
    Identity.generate().save(good)
    keys = {
        "empty": b"",
        "garbage": b"\x07\xff not a key at all \x00\x01",
        "truncated": good.read_bytes()[:30],
    }
    for name, data in keys.items():
        path = tmp_path / f"{name}.key"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        line = one_line_error(run(cli_env, "send-task", "--identity", str(path), NOWHERE, "x"))
        assert str(path) in line, name
    world = tmp_path / "world.key"
    world.write_bytes(good.read_bytes())
    os.chmod(world, 0o644)
    line = one_line_error(run(cli_env, "send-task", "--identity", str(world), NOWHERE, "x"))
    assert "chmod 600" in line
    line = one_line_error(
        run(cli_env, "send-task", "--identity", str(good), "--ephemeral", NOWHERE, "x")
    )
    assert "exclude" in line


@pytest.mark.parametrize(
    "args",
    [
        ["send-task", "--timeout", "nan", NOWHERE, "x"],
        ["send-task", "--timeout", "inf", NOWHERE, "x"],
        ["send-task", "--timeout", "1e308", NOWHERE, "x"],
        ["send-task", "--timeout", "0", NOWHERE, "x"],
        ["send-task", "--timeout", "-1", NOWHERE, "x"],
        ["ping", "--timeout", "nan", NOWHERE],
        ["serve", "--grace", "-1"],
        ["serve", "--grace", "nan"],
        ["peers", "--timeout", "-1"],
    ],
)
def test_bad_seconds_are_usage_errors(cli_env: dict[str, str], args: list[str]) -> None:
    result = run(cli_env, *args)
    assert result.returncode == 2, result.stderr
    assert "Invalid value for '--" in result.stderr and "Traceback" not in result.stderr


def test_uvloop_requested_but_missing_falls_back_with_a_warning(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    fake = tmp_path / "fake" / "uvloop"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no uvloop here')\n")
    env = dict(
        cli_env,
        P2PNODE_UVLOOP="1",
        PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]),
    )
    result = run(env, "ping", "-c", "1", "--timeout", "5", NOWHERE)
    assert result.returncode == 3, result.stderr  # it ran (on asyncio) and found nobody
    assert "warning: P2PNODE_UVLOOP=1 but uvloop is not installed" in result.stderr
    assert "Traceback" not in result.stderr


def test_handler_modules_that_fail_to_import_are_named(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    (tmp_path / "raises_at_import.py").write_text("raise RuntimeError('no config')\n")
    (tmp_path / "fine_here.py").write_text("def f(request):\n    return request.input\n")
    serve = ["serve", "--ephemeral", "--no-mdns", "--listen", "/not-an-addr"]
    for module in ("broken_syntax", "raises_at_import"):
        line = one_line_error(run(cli_env, *serve, "--handler", f"{module}:f", cwd=tmp_path))
        assert module in line
    # `python -P` leaves the current directory off sys.path, like the `p2pnode` script
    script = [sys.executable, "-P", "-m", "p2pnode"]
    line = one_line_error(run(cli_env, *serve, "--handler", "fine_here:f", cwd=tmp_path,
                              argv=script))  # fmt: skip
    assert "cannot import" not in line and "not-an-addr" in line  # found; failed later


def test_input_that_is_not_utf8_is_sent_exactly(
    server: tuple[Process, dict], cli_env: dict[str, str]
) -> None:
    addr = server[1]["addrs"][0]
    piped = run_bytes(cli_env, "send-task", "--ephemeral", addr, "-", stdin=b"\xff\xfe")
    assert (piped.returncode, piped.stdout) == (0, b"\xff\xfe"), piped.stderr
    argv_bytes = [os.fsencode(a) for a in [*P2PNODE, "send-task", "--ephemeral", addr]]
    done = subprocess.run([*argv_bytes, b"caf\xe9"], capture_output=True, env=cli_env,
                          timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"caf\xe9"), done.stderr


def run_bytes(env: dict[str, str], *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*P2PNODE, *args], input=stdin, capture_output=True, env=env, timeout=60)


def test_unexpected_errors_are_one_line_unless_verbose(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_bytes(b"\xff\xfe not text\n")
    serve = ["serve", "--ephemeral", "--no-mdns", "--allow-file", str(allow)]
    line = one_line_error(run(cli_env, *serve))
    assert line.startswith("error: internal error: UnicodeDecodeError")
    verbose = run(cli_env, "-v", *serve)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_short_help_and_version_options(cli_env: dict[str, str]) -> None:
    for command in ([], ["serve"], ["ping"], ["send-task"], ["peers"], ["id"]):
        result = run(cli_env, *command, "-h")
        assert result.returncode == 0 and "Usage:" in result.stdout, (command, result.stderr)
    version = run(cli_env, "-V")
    assert version.returncode == 0 and "version" in version.stdout
    ping_help = run(cli_env, "ping", "-h").stdout
    assert "Pings to send." in ping_help and "[default: 5" in ping_help
    assert "[default: 10.0]" in ping_help  # --timeout
    assert "[default: 30.0]" in run(cli_env, "send-task", "-h").stdout


def test_a_second_signal_stops_at_once(
    server: tuple[Process, dict], cli_env: dict[str, str], tmp_path: Path
) -> None:
    proc, listening = server
    in_flight = subprocess.Popen(
        [*P2PNODE, "send-task", listening["addrs"][0], "x", "--kind", "slow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env,
    )  # fmt: skip
    try:
        wait_for(tmp_path / "started")
        proc.proc.send_signal(signal.SIGTERM)
        stopping = proc.event("stopping")
        assert stopping["running"] == 1 and stopping["grace_s"] == 30
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 130  # not the 30 s of grace
    finally:
        in_flight.communicate(timeout=30)
    assert in_flight.returncode != 0


def test_unsupported_address_parts_are_errors_not_silently_dropped(
    server: tuple[Process, dict], cli_env: dict[str, str]
) -> None:
    _, listening = server
    addr, peer = listening["addrs"][0], listening["peer_id"]
    ws = addr.replace(f"/p2p/{peer}", f"/ws/p2p/{peer}")
    assert "/ws is not supported yet" in one_line_error(run(cli_env, "ping", ws))
    circuit = f"{addr}/p2p-circuit/p2p/{Identity.generate().peer_id}"
    assert "is not a relay" in one_line_error(run(cli_env, "send-task", circuit, "x"), code=3)
    listen_ws = run(cli_env, "serve", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0/ws")
    assert "/ws is not supported yet" in one_line_error(listen_ws)
    foreign = f"/ip4/127.0.0.1/tcp/0/p2p/{peer}"
    assert "names peer" in one_line_error(run(cli_env, "serve", "--ephemeral", "--listen", foreign))


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


async def test_serve_gives_back_the_memory_a_peer_made_it_hold(cli_env: dict[str, str]) -> None:
    """A peer fills the windows of 32 ping streams and takes none of the echo (the node
    holds what its limits allow, ~40 MiB); once it is gone, serve's RSS comes back."""
    import asyncio

    from p2pnode.node import Node
    from p2pnode.protocols.ping import PROTOCOL_ID as PING_ID

    serve = Process([*P2PNODE, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
                     "--dht", "off", "--json", "--ephemeral"], cli_env)  # fmt: skip
    client = await Node.start()
    try:
        addr = serve.event("listening")["addrs"][0]
        pid = serve.proc.pid
        conn = await client.dial(addr)
        assert len(await client.ping(addr, count=5)) == 5
        before = _rss(pid)
        streams = [await conn.new_stream([PING_ID]) for _ in range(32)]
        conn._transport.pause_reading()
        block = bytes(1 << 20)

        async def fill(stream: object) -> None:
            while True:  # until the windows are full: the write waits for credit
                await stream.write(block)  # type: ignore[attr-defined]

        writers = [asyncio.ensure_future(fill(s)) for s in streams]
        async with asyncio.timeout(20):
            while _rss(pid) < before + (30 << 20):
                await asyncio.sleep(0.05)
        for writer in writers:
            writer.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
        peak = _rss(pid)
        conn._transport.abort()
        deadline = time.monotonic() + 10
        while _rss(pid) > before + (10 << 20) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = _rss(pid)
        rss_mib = f"RSS {before >> 20} -> {peak >> 20} -> {after >> 20} MiB"
        assert after <= before + (10 << 20), rss_mib
    finally:
        await client.stop()
        assert serve.stop() == 0
