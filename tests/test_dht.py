"""The DHT driver with real nodes on loopback: joining, finding peers, providers, /pk/ values."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pnode import Identity, Node, NodeConfig
from p2pnode.errors import DiscoveryError, LocalProtocolError, RecordError, StreamResetError
from p2pnode.net.stream import Stream
from p2pnode.protocols.kad.dht import DhtConfig, DhtMode
from p2pnode.protocols.kad.rpc import MAX_REQUESTS_PER_STREAM, read_message
from p2pnode.wire.kad import Message, MessageType, pk_record_key, provider_key_for_kind
from p2pnode.wire.kad.messages import MessageReader, PeerInfo, frame_message

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
NODES = 8


async def dht_node(mode: DhtMode = DhtMode.SERVER, bootstrap: Node | None = None) -> Node:
    seeds = [bootstrap.listen_addrs[0].with_peer_id(bootstrap.peer_id)] if bootstrap else []
    config = DhtConfig(mode=mode, bootstrap=seeds, maintain=False, seed=7)
    node = await Node.start(Identity.generate(), [LOOPBACK], NodeConfig(dht=config))
    assert node.dht is not None
    return node


def address(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


@pytest.fixture
async def network() -> AsyncIterator[list[Node]]:
    async with contextlib.AsyncExitStack() as stack:
        first = await dht_node()
        stack.push_async_callback(first.stop)
        nodes = [first]
        for _ in range(NODES - 1):
            node = await dht_node(bootstrap=first)
            stack.push_async_callback(node.stop)
            nodes.append(node)
        for node in nodes[1:]:
            assert node.dht is not None
            await node.dht.bootstrap()
        yield nodes


async def test_every_node_finds_every_other_by_peer_id(network: list[Node]) -> None:
    for asker in (network[-1], network[3]):
        assert asker.dht is not None
        for target in network:
            if target is asker:
                continue
            addrs = await asker.dht.find_peer(target.peer_id, 10)
            assert target.listen_addrs[0] in addrs


async def test_connect_by_peer_id_goes_through_the_dht(network: list[Node]) -> None:
    asker, target = network[-1], network[1]
    for conn in asker.connections(target.peer_id):
        await conn.close()
    asker.peer_store.remove(target.peer_id)
    rtts = await asker.ping(target.peer_id)
    assert len(rtts) == 1


async def test_a_provider_is_found_from_anywhere(network: list[Node]) -> None:
    key = provider_key_for_kind("summarize")
    provider = network[2]
    assert provider.dht is not None
    assert await provider.dht.provide(key) >= 1
    for asker in network[4:]:
        assert asker.dht is not None
        found = await asker.dht.find_providers(key, limit=5)
        assert [p.peer_id for p in found] == [provider.peer_id]
        assert provider.listen_addrs[0] in found[0].addrs


async def test_pk_values_are_stored_and_validated(network: list[Node]) -> None:
    owner, asker = network[1], network[-2]
    assert owner.dht is not None and asker.dht is not None
    key = pk_record_key(owner.peer_id)
    public = owner.identity.public_key.to_protobuf()
    assert await owner.dht.put_value(key, public) >= 1
    assert await asker.dht.get_value(key) == public
    with pytest.raises(RecordError, match="not"):
        await owner.dht.put_value(key, Identity.generate().public_key.to_protobuf())


async def test_a_client_mode_node_is_not_added_to_routing_tables() -> None:
    server = await dht_node()
    client = await dht_node(DhtMode.CLIENT, bootstrap=server)
    try:
        assert client.dht is not None and server.dht is not None
        assert await client.dht.bootstrap() == 1
        await client.identify(server.peer_id)
        await server.identify(client.peer_id)
        assert server.peer_id in client.dht.table
        assert client.peer_id not in server.dht.table
        assert client.dht.config.protocol_id not in client.protocols
    finally:
        await client.stop()
        await server.stop()


async def test_switching_to_server_mode_is_pushed_and_peers_add_us() -> None:
    server = await dht_node()
    client = await dht_node(DhtMode.CLIENT, bootstrap=server)
    try:
        assert client.dht is not None and server.dht is not None
        await client.dht.bootstrap()
        await server.identify(client.peer_id)
        assert client.peer_id not in server.dht.table
        client.dht.set_server_mode(True)
        async with asyncio.timeout(5):
            while client.peer_id not in server.dht.table:
                await asyncio.sleep(0.01)  # waiting for the identify push to land
    finally:
        await client.stop()
        await server.stop()


async def test_find_peer_without_any_dht_peer_says_what_to_do() -> None:
    lonely = await dht_node()
    try:
        assert lonely.dht is not None
        with pytest.raises(DiscoveryError, match="--bootstrap"):
            await lonely.dht.find_peer(Identity.generate().peer_id, 1)
    finally:
        await lonely.stop()


async def test_a_provider_record_for_someone_else_is_ignored() -> None:
    server = await dht_node()
    liar = await dht_node(DhtMode.CLIENT, bootstrap=server)
    try:
        assert server.dht is not None
        key = provider_key_for_kind("x")
        victim = Identity.generate().peer_id
        stream = await liar.new_stream(address(server), [server.dht.config.protocol_id])
        forged = PeerInfo(victim, tuple(liar.listen_addrs))
        await stream.write(
            frame_message(Message(MessageType.ADD_PROVIDER, key, provider_peers=(forged,)))
        )
        honest = PeerInfo(liar.peer_id, tuple(liar.listen_addrs))
        await stream.write(
            frame_message(Message(MessageType.ADD_PROVIDER, key, provider_peers=(honest,)))
        )
        await stream.write(frame_message(Message(MessageType.GET_PROVIDERS, key)))
        async with asyncio.timeout(5):
            answer = await read_message(stream, MessageReader())
        assert answer is not None
        assert [p.peer_id for p in answer.provider_peers] == [liar.peer_id]
        await stream.close()
    finally:
        await liar.stop()
        await server.stop()


async def test_requests_for_other_namespaces_reset_only_that_stream() -> None:
    server = await dht_node()
    client = await dht_node(DhtMode.CLIENT, bootstrap=server)
    try:
        assert server.dht is not None
        stream = await client.new_stream(address(server), [server.dht.config.protocol_id])
        await stream.write(frame_message(Message(MessageType.GET_VALUE, b"/ipns/whatever")))
        with pytest.raises(StreamResetError):
            await stream.read()
        assert len(await client.ping(server.peer_id)) == 1
    finally:
        await client.stop()
        await server.stop()


def test_a_provider_needs_a_listen_address() -> None:
    async def run() -> None:
        node = Node(Identity.generate(), NodeConfig(dht=DhtConfig(maintain=False)))
        try:
            assert node.dht is not None
            with pytest.raises(LocalProtocolError, match="--listen"):
                await node.dht.provide(provider_key_for_kind("x"))
        finally:
            await node.stop()

    asyncio.run(run())


async def test_peers_lists_the_dht_peers_next_to_where_they_came_from(
    network: list[Node], tmp_path: Path
) -> None:
    bootstrap = str(network[0].listen_addrs[0].with_peer_id(network[0].peer_id))
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "c"), XDG_CACHE_HOME=str(tmp_path / "d"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pnode", "peers", "--no-mdns", "--bootstrap", bootstrap,
        "--timeout", "5", "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    events = [json.loads(line) for line in stdout.splitlines()]
    peers = {e["peer_id"]: e for e in events if e["event"] == "peer"}
    assert set(peers) == {str(n.peer_id) for n in network}
    assert all(e["sources"] == ["dht"] for e in peers.values())
    assert all(e["agent_version"].startswith("p2pnode/") for e in peers.values())
    assert events[-1] == {"event": "summary", "count": len(network), "timeout_s": 5.0}


async def read_all(stream: Stream) -> list[Message]:
    """Every message the peer sends until it closes the stream."""
    reader, messages = MessageReader(), []
    while chunk := await stream.read(1 << 16):
        messages += reader.receive_data(chunk)
    return messages


async def test_a_find_node_flood_is_answered_and_others_are_still_served() -> None:
    server = await dht_node()
    flooder = await dht_node(DhtMode.CLIENT, bootstrap=server)
    other = await dht_node(DhtMode.CLIENT, bootstrap=server)
    try:
        assert server.dht is not None and other.dht is not None
        stream = await flooder.new_stream(address(server), [server.dht.config.protocol_id])
        target = Identity.generate().peer_id.to_bytes()
        await stream.write(frame_message(Message(MessageType.FIND_NODE, target)) * 2000)
        answers = await asyncio.wait_for(read_all(stream), 60)
        # answered in order up to the per-stream cap, then the stream is closed
        assert len(answers) == MAX_REQUESTS_PER_STREAM
        assert all(a.type == MessageType.FIND_NODE for a in answers)
        await other.dht.bootstrap()
        closest = await asyncio.wait_for(other.dht.closest_peers(target, 10), 20)
        assert closest == [server.peer_id]  # the flooded node still answers others' lookups
        assert len(await other.ping(server.peer_id)) == 1
    finally:
        for node in (flooder, other, server):
            await node.stop()


async def test_a_provider_record_flood_from_one_peer_stays_within_its_cap() -> None:
    server = await dht_node()
    flooder = await dht_node(bootstrap=server)
    try:
        assert server.dht is not None and flooder.dht is not None
        me = PeerInfo(flooder.peer_id, tuple(flooder.listen_addrs))
        for batch in range(6):  # 3,000 records for as many keys, from one peer
            stream = await flooder.new_stream(address(server), [server.dht.config.protocol_id])
            await stream.write(
                b"".join(
                    frame_message(
                        Message(
                            MessageType.ADD_PROVIDER,
                            provider_key_for_kind(f"k{batch}-{i}"),
                            provider_peers=(me,),
                        )
                    )
                    for i in range(500)
                )
            )
            await stream.close()  # the server closes its side once it has handled them all
            assert await asyncio.wait_for(read_all(stream), 30) == []
        assert len(server.dht.providers) == 1000  # the per-peer cap
        assert len(await flooder.ping(server.peer_id)) == 1
    finally:
        await flooder.stop()
        await server.stop()
