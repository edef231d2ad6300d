"""The Kademlia DHT against js-libp2p's @libp2p/kad-dht, both directions.

Each test builds a small loopback DHT of js servers (tests/interop/js/dht-peer.mjs) and
p2pnode servers, wired so that the peer or record to find is known to only one side:
the other side can get it only through the first side's answers. Nothing is bootstrapped
from outside: every node knows only the loopback peers the test connects it to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from p2pnode import Identity, Multiaddr, Node, NodeConfig, PeerId
from p2pnode.protocols.kad.dht import DhtConfig, DhtMode
from p2pnode.wire.kad import pk_record_key, provider_key_for_kind

from .jsdht import JsDhtPeer, require_js_dht, start_js_dht

pytestmark = pytest.mark.interop

TIMEOUT = 20
TIMEOUT_MS = TIMEOUT * 1000

StartJs = Callable[[], Awaitable[JsDhtPeer]]
StartPy = Callable[[], Awaitable[Node]]


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)  # polling a condition, not timing the test
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def start_js() -> AsyncIterator[StartJs]:
    require_js_dht()
    peers: list[JsDhtPeer] = []

    async def start() -> JsDhtPeer:
        peer = await start_js_dht()
        peers.append(peer)
        return peer

    try:
        yield start
    finally:
        await asyncio.gather(*(peer.stop() for peer in peers))


@pytest.fixture
async def start_py() -> AsyncIterator[StartPy]:
    """p2pnode DHT servers on loopback, bootstrapped by the test (no background upkeep)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start() -> Node:
            config = DhtConfig(mode=DhtMode.SERVER, seed=1, maintain=False)
            node = await Node.start(
                Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(dht=config)
            )
            stack.push_async_callback(node.stop)
            return node

        yield start


def addr_of(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


def table(node: Node) -> set[str]:
    assert node.dht is not None
    return {str(p) for p in node.dht.table.peers()}


async def js_knows(js: JsDhtPeer, peer: str) -> None:
    """Wait until ``peer`` is in js's routing table (kad-dht adds peers after identify + ping)."""
    await js.event_where("table-add", peer_id=peer)
    assert peer in (await js.command("table"))["peers"]


async def py_connects_to_js(node: Node, js: JsDhtPeer) -> None:
    """Connect, then wait until identify has put js (a DHT server) into our table."""
    await node.connect(Multiaddr.from_string(js.addr))
    await wait_for(lambda: js.peer_id in table(node), f"js {js.peer_id} in our table")


async def js_dials(js: JsDhtPeer, addr: str) -> str:
    return str((await js.command("dial", addr=addr, timeout_ms=TIMEOUT_MS))["peer_id"])


def same_addrs(js_addrs: list[str], node: Node) -> bool:
    """True when some js-reported address is one of ``node``'s listen addresses."""
    ours = {str(a) for a in node.listen_addrs}
    return any(str(Multiaddr.from_string(a).without_peer_id()) in ours for a in js_addrs)


async def test_js_adds_p2pnode_and_finds_a_peer_only_p2pnode_knows(
    start_js: StartJs, start_py: StartPy
) -> None:
    hub, hidden = await start_py(), await start_py()
    assert hidden.dht is not None
    # `hidden` joins through `hub` only: the hub has it in its table, js never hears of it
    await hidden.connect(Multiaddr.from_string(addr_of(hub)))
    await wait_for(lambda: str(hidden.peer_id) in table(hub), "hidden in the hub's table")
    js = await start_js()
    assert await js_dials(js, addr_of(hub)) == str(hub.peer_id)
    # js kad-dht adds us after identify lists /ipfs/kad/1.0.0 (and a ping); we add js likewise
    await js_knows(js, str(hub.peer_id))
    await wait_for(lambda: js.peer_id in table(hub), "js in the hub's table")
    assert str(hidden.peer_id) not in (await js.command("table"))["peers"]
    # js asks the network (not its cache): the hub's FIND_NODE answer names `hidden`
    found = await js.command("find-peer", peer_id=str(hidden.peer_id), timeout_ms=TIMEOUT_MS)
    assert found["found"], found
    assert found["from"] == str(hub.peer_id)
    assert same_addrs(found["addrs"], hidden), (found, hidden.listen_addrs)
    # and js's closest peers to a key, found through us, include both p2pnode nodes
    key = hidden.peer_id.to_bytes().hex()
    closest = await js.command("closest-peers", key=key, timeout_ms=TIMEOUT_MS)
    assert {str(hub.peer_id), str(hidden.peer_id)} <= set(closest["peers"]), closest


async def test_p2pnode_finds_a_peer_only_js_knows(start_js: StartJs, start_py: StartPy) -> None:
    hub, hidden = await start_js(), await start_js()
    assert await js_dials(hidden, hub.addr) == hub.peer_id
    await js_knows(hub, hidden.peer_id)
    node = await start_py()
    assert node.dht is not None
    await py_connects_to_js(node, hub)
    target = PeerId.from_string(hidden.peer_id)
    # js may have dialed us meanwhile (it adds DHT peers it learns of): forget it, so that
    # only a lookup can tell us where it is
    for conn in node.connections(target):
        await conn.close()
    node.peer_store.remove(target)
    node.dht.table.remove(target)
    assert node.connections(target) == [] and target not in node.dht.table
    # a FIND_NODE lookup through the js hub finds the js-only peer's address
    addrs = await node.dht.find_peer(target, TIMEOUT)
    assert str(Multiaddr.from_string(hidden.addr).without_peer_id()) in {str(a) for a in addrs}
    assert node.dht.last_lookup.messages >= 1
    # the DHT is our router: connect() and ping by PeerId alone reach it
    rtt = await node.ping(target)
    assert len(rtt) == 1
    # a closest-peers lookup through js returns both js servers
    closest = await node.dht.closest_peers(provider_key_for_kind("closest"), TIMEOUT)
    assert {hub.peer_id, hidden.peer_id} <= {str(p) for p in closest}


async def test_providers_cross_both_ways(start_js: StartJs, start_py: StartPy) -> None:
    hub, js_asker = await start_js(), await start_js()
    await js_dials(js_asker, hub.addr)
    await js_knows(hub, js_asker.peer_id)
    provider = await start_py()
    assert provider.dht is not None
    await py_connects_to_js(provider, hub)
    # p2pnode provides a task kind's key (what `p2pnode find KIND` asks for) ...
    ours = provider_key_for_kind("summarize")
    took = await provider.dht.provide(ours)
    assert took >= 1
    # ... and js's findProviders of the CID of that multihash finds it, with addresses
    found = await js_asker.command("find-providers", key=ours.hex(), timeout_ms=TIMEOUT_MS)
    by_id = {p["peer_id"]: p for p in found["providers"]}
    assert str(provider.peer_id) in by_id, found
    assert same_addrs(by_id[str(provider.peer_id)]["addrs"], provider), found
    # js provides a CID; a p2pnode node that joins only afterwards (so holds no record of
    # its own) finds js through the answers to its GET_PROVIDERS lookup. The p2pnode
    # provider, which js sent the record to as well, stops first: only js can answer.
    theirs = provider_key_for_kind("translate")
    sent = await js_asker.command("provide", key=theirs.hex(), timeout_ms=TIMEOUT_MS)
    assert {hub.peer_id, str(provider.peer_id)} <= set(sent["sent_to"]), sent
    await provider.stop()
    asker = await start_py()
    assert asker.dht is not None
    await py_connects_to_js(asker, hub)
    providers = await asker.dht.find_providers(theirs, timeout=TIMEOUT)
    by_peer = {str(p.peer_id): p for p in providers}
    assert js_asker.peer_id in by_peer, providers
    js_addr = str(Multiaddr.from_string(js_asker.addr).without_peer_id())
    assert js_addr in {str(a) for a in by_peer[js_asker.peer_id].addrs}


async def test_pk_records_cross_both_ways(start_js: StartJs, start_py: StartPy) -> None:
    hub, js_other = await start_js(), await start_js()
    await js_dials(js_other, hub.addr)
    await js_knows(hub, js_other.peer_id)
    node = await start_py()
    assert node.dht is not None
    await py_connects_to_js(node, hub)
    # p2pnode stores its /pk/ record in the DHT; js reads it
    key = pk_record_key(node.peer_id)
    value = node.identity.public_key.to_protobuf()
    stored = await node.dht.put_value(key, value)
    assert stored >= 1
    got = await js_other.command("get", key=key.hex(), timeout_ms=TIMEOUT_MS)
    assert got["value"] == value.hex(), got
    # js stores its own; js checks that we echoed its PUT_VALUE record back
    js_key = pk_record_key(PeerId.from_string(js_other.peer_id))
    js_value = bytes.fromhex((await js_other.command("public-key"))["value"])
    put = await js_other.command(
        "put", key=js_key.hex(), value=js_value.hex(), timeout_ms=TIMEOUT_MS
    )
    assert str(node.peer_id) in put["sent_to"] and not put["errors"], put
    # a p2pnode node connected only to the hub reads it (the p2pnode node that took the
    # record stops first: the value can come only from js)
    await node.stop()
    asker = await start_py()
    assert asker.dht is not None
    await py_connects_to_js(asker, hub)
    assert await asker.dht.get_value(js_key, TIMEOUT) == js_value


async def test_p2pnode_keeps_serving_after_js_is_killed_mid_query(
    start_js: StartJs, start_py: StartPy
) -> None:
    hub, other = await start_py(), await start_py()
    await other.connect(Multiaddr.from_string(addr_of(hub)))
    await wait_for(lambda: str(other.peer_id) in table(hub), "other in the hub's table")
    victim, survivor = await start_js(), await start_js()
    for js in (victim, survivor):
        await js_dials(js, addr_of(hub))
        await js_knows(js, str(hub.peer_id))
    await wait_for(
        lambda: {victim.peer_id, survivor.peer_id} <= table(hub), "js in the hub's table"
    )
    # the victim dies without a goodbye while its lookups through the hub run: 16 are
    # started and it is killed once the first has answered (in trial runs 7 to 11 had)
    first = victim.send("closest-peers", key=f"{0:064x}", timeout_ms=TIMEOUT_MS)
    for i in range(1, 8):
        victim.send("closest-peers", key=f"{i:064x}", timeout_ms=TIMEOUT_MS)
        victim.send("find-peer", peer_id=str(other.peer_id), timeout_ms=TIMEOUT_MS)
    await victim.event_where("result", id=first)
    await victim.kill()
    assert victim.proc.returncode is not None
    dead = PeerId.from_string(victim.peer_id)
    await wait_for(lambda: hub.connections(dead) == [], "the hub to drop the dead connection")
    # the hub still answers js (its table still names the dead peer: the lookup copes) ...
    found = await survivor.command("find-peer", peer_id=str(other.peer_id), timeout_ms=TIMEOUT_MS)
    assert found["found"] and same_addrs(found["addrs"], other), found
    # ... and p2pnode's own lookups, which now meet a dead address, still finish
    assert other.dht is not None
    closest = await other.dht.closest_peers(provider_key_for_kind("after-kill"), TIMEOUT)
    assert {str(hub.peer_id), survivor.peer_id} <= {str(p) for p in closest}
    addrs = await other.dht.find_peer(PeerId.from_string(survivor.peer_id), TIMEOUT)
    assert str(Multiaddr.from_string(survivor.addr).without_peer_id()) in {str(a) for a in addrs}
    assert str(hub.peer_id) in (await survivor.command("table"))["peers"]
