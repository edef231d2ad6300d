"""Task protocol 2 against a js peer written from docs/task-protocol-2.md alone, both ways:
binary round trips, 100 MiB in and out with a hash check, chunks that arrive before the
task ends, cancel mid-stream, fan-out to three js peers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from p2pnode.node import Node
from p2pnode.protocols.capable import capable_peers, fan_out
from p2pnode.protocols.card import CardService, task_server_card
from p2pnode.protocols.task.client2 import run_task, stream_task
from p2pnode.protocols.task.handlers import EchoHandler, ExecHandler, PythonHandler
from p2pnode.protocols.task.handlers2 import Task
from p2pnode.protocols.task.messages2 import OutputChunk, Part
from p2pnode.protocols.task.server import TaskLogRecord, TaskServer

from ..conftest import addr_of
from .jspeer import JS_DIR, JsListener, require_js_peer, start_js_listener

SCRIPT = JS_DIR / "task2.mjs"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
ALL_BYTES = bytes(range(256))
BIG = 100 * 1024 * 1024
CHUNK = 256 * 1024


def pattern_chunks(size: int) -> Iterator[bytes]:
    """byte[i] = (i * 31 + 7) & 0xff, in chunks (the js peer's `generate` pattern)."""
    period = bytes((i * 31 + 7) & 0xFF for i in range(256))
    block = period * (CHUNK // 256)
    for start in range(0, size, CHUNK):
        yield block[: min(CHUNK, size - start)]


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern_chunks(size):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
async def js_server() -> AsyncIterator[JsListener]:
    listener = await start_js_listener(script=SCRIPT)
    yield listener
    await listener.stop()


async def test_binary_parts_round_trip_through_js(js_server: JsListener, client: Node) -> None:
    parts = [Part.of_bytes(ALL_BYTES), Part.of_bytes(PNG, "image/png"), Part.of_text("héllo")]
    out = await run_task(client, js_server.addr, parts, kind="echo")
    assert [p.as_bytes() for p in out.parts] == [ALL_BYTES, PNG, "héllo".encode()]
    assert out.parts[1].media_type == "image/png"
    streamed = [e async for e in stream_task(client, js_server.addr, parts, kind="echo")]
    chunks = [e.part.as_bytes() for e in streamed if isinstance(e, OutputChunk)]
    assert b"".join(chunks) == ALL_BYTES + PNG + "héllo".encode()


async def test_100_mib_in_and_out_with_js(js_server: JsListener, client: Node) -> None:
    out = await run_task(client, js_server.addr, kind="sha256", timeout=120,
                         input_chunks=pattern_chunks(BIG))  # fmt: skip
    assert out.parts[0].text == pattern_digest(BIG)
    assert out.parts[1].value == {"bytes": BIG}
    digest, size = hashlib.sha256(), 0
    events = stream_task(client, js_server.addr, kind="generate", metadata={"size": BIG},
                         timeout=120)  # fmt: skip
    async for event in events:
        if isinstance(event, OutputChunk):
            digest.update(event.part.data or b"")
            size += len(event.part.data or b"")
    assert (size, digest.hexdigest()) == (BIG, pattern_digest(BIG))


async def test_js_chunks_arrive_before_the_task_ends(js_server: JsListener, client: Node) -> None:
    arrivals: list[tuple[str, float]] = []
    events = stream_task(client, js_server.addr, kind="count",
                         metadata={"n": 5, "delay_ms": 150})  # fmt: skip
    async for event in events:
        arrivals.append((type(event).__name__, time.monotonic()))
    outputs = [t for name, t in arrivals if name == "OutputChunk"]
    done = next(t for name, t in arrivals if name == "Completed")
    assert len(outputs) == 5
    assert done - outputs[0] >= 0.5  # four more delays were still to come


async def test_leaving_the_stream_cancels_the_js_task(js_server: JsListener, client: Node) -> None:
    async for event in stream_task(client, js_server.addr, kind="hang"):
        if isinstance(event, OutputChunk):
            break
    cancelled = await js_server.next_event("task-cancelled")
    assert cancelled["task_id"]


async def test_js_card_verifies_here(js_server: JsListener, client: Node) -> None:
    card = await client.fetch_card(js_server.addr)
    assert (card.peer_id, card.version) == (js_server.peer_id, "js-task2/1.0")
    assert card.kind("count") is not None and card.kind("count").streaming  # type: ignore[union-attr]


async def test_fan_out_to_three_js_peers_found_by_their_cards(client: Node) -> None:
    peers = [await start_js_listener("--name", f"js{i}", script=SCRIPT) for i in range(3)]
    try:
        candidates = await capable_peers(client, [js.addr for js in peers], "upper")
        assert sorted(c.card.name for c in candidates) == ["js0", "js1", "js2"]
        results = await fan_out(client, candidates, "abc", kind="upper", count=3)
        assert sorted(r.peer_id for r in results) == sorted(js.peer_id for js in peers)
        assert {r.output.text for r in results if r.output} == {"ABC"}
    finally:
        for js in peers:
            await js.stop()


# -- js client, p2pnode server ------------------------------------------------------------


async def js_task(addr: str, *args: str, on_event: Any = None, timeout: float = 180) -> dict:
    """Run `task2.mjs dial ADDR task ARGS`; its result event (``on_event`` sees each line)."""
    node = require_js_peer()
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), "dial", addr, "task", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    result = None
    try:
        async with asyncio.timeout(timeout):
            while line := await proc.stdout.readline():
                event = json.loads(line)
                if on_event is not None:
                    on_event(event)
                if event.get("event") == "result":
                    result = event
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0 and result is not None, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    return result


@pytest.fixture
async def p2pnode_server(server: Node) -> AsyncIterator[tuple[TaskServer, asyncio.Event]]:
    release = asyncio.Event()

    async def tokens(task: Task) -> AsyncIterator[str]:
        yield "first "
        await release.wait()
        yield "last"

    async def hang(task: Task) -> AsyncIterator[str]:
        yield "started"
        await asyncio.Event().wait()

    async def blob(task: Task) -> AsyncIterator[bytes]:
        for chunk in pattern_chunks(task.metadata["size"]):
            yield chunk

    handlers = {
        "echo": EchoHandler(),
        "sha256": ExecHandler(["sh", "-c", "sha256sum | cut -d' ' -f1"]),
        "tokens": PythonHandler(tokens),
        "hang": PythonHandler(hang),
        "blob": PythonHandler(blob),
    }
    task_server = TaskServer(server, handlers)
    task_server.install()
    yield task_server, release
    release.set()


async def test_js_client_round_trips_bytes(p2pnode_server: Any, server: Node) -> None:
    result = await js_task(addr_of(server), "--kind", "echo", "--hex", ALL_BYTES.hex())
    assert result["status"] == "completed"
    assert result["parts"][0]["hex"] == ALL_BYTES.hex()
    streamed = await js_task(addr_of(server), "--kind", "echo", "--hex", PNG.hex(),
                             "--media", "image/png", "--stream")  # fmt: skip
    assert streamed["parts"][0]["hex"] == PNG.hex()
    assert streamed["parts"][0]["media_type"] == "image/png"


async def test_js_client_sends_and_gets_100_mib(p2pnode_server: Any, server: Node) -> None:
    sent = await js_task(addr_of(server), "--kind", "sha256", "--generate", str(BIG))
    assert bytes.fromhex(sent["parts"][0]["hex"]).decode().strip() == pattern_digest(BIG)
    got = await js_task(addr_of(server), "--kind", "blob", "--stream",
                        "--metadata", json.dumps({"size": BIG}))  # fmt: skip
    assert (got["output_bytes"], got["output_sha256"]) == (BIG, pattern_digest(BIG))


async def test_js_client_sees_chunks_before_the_end(p2pnode_server: Any, server: Node) -> None:
    _, release = p2pnode_server
    seen: list[str] = []

    def on_event(event: dict) -> None:
        seen.append(event["event"])
        if event["event"] == "output":
            release.set()  # the handler waits for this: the first chunk came before the end

    result = await js_task(addr_of(server), "--kind", "tokens", "--stream", "--text", "x",
                           on_event=on_event)  # fmt: skip
    assert seen[:2] == ["accepted", "output"] and result["status"] == "completed"
    assert [p["text"] for p in result["parts"]] == ["first last"]


async def test_js_client_cancels_mid_stream(p2pnode_server: Any, server: Node) -> None:
    task_server, _ = p2pnode_server
    logs: list[TaskLogRecord] = []
    task_server.on_log = logs.append
    result = await js_task(addr_of(server), "--kind", "hang", "--stream", "--text", "",
                           "--cancel-after-first-output")  # fmt: skip
    assert (result["status"], result["code"]) == ("failed", "cancelled")
    async with asyncio.timeout(5):
        while not logs:
            await asyncio.sleep(0.01)
    assert logs[0].outcome == "cancelled" and task_server.running == 0


async def test_js_verifies_our_card(p2pnode_server: Any, server: Node) -> None:
    task_server, _ = p2pnode_server
    build = task_server_card(task_server, server.peer_id, "ours", "for js", "p2pnode/test")
    CardService(server, server.identity, build).install()
    card = await js_card(addr_of(server))
    assert card["verified"] and card["card"]["name"] == "ours"
    kinds = {k["kind"]: k for k in card["card"]["kinds"]}
    assert kinds["tokens"]["streaming"] is True and card["card"]["peer_id"] == str(server.peer_id)


async def js_card(addr: str) -> dict:
    node = require_js_peer()
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), "dial", addr, "card",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out.splitlines()[-1]))


async def test_unknown_kind_from_js(p2pnode_server: Any, server: Node) -> None:
    result = await js_task(addr_of(server), "--kind", "nope", "--text", "x")
    assert (result["status"], result["code"]) == ("failed", "unknown_kind")


def test_pattern_matches_the_js_definition() -> None:
    data = b"".join(pattern_chunks(1000))
    assert len(data) == 1000 and data[:3] == bytes([7, 38, 69]) and data[256] == 7
