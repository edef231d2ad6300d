"""Identify as a service: identify on connect, identify push sent and received."""

from __future__ import annotations

import asyncio

import pytest

from p2pnode.errors import StreamResetError
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols.identify import IdentifyInfo, encode_identify
from p2pnode.protocols.identify_service import PUSH_PROTOCOL_ID
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import Identity, PeerId

from .conftest import LOOPBACK, addr_of, start_node

EXTRA = "/test/extra/1.0.0"


async def nothing(stream: Stream) -> None:
    await stream.close()


def watch(node: Node) -> asyncio.Queue[tuple[PeerId, IdentifyInfo]]:
    heard: asyncio.Queue[tuple[PeerId, IdentifyInfo]] = asyncio.Queue()
    node.identify_service.subscribe(lambda peer, info: heard.put_nowait((peer, info)))
    return heard


async def next_about(
    heard: asyncio.Queue[tuple[PeerId, IdentifyInfo]], peer: PeerId, predicate: object = None
) -> IdentifyInfo:
    async with asyncio.timeout(5):
        while True:
            who, info = await heard.get()
            if who == peer and (predicate is None or predicate(info)):  # type: ignore[operator]
                return info


async def test_new_connections_are_identified_both_ways_when_asked() -> None:
    a, b = await start_node(), await start_node()
    a.identify_service.on_connect = True
    b.identify_service.on_connect = True
    heard_a, heard_b = watch(a), watch(b)
    try:
        await a.dial(addr_of(b))
        info_of_b = await next_about(heard_a, b.peer_id)
        info_of_a = await next_about(heard_b, a.peer_id)
        assert PUSH_PROTOCOL_ID in info_of_b.protocols and info_of_a.agent_version
        assert a.peer_store.protocols_of(b.peer_id) == tuple(b.protocols)
        assert b.peer_store.addrs(a.peer_id) == a.listen_addrs
    finally:
        await a.stop()
        await b.stop()


async def test_a_new_connection_is_identified_over_itself() -> None:
    """A peer back with the same identity and a new address, its old connection not yet
    closed: identify must ask the new connection, or the old address is all we keep."""
    identity = Identity.generate()
    a = await start_node()
    a.identify_service.on_connect = True
    heard = watch(a)
    old = await Node.start(identity, [LOOPBACK])
    new = await Node.start(identity, [LOOPBACK])
    try:
        await old.dial(addr_of(a))
        await next_about(heard, identity.peer_id)
        await new.dial(addr_of(a))
        async with asyncio.timeout(5):  # the listener is done half a round trip later
            while len(a.connections(identity.peer_id)) < 2:  # two to one PeerId
                await asyncio.sleep(0.001)
        info = await next_about(heard, identity.peer_id)
        assert info.listen_addrs == new.listen_addrs
        assert new.listen_addrs[0] in a.peer_store.addrs(identity.peer_id)
    finally:
        for node in (a, old, new):
            await node.stop()


async def test_a_new_or_removed_protocol_is_pushed_to_connected_peers() -> None:
    a, b = await start_node(), await start_node()
    heard = watch(a)
    try:
        await a.identify(addr_of(b))  # a learns that b accepts pushes
        b.set_handler(EXTRA, nothing)
        pushed = await next_about(heard, b.peer_id, lambda i: EXTRA in i.protocols)
        assert pushed.peer_id == b.peer_id
        assert EXTRA in a.peer_store.protocols_of(b.peer_id)
        b.remove_handler(EXTRA)
        await next_about(heard, b.peer_id, lambda i: EXTRA not in i.protocols)
        assert EXTRA not in a.peer_store.protocols_of(b.peer_id)
    finally:
        await a.stop()
        await b.stop()


async def test_a_push_with_someone_elses_key_is_refused() -> None:
    a, b = await start_node(), await start_node()
    heard = watch(a)
    try:
        stream = await b.new_stream(addr_of(a), [PUSH_PROTOCOL_ID])
        forged = IdentifyInfo(public_key=Identity.generate().public_key, protocols=[EXTRA])
        await stream.write(encode_frame(encode_identify(forged)))
        await stream.close()
        with pytest.raises(StreamResetError):
            await stream.read()
        honest = IdentifyInfo(public_key=b.identity.public_key, protocols=["/honest/1"])
        stream = await b.new_stream(addr_of(a), [PUSH_PROTOCOL_ID])
        await stream.write(encode_frame(encode_identify(honest)))
        await stream.close()
        info = await next_about(heard, b.peer_id)  # the first thing a heard is the honest push
        assert info.protocols == ["/honest/1"]
        assert a.peer_store.protocols_of(b.peer_id) == ("/honest/1",)
    finally:
        await a.stop()
        await b.stop()
