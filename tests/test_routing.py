"""The peer store and the node's routing chain (peer store -> routers -> parallel dials)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from p2pnode import DialError, DiscoveryError, Identity, Multiaddr, Node, PeerId
from p2pnode.routing.peerstore import PeerStore
from p2pnode.routing.router import ConnectTrace

from .conftest import start_node

ALICE = Identity.generate().peer_id
A1 = Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")
A2 = Multiaddr.from_string("/ip4/10.0.0.2/tcp/2")
A3 = Multiaddr.from_string("/ip4/10.0.0.3/tcp/3")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_peer_store_orders_connected_then_freshest_and_expires() -> None:
    clock = Clock()
    store = PeerStore(clock=clock)
    store.add_addrs(ALICE, [A1], "mdns", ttl=10)
    clock.now += 1
    store.add_addrs(ALICE, [A2.with_peer_id(ALICE)], "identify", ttl=100)
    assert store.addrs(ALICE) == [A2, A1]  # freshest first, /p2p stripped
    store.record_connected(ALICE, A1)
    assert store.addrs(ALICE) == [A1, A2]  # what connected comes first
    record = store.get(ALICE)
    assert record is not None and record.addrs[A2].source == "identify"
    clock.now += 50
    assert store.addrs(ALICE) == [A1, A2]  # A1's expiry was extended by the connection
    clock.now += 5000
    assert store.addrs(ALICE) == []


def test_peer_store_is_bounded() -> None:
    store = PeerStore(max_peers=3, max_addrs_per_peer=2)
    peers = [Identity.generate().peer_id for _ in range(5)]
    for peer in peers:
        store.add_addrs(peer, [A1, A2, A3], "test")
    assert len(store) == 3 and store.peers() == peers[2:]  # the least recently touched go
    assert len(store.addrs(peers[-1])) == 2
    store.set_identify(peers[-1], ["/ipfs/ping/1.0.0"], "agent/1")
    record = store.get(peers[-1])
    assert record is not None and record.agent_version == "agent/1"


class FakeRouter:
    def __init__(self, name: str, answer: Sequence[Multiaddr] | Exception) -> None:
        self.name = name
        self.answer = answer
        self.asked: list[PeerId] = []
        self.remembered: list[tuple[PeerId, list[Multiaddr]]] = []

    async def find_peer(self, peer_id: PeerId, timeout: float) -> Sequence[Multiaddr]:
        self.asked.append(peer_id)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def remember(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        self.remembered.append((peer_id, list(addrs)))


async def test_connect_asks_routers_in_order_and_records_what_worked(server: Node) -> None:
    client = Node(Identity.generate())
    dead = Multiaddr.from_string("/ip4/127.0.0.1/tcp/1")  # nothing listens on port 1
    first = FakeRouter("first", DiscoveryError("not here"))
    second = FakeRouter("second", [dead, *server.listen_addrs])
    third = FakeRouter("third", [])
    for router in (first, second, third):
        client.add_router(router)
    try:
        trace = ConnectTrace()
        conn = await client.connect(server.peer_id, trace=trace)
        assert conn.remote_peer == server.peer_id
        assert trace.resolved_by == "second"
        assert first.asked == second.asked == [server.peer_id] and third.asked == []
        assert client.peer_store.addrs(server.peer_id)[0] == server.listen_addrs[0]
        assert second.remembered and second.remembered[-1][1][0] == server.listen_addrs[0]
        await conn.close()
        await conn.wait_closed()
        again = ConnectTrace()
        await client.connect(str(server.peer_id), trace=again)
        assert again.resolved_by == "peerstore" and len(second.asked) == 1
    finally:
        await client.stop()


async def test_connect_says_why_nobody_found_the_peer() -> None:
    client = Node(Identity.generate())
    client.add_router(FakeRouter("mdns", DiscoveryError("not found with mDNS within 1s")))
    try:
        with pytest.raises(DiscoveryError, match="not found with mDNS"):
            await client.connect(ALICE)
    finally:
        await client.stop()
    bare = Node(Identity.generate())
    try:
        with pytest.raises(DialError, match="no known address"):
            await bare.connect(ALICE)
    finally:
        await bare.stop()


async def test_parallel_dials_take_the_first_that_works() -> None:
    server = await start_node()
    client = Node(Identity.generate())
    refused = Multiaddr.from_string("/ip4/127.0.0.1/tcp/1")
    try:
        conn = await client.dial_first(server.peer_id, [refused, refused, *server.listen_addrs])
        assert conn.remote_peer == server.peer_id
        assert len(client.connections(server.peer_id)) == 1
        with pytest.raises(DialError) as caught:
            await client.dial_first(ALICE, [refused, Multiaddr.from_string("/ip4/127.0.0.1/tcp/2")])
        assert str(refused) in str(caught.value) and "tcp/2" in str(caught.value)
    finally:
        await client.stop()
        await server.stop()
