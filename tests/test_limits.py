"""Limits: each refuses only what it must, is counted, and the node keeps serving."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from p2pnode import Identity, Node, NodeConfig, P2PError
from p2pnode.net.limits import Limits, Refusals, limits_with

from .conftest import LOOPBACK, addr_of, start_node


async def limited_server(**limits: int) -> Node:
    return await Node.start(Identity.generate(), [LOOPBACK], NodeConfig(limits=Limits(**limits)))


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connections_per_peer"):
        Limits(max_connections_per_peer=0)


async def test_connections_beyond_the_per_peer_limit_are_closed() -> None:
    server = await limited_server(max_connections_per_peer=3)
    identity = Identity.generate()
    clients = [Node(identity) for _ in range(5)]  # one PeerId, five nodes
    try:
        conns = [await c.dial(addr_of(server)) for c in clients]
        async with asyncio.timeout(10):
            while len([c for c in conns if c.is_closed]) < 2:
                await asyncio.wait(
                    [asyncio.ensure_future(c.wait_closed()) for c in conns], timeout=0.05
                )
        assert len(server.connections(identity.peer_id)) == 3
        assert server.refusals.counts["max_connections_per_peer"] == 2
        other = await start_node()
        try:
            assert len(await other.ping(addr_of(server))) == 1
        finally:
            await other.stop()
    finally:
        for c in clients:
            await c.stop()
        await server.stop()


async def test_inbound_connections_per_ip_are_counted_as_they_come_and_go() -> None:
    server = await limited_server(max_inbound_connections_per_ip=2)
    clients = [Node(Identity.generate()) for _ in range(4)]
    try:
        first, second, third = [await c.dial(addr_of(server)) for c in clients[:3]]
        async with asyncio.timeout(10):
            await third.wait_closed()  # the third from 127.0.0.1 is one too many
        assert server.refusals.counts["max_inbound_connections_per_ip"] == 1
        assert not first.is_closed and not second.is_closed
        await first.close()  # one goes: there is room for another
        async with asyncio.timeout(10):
            while len(server.connections()) > 1:
                await asyncio.sleep(0.01)
        fourth = await clients[3].dial(addr_of(server))
        assert len(await clients[3].ping(fourth.remote_peer)) == 1
        assert server.refusals.counts["max_inbound_connections_per_ip"] == 1
    finally:
        for c in clients:
            await c.stop()
        await server.stop()


async def test_silent_handshakes_beyond_the_per_ip_limit_are_cut_at_once() -> None:
    server = await limited_server(max_inbound_handshakes_per_ip=4)
    host, port = server.listen_addrs[0].tcp_host_port()
    sockets = []
    try:
        for _ in range(10):
            sockets.append(await asyncio.open_connection(host, port))
        ended = 0
        async with asyncio.timeout(5):  # well before the 10 s handshake timeout
            for reader, _ in sockets[4:]:
                await reader.read()  # EOF or reset: the server closed it
                ended += 1
        assert ended == 6
        assert server.refusals.counts["max_inbound_handshakes_per_ip"] == 6
        client = await start_node()
        try:  # the limit is per IP, so loopback is full; a finished handshake frees a slot
            for _, writer in sockets[:4]:
                writer.close()
            async with asyncio.timeout(10):
                while True:
                    try:
                        assert len(await client.ping(addr_of(server))) == 1
                        break
                    except P2PError:  # the server has not seen the close yet
                        await asyncio.sleep(0.05)
        finally:
            await client.stop()
    finally:
        for _, writer in sockets:
            writer.close()
        await server.stop()


async def test_streams_that_never_negotiate_are_reset_beyond_the_limit(client: Node) -> None:
    server = await limited_server(max_negotiating_streams=8)
    try:
        conn = await client.dial(addr_of(server))
        silent = [await conn.open_stream() for _ in range(20)]  # SYN, then nothing
        async with asyncio.timeout(10):
            while server.refusals.counts["max_negotiating_streams"] < 12:
                await asyncio.sleep(0.01)
        assert server.refusals.counts["max_negotiating_streams"] == 12
        other = await start_node()  # the node still serves everyone else
        try:
            assert len(await other.ping(addr_of(server))) == 1
        finally:
            await other.stop()
        for stream in silent:
            stream.reset()
    finally:
        await server.stop()


async def test_streams_of_one_protocol_beyond_the_per_peer_limit_are_reset() -> None:
    server = await limited_server(max_inbound_streams_per_protocol=3)
    held = asyncio.Event()
    entered = 0

    async def hold(stream: object) -> None:
        nonlocal entered
        entered += 1
        await held.wait()

    server.set_handler("/test/hold/1", hold)  # type: ignore[arg-type]
    client = await start_node()
    try:
        streams = [await client.new_stream(addr_of(server), ["/test/hold/1"]) for _ in range(5)]
        for stream in streams:
            with contextlib.suppress(P2PError):  # refused ones may be reset already
                await stream.write(b"x")
        async with asyncio.timeout(10):
            while server.refusals.counts["max_inbound_streams_per_protocol"] < 2:
                await asyncio.sleep(0.01)
        assert entered == 3
        assert len(await client.ping(addr_of(server))) == 1  # other protocols still served
        held.set()
        async with asyncio.timeout(10):
            while server._serving:
                await asyncio.sleep(0.01)
        fresh = await client.new_stream(addr_of(server), ["/test/hold/1"])
        await fresh.write(b"x")  # slots are free again
        async with asyncio.timeout(10):
            while entered < 4:
                await asyncio.sleep(0.01)
    finally:
        await client.stop()
        await server.stop()


def test_refusals_count_all_and_format_only_what_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = Refusals()
    formatted: list[int] = []

    def detail() -> str:
        formatted.append(1)
        return "the detail"

    with caplog.at_level("WARNING", logger="p2pnode.net.limits"):
        refusals.refuse("max_inbound_streams", "peer-a", detail, count=5)
        refusals.refuse("max_inbound_streams", "peer-a", detail, count=7)
        refusals.refuse("max_inbound_streams", "peer-b", "plain text")
    assert refusals.counts["max_inbound_streams"] == 13
    assert len(formatted) == 1  # peer-a's second batch is within LOG_INTERVAL: not logged
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "limit max_inbound_streams: refused peer-a: the detail (4 more since the last report)",
        "limit max_inbound_streams: refused peer-b: plain text",
    ]


def test_limits_are_set_by_name_from_the_command_line() -> None:
    changed = limits_with(Limits(), ["max_inbound_connections_per_ip=500", "max-inbound-streams=9"])
    assert changed.max_inbound_connections_per_ip == 500 and changed.max_inbound_streams == 9
    assert changed.max_connections_per_peer == Limits().max_connections_per_peer
    for bad, message in (("nope=1", "unknown limit"), ("max_inbound_streams", "unknown limit"),
                         ("max_inbound_streams=x", "whole number"),
                         ("max_inbound_streams=0", "positive")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            limits_with(Limits(), [bad])


async def test_streams_over_the_muxers_inbound_limit_are_counted_as_refusals() -> None:
    server = await limited_server(max_inbound_streams=4)
    client = await start_node()
    try:
        conn = await client.dial(addr_of(server))
        streams = [await conn.open_stream() for _ in range(10)]  # raw: they never negotiate
        async with asyncio.timeout(10):
            while server.refusals.counts["max_inbound_streams"] < 6:
                await asyncio.sleep(0.01)
        assert server.refusals.counts["max_inbound_streams"] == 6
        assert len(streams) == 10
    finally:
        await client.stop()
        await server.stop()
