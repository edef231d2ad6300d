"""The Kademlia DHT against go-libp2p-kad-dht (inside p2pd), both directions.

A small DHT of three go servers and three p2pnode servers on loopback: the first go
node is everyone's bootstrap peer. Each side finds the other's nodes by PeerId, finds
what the other provides, and reads a ``/pk/`` record the other stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pnode import Identity, Multiaddr, Node, NodeConfig, PeerId
from p2pnode.protocols.kad.dht import DhtConfig, DhtMode
from p2pnode.wire.kad import pk_record_key, provider_key_for_kind

from .p2pd import P2pd, require_p2pd

pytestmark = pytest.mark.interop

GO_NODES = 3
PY_NODES = 3
TIMEOUT = 30


@dataclass
class Network:
    go: list[P2pd]
    go_ids: list[Identity]
    py: list[Node]


def maddr(go: P2pd) -> Multiaddr:
    return Multiaddr.from_bytes(go.addrs[0]).with_peer_id(PeerId.from_bytes(go.peer_id))


async def wait_for(predicate: object, what: str, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.05)  # polling a condition, not timing the test


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[Network]:
    require_p2pd()
    async with contextlib.AsyncExitStack() as stack:
        go_ids, gos = [], []
        for i in range(GO_NODES):
            identity = Identity.generate()
            key_file = tmp_path / f"go{i}.key"
            identity.save(key_file)
            daemon = await stack.enter_async_context(P2pd(key_file, extra_args=["-dhtServer"]))
            go_ids.append(identity)
            gos.append(daemon)
        for daemon in gos[1:]:
            await daemon.connect(gos[0].peer_id, gos[0].addrs)
        pys = []
        for _ in range(PY_NODES):
            config = DhtConfig(mode=DhtMode.SERVER, bootstrap=[maddr(gos[0])], seed=1)
            node = await Node.start(
                Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(dht=config)
            )
            stack.push_async_callback(node.stop)
            pys.append(node)
        for node in pys:
            assert node.dht is not None
            await node.dht.bootstrap()
        yield Network(gos, go_ids, pys)


async def test_p2pnode_joins_a_go_dht_and_go_adds_it(network: Network) -> None:
    first = network.py[0]
    assert first.dht is not None
    go_peers = {PeerId.from_bytes(g.peer_id) for g in network.go}
    # identify told us the go nodes serve the DHT: they are in our routing table
    await wait_for(lambda: go_peers <= set(first.dht.table.peers()), "go peers in our table")  # type: ignore[union-attr]
    # and go's DHT returns p2pnode servers as closest peers (it added them to its table)
    closest = await network.go[1].dht_closest_peers(first.peer_id.to_bytes(), timeout=TIMEOUT)
    assert first.peer_id.to_bytes() in closest


async def test_each_side_finds_the_other_by_peer_id(network: Network) -> None:
    last_go, last_py = network.go[-1], network.py[-1]
    # go finds a p2pnode node it never connected to directly
    found = await last_go.dht_find_peer(network.py[0].peer_id.to_bytes(), timeout=TIMEOUT)
    assert found.peer == network.py[0].peer_id.to_bytes()
    assert any(Multiaddr.from_bytes(a) in network.py[0].listen_addrs for a in found.addrs)
    # p2pnode finds a go node (the DHT is its router: connect() by PeerId works)
    assert last_py.dht is not None
    target = PeerId.from_bytes(last_go.peer_id)
    addrs = await last_py.dht.find_peer(target, TIMEOUT)
    assert {str(a) for a in addrs} & {str(Multiaddr.from_bytes(a)) for a in last_go.addrs}
    rtt = await last_py.ping(target)
    assert len(rtt) == 1


async def test_providers_cross_both_ways(network: Network) -> None:
    ours, theirs = provider_key_for_kind("summarize"), provider_key_for_kind("translate")
    provider = network.py[1]
    assert provider.dht is not None
    took = await provider.dht.provide(ours)
    assert took >= 1
    found = await network.go[2].dht_find_providers(ours, timeout=TIMEOUT)
    assert provider.peer_id.to_bytes() in [p.peer for p in found]
    await network.go[1].dht_provide(theirs, timeout=TIMEOUT)
    asker = network.py[2]
    assert asker.dht is not None
    providers = await asker.dht.find_providers(theirs, timeout=TIMEOUT)
    assert network.go[1].peer_id in [p.peer_id.to_bytes() for p in providers]
    assert all(p.addrs for p in providers)


async def test_pk_records_cross_both_ways(network: Network) -> None:
    node = network.py[0]
    assert node.dht is not None
    key = pk_record_key(node.peer_id)
    stored = await node.dht.put_value(key, node.identity.public_key.to_protobuf())
    assert stored >= 1
    got = await network.go[2].dht_get_value(key, timeout=TIMEOUT)
    assert got == node.identity.public_key.to_protobuf()
    go_identity = network.go_ids[1]
    go_key = pk_record_key(go_identity.peer_id)
    await network.go[1].dht_put_value(go_key, go_identity.public_key.to_protobuf(), timeout=TIMEOUT)
    asker = network.py[2]
    assert asker.dht is not None
    assert await asker.dht.get_value(go_key, TIMEOUT) == go_identity.public_key.to_protobuf()
