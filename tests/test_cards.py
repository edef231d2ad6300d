"""Agent cards: signed, verified, refused when forged or another peer's; routing by card."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from p2pnode.errors import DecodeError, DiscoveryError, RecordError
from p2pnode.node import Node
from p2pnode.protocols.capable import capable_peers, fan_out, run_on_any
from p2pnode.protocols.card import (
    CARD_DOMAIN,
    CARD_PAYLOAD_TYPE,
    CARD_PROTOCOL,
    AgentCard,
    CardCache,
    CardService,
    KindInfo,
    open_card,
    seal_card,
    task_server_card,
)
from p2pnode.protocols.task.handlers import EchoHandler, ExecHandler, PythonHandler
from p2pnode.protocols.task.handlers2 import Task
from p2pnode.protocols.task.server import TaskServer
from p2pnode.wire.envelope import Envelope
from p2pnode.wire.identity import Identity
from p2pnode.wire.varint import encode_uvarint

from .conftest import addr_of, start_node


async def summarize(task: Task) -> AsyncIterator[str]:
    """Summarizes text."""
    yield task.input[:3]


summarize.input_schema = {"type": "string"}  # type: ignore[attr-defined]


async def card_node(name: str, handlers: dict[str, Any], **options: Any) -> tuple[Node, TaskServer]:
    identity = Identity.generate()
    node = await Node.start(identity, ["/ip4/127.0.0.1/tcp/0"])
    server = TaskServer(node, handlers, **options)
    server.install()
    build = task_server_card(server, node.peer_id, name, f"{name} node", "p2pnode/test")
    CardService(node, identity, build).install()
    return node, server


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        await node.stop()


async def test_card_describes_kinds_and_verifies(client: Node, nodes: list[Node]) -> None:
    node, _ = await card_node(
        "alpha",
        {"sum": PythonHandler(summarize), "png": ExecHandler(["cat"], media_type="image/png"),
         "echo": EchoHandler()},
        descriptions={"png": "returns the PNG it got"},
    )  # fmt: skip
    nodes.append(node)
    card = await client.fetch_card(addr_of(node))
    assert (card.peer_id, card.name, card.version) == (str(node.peer_id), "alpha", "p2pnode/test")
    assert card.protocols == ["/p2pnode/task/2.0.0", "/p2pnode/task/1.0.0"]
    kinds = {k.kind: k for k in card.kinds}
    assert kinds["sum"].streaming and kinds["sum"].description == "Summarizes text."
    assert kinds["sum"].input_schema == {"type": "string"}
    assert kinds["png"].output_types == ["image/png"]
    assert kinds["png"].description == "returns the PNG it got"
    assert card.load.max == 128 and card.load.running == 0
    assert card.issued_ms > 0


def test_a_card_relayed_by_anyone_still_verifies() -> None:
    alice = Identity.generate()
    sealed = seal_card(AgentCard(str(alice.peer_id), "alice"), alice)
    assert open_card(sealed, alice.peer_id).name == "alice"


def test_a_card_with_a_bad_signature_is_refused() -> None:
    alice = Identity.generate()
    sealed = bytearray(seal_card(AgentCard(str(alice.peer_id), "alice"), alice))
    sealed[-1] ^= 1
    with pytest.raises(RecordError, match="does not verify"):
        open_card(bytes(sealed))


def test_a_card_signed_for_another_peer_is_refused() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    forged = seal_card(AgentCard(str(alice.peer_id), "alice"), mallory)
    with pytest.raises(RecordError, match="signed by"):
        open_card(forged)
    own = seal_card(AgentCard(str(mallory.peer_id)), mallory)
    with pytest.raises(RecordError, match="asked"):
        open_card(own, alice.peer_id)


def test_a_card_signed_for_another_use_is_refused() -> None:
    alice = Identity.generate()
    payload = msgspec.msgpack.encode(AgentCard(str(alice.peer_id)))
    other = Envelope.seal(alice, "libp2p-routing-state", CARD_PAYLOAD_TYPE, payload)
    with pytest.raises(RecordError):
        open_card(other.to_bytes())
    garbage = Envelope.seal(alice, CARD_DOMAIN, CARD_PAYLOAD_TYPE, b"\xc1garbage")
    with pytest.raises(DecodeError, match="invalid agent card"):
        open_card(garbage.to_bytes())


async def test_fetch_refuses_a_forged_card_served_by_a_peer(
    client: Node, nodes: list[Node]
) -> None:
    node = await start_node()
    nodes.append(node)
    someone = Identity.generate()

    async def lie(stream: Any) -> None:
        sealed = seal_card(AgentCard(str(someone.peer_id), "not me"), someone)
        await stream.write(encode_uvarint(len(sealed)) + sealed)
        await stream.close()

    node.set_handler(CARD_PROTOCOL, lie)
    with pytest.raises(RecordError, match="asked"):
        await client.fetch_card(addr_of(node))


def test_card_cache_expires() -> None:
    now = [0.0]
    cache = CardCache(ttl=10, clock=lambda: now[0])
    peer = Identity.generate().peer_id
    cache.put(peer, AgentCard(str(peer)))
    assert cache.get(peer) is not None
    now[0] = 11
    assert cache.get(peer) is None


async def test_routing_picks_a_capable_least_loaded_peer(client: Node, nodes: list[Node]) -> None:
    release = asyncio.Event()

    async def hold(task: Task) -> str:
        await release.wait()
        return "held"

    plain, _ = await card_node("plain", {"echo": EchoHandler()})
    busy, busy_server = await card_node(
        "busy", {"sum": PythonHandler(summarize), "hold": PythonHandler(hold)}, max_concurrent=2
    )
    idle, _ = await card_node("idle", {"sum": PythonHandler(summarize)}, max_concurrent=2)
    nodes += [plain, busy, idle]
    holding = asyncio.ensure_future(client.run_task(addr_of(busy), "x", kind="hold"))
    async with asyncio.timeout(5):
        while busy_server.running == 0:
            await asyncio.sleep(0.005)
    peers = [addr_of(n) for n in (plain, busy, idle)]
    found = await capable_peers(client, peers, "sum")
    assert [c.card.name for c in found] == ["idle", "busy"]
    out = await run_on_any(client, found, "abcdef", kind="sum")
    assert (out.text, out.peer_id) == ("abc", str(idle.peer_id))
    results = await fan_out(client, found, "abcdef", kind="sum", count=3)
    assert sorted(r.peer_id for r in results if r.output) == sorted(
        [str(idle.peer_id), str(busy.peer_id)]
    )
    release.set()
    await holding
    with pytest.raises(DiscoveryError, match="no peer that serves"):
        await run_on_any(client, await capable_peers(client, peers, "nope"), "x", kind="nope")


async def test_routing_retries_elsewhere_on_busy(client: Node, nodes: list[Node]) -> None:
    full, _ = await card_node("full", {"sum": PythonHandler(summarize)}, max_concurrent=1)
    other, _ = await card_node("other", {"sum": PythonHandler(summarize)})
    nodes += [full, other]
    found = await capable_peers(client, [addr_of(full), addr_of(other)], "sum")
    found.sort(key=lambda c: c.card.name != "full")  # the full one first
    full_server_card = found[0].card
    assert full_server_card.name == "full"
    # make it busy: its one slot taken by a task of our own that never ends
    gate = asyncio.Event()

    async def never(task: Task) -> str:
        await gate.wait()
        return ""

    server2 = TaskServer(full, {"sum": PythonHandler(never)}, max_concurrent=0)
    server2.install()  # the same node now answers busy to everything
    out = await run_on_any(client, found, "abcdef", kind="sum")
    assert out.peer_id == str(other.peer_id)


async def test_first_of_a_fanout_cancels_the_rest(client: Node, nodes: list[Node]) -> None:
    cancelled = asyncio.Event()

    async def slow(task: Task) -> AsyncIterator[str]:
        try:
            await asyncio.Event().wait()
            yield "never"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    fast, _ = await card_node("fast", {"sum": PythonHandler(summarize)})
    stuck, _ = await card_node("stuck", {"sum": PythonHandler(slow)})
    nodes += [fast, stuck]
    found = await capable_peers(client, [addr_of(fast), addr_of(stuck)], "sum")
    results = await fan_out(client, found, "abcdef", kind="sum", count=2, first=True)
    assert [r.peer_id for r in results] == [str(fast.peer_id)]
    async with asyncio.timeout(5):
        await cancelled.wait()


def test_kind_info_defaults() -> None:
    assert KindInfo("x").input_types == ["*/*"]
