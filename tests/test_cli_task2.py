"""send-task with protocol 2 as a user runs it: exact bytes, files, streams, cards, --any."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import Process

P2PNODE = [sys.executable, "-m", "p2pnode"]
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + bytes(
    range(256)
)

HANDLERS = '''
import asyncio
import os
from pathlib import Path
from p2pnode import TaskProgress

async def tokens(task):
    """Streams tokens; waits for a release file before the last one."""
    yield TaskProgress(0.5, "half")
    yield "first "
    await asyncio.to_thread(Path(os.environ["RELEASE_FIFO"]).read_text)
    yield "last"
'''


def run(
    env: dict[str, str], *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*P2PNODE, *args, "--ephemeral"], capture_output=True, env=env,
                          timeout=60, input=stdin)  # fmt: skip


def serve(env: dict[str, str], *args: str) -> tuple[Process, str]:
    proc = Process([*P2PNODE, "serve", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--json",
                    "--ephemeral", *args], env)  # fmt: skip
    return proc, proc.event("listening")["addrs"][0]


@pytest.fixture
def agent(cli_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    (tmp_path / "handlers.py").write_text(HANDLERS)
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    env = dict(cli_env, PYTHONPATH=str(tmp_path), RELEASE_FIFO=str(fifo))
    proc, addr = serve(env, "--handler", "tokens=handlers:tokens", "--exec", "cat=cat",
                       "--output-type", "cat=image/png", "--name", "agent-one")  # fmt: skip
    yield env, addr
    proc.stop()


def test_files_and_stdin_go_through_byte_for_byte(
    agent: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, addr = agent
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    source.write_bytes(PNG)
    done = run(env, "send-task", addr, "--kind", "cat", "--input-file", str(source),
               "--media", "image/png", "--output-file", str(target))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == PNG
    piped = run(env, "send-task", addr, "-", stdin=PNG)
    assert (piped.returncode, piped.stdout) == (0, PNG), piped.stderr
    as_json = run(env, "send-task", addr, "--kind", "cat", "--input-file", str(source), "--json")
    result = json.loads(as_json.stdout)
    assert result["parts"][0]["media_type"] == "image/png"
    assert result["output"] is None  # not UTF-8: only in parts, as base64


def test_a_big_file_streams_both_ways(agent: tuple[dict[str, str], str], tmp_path: Path) -> None:
    env, addr = agent
    data = os.urandom(24 * 1024 * 1024 + 5)
    source, target = tmp_path / "big.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    done = run(env, "send-task", addr, "--kind", "cat", "--input-file", str(source),
               "--output-file", str(target), "--timeout", "120")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_stream_prints_chunks_before_the_task_ends(agent: tuple[dict[str, str], str]) -> None:
    env, addr = agent
    client = subprocess.Popen([*P2PNODE, "send-task", addr, "x", "--kind", "tokens", "--stream",
                               "--json", "--ephemeral"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert client.stdout is not None
    seen = []
    while not seen or seen[-1]["event"] != "output":
        seen.append(json.loads(client.stdout.readline()))
    # the handler is still waiting for its release: the first chunk came before the end
    assert [e["event"] for e in seen] == ["accepted", "progress", "output"]
    assert seen[-1]["part"]["text"] == "first "
    with open(env["RELEASE_FIFO"], "w") as fifo:
        fifo.write("go")
    rest = [json.loads(line) for line in client.stdout.read().splitlines()]
    assert client.wait(30) == 0
    assert [e["event"] for e in rest] == ["output", "completed"]
    assert rest[0]["part"]["text"] == "last" and rest[0]["append"] is True


def test_card_shows_the_kinds(agent: tuple[dict[str, str], str]) -> None:
    env, addr = agent
    card = json.loads(run(env, "card", addr, "--json").stdout)
    assert card["name"] == "agent-one"
    kinds = {k["kind"]: k for k in card["kinds"]}
    assert kinds["tokens"]["streaming"] is True
    assert kinds["cat"]["output_types"] == ["image/png"]
    assert {"default", "echo", "cat", "tokens"} <= set(kinds)


def test_fanout_runs_on_every_capable_peer(cli_env: dict[str, str]) -> None:
    servers = [serve(cli_env, "--exec", "up=tr a-z A-Z") for _ in range(3)]
    plain = serve(cli_env)
    try:
        candidates = [a for _, a in servers] + [plain[1]]
        argv = ["send-task", "--any", "up", "abc", "--fanout", "3", "--json"]
        for addr in candidates:
            argv += ["--candidate", addr]
        done = run(cli_env, *argv)
        assert done.returncode == 0, done.stderr
        results = [json.loads(line) for line in done.stdout.splitlines()]
        assert sorted(r["peer_id"] for r in results) == sorted(
            a.rsplit("/", 1)[1] for _, a in servers
        )
        assert {r["output"] for r in results} == {"ABC"}
        first = run(cli_env, *argv, "--first")
        assert len(first.stdout.splitlines()) == 1
        nobody = run(cli_env, "send-task", "--any", "nope", "x", "--candidate", plain[1])
        assert nobody.returncode != 0 and b"serves kind 'nope'" in nobody.stderr
    finally:
        for proc, _ in [*servers, plain]:
            proc.stop()
