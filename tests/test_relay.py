"""Circuit relay v2 in process, on loopback: reservations, relayed dials, limits, refusals."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from p2pnode.errors import ConnectionClosedError, DialError, P2PError, StreamResetError
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols.relay.client import RelayRefusedError
from p2pnode.protocols.task import client2
from p2pnode.protocols.task.handlers import EchoHandler
from p2pnode.protocols.task.messages import TaskRefusedError
from p2pnode.protocols.task.server import TaskServer
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.relay import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayLimits,
    RelayPeer,
    Status,
    decode_hop,
    encode_hop,
)

from .conftest import addr_of, start_node

ECHO = "/test/echo/1.0.0"


async def echo(stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.close()


@pytest.fixture
async def trio() -> AsyncIterator[tuple[Node, Node, Node]]:
    """A relay R, a peer A holding a slot on R, and a peer B that knows only A's circuit."""
    relay = await start_node(relay_service=RelayLimits())
    # no hole punching: on loopback it would turn every relayed connection into a direct
    # one at once (test_hole_punching_replaces_a_relayed_connection shows it)
    a = await start_node(hole_punching=False)
    b = await start_node(hole_punching=False)
    a.set_handler(ECHO, echo)
    try:
        yield relay, a, b
    finally:
        for node in (b, a, relay):
            await node.stop()


def circuit_of(relay: Node, target: Node) -> str:
    return f"{addr_of(relay)}/p2p-circuit/p2p/{target.peer_id}"


async def roundtrip(stream: Stream, data: bytes) -> bytes:
    await stream.write(data)
    await stream.close_write()
    return await stream.read_until_eof(len(data) + 1)


async def test_a_reserved_peer_is_reached_through_the_relay(trio: tuple[Node, Node, Node]) -> None:
    relay, a, b = trio
    reservation = await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    assert reservation.relay == relay.peer_id
    assert str(a.advertised_addrs[-1]) == circuit_of(relay, a)
    conn = await b.dial(circuit_of(relay, a))
    assert conn.limited and conn.remote_peer == a.peer_id
    assert b.connections(relay.peer_id), "B reached A through a connection to R"
    stream = await b.new_stream(a.peer_id, [ECHO])
    assert await roundtrip(stream, b"through the relay") == b"through the relay"
    [inbound] = [c for c in a.connections(b.peer_id)]
    assert inbound.limited and not inbound.is_initiator
    assert str(inbound.remote_addr).endswith(f"/p2p-circuit/p2p/{b.peer_id}")
    assert relay.relay_service is not None and relay.relay_service.relayed_bytes > 0


async def test_identify_tells_peers_the_relayed_address(trio: tuple[Node, Node, Node]) -> None:
    relay, a, b = trio
    await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    info = await b.identify(addr_of(a))
    assert Multiaddr.from_string(circuit_of(relay, a)) in info.listen_addrs


async def test_a_circuit_is_cut_at_the_data_limit_and_the_error_names_it() -> None:
    limits = RelayLimits(circuit=Limit(duration=60, data=64 * 1024))
    relay = await start_node(relay_service=limits)
    a, b = await start_node(), await start_node()
    a.set_handler(ECHO, echo)
    try:
        await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
        conn = await b.dial(circuit_of(relay, a))
        stream = await b.new_stream(a.peer_id, [ECHO])
        with pytest.raises(P2PError):
            await roundtrip(stream, bytes(256 * 1024))
        await asyncio.wait_for(conn.wait_closed(), 5)
        assert relay.relay_service is not None and relay.relay_service.circuits_cut == 1
        with pytest.raises(ConnectionClosedError, match=r"limits a circuit to 60 s and 64 KiB"):
            await conn.new_stream([ECHO])
    finally:
        for node in (b, a, relay):
            await node.stop()


async def test_connect_to_a_peer_without_a_reservation_is_refused(
    trio: tuple[Node, Node, Node],
) -> None:
    relay, a, b = trio
    with pytest.raises(RelayRefusedError, match="NO_RESERVATION") as refused:
        await b.dial(circuit_of(relay, a))
    assert refused.value.status == Status.NO_RESERVATION
    assert not a.connections(b.peer_id)


async def test_a_node_without_the_relay_service_refuses_hop(trio: tuple[Node, Node, Node]) -> None:
    _, a, b = trio
    with pytest.raises(DialError, match="is not a relay"):
        await b.relay_client.reserve(Multiaddr.from_string(addr_of(a)))


async def test_reservations_beyond_the_limit_are_refused() -> None:
    relay = await start_node(relay_service=RelayLimits(max_reservations=2))
    peers = [await start_node() for _ in range(3)]
    try:
        for peer in peers[:2]:
            await peer.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
        with pytest.raises(RelayRefusedError, match="RESERVATION_REFUSED"):
            await peers[2].relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
        assert relay.refusals.counts["relay_reservations"] == 1
        # renewing a held slot is not a new reservation
        await peers[0].relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    finally:
        for node in (*peers, relay):
            await node.stop()


async def test_circuits_beyond_the_per_peer_limit_are_refused() -> None:
    relay = await start_node(relay_service=RelayLimits(max_circuits=1))
    a, b = await start_node(), await start_node()
    try:
        await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
        await b.dial(circuit_of(relay, a))
        relay_conn = b.connections(relay.peer_id)[0]
        stream = await relay_conn.new_stream([HOP_PROTOCOL])
        request = HopMessage(HopType.CONNECT, peer=RelayPeer(a.peer_id))
        await stream.write(encode_frame(encode_hop(request)))
        answer = decode_hop((await stream.read_until_eof(4096))[1:])
        assert answer.status == Status.RESOURCE_LIMIT_EXCEEDED
    finally:
        for node in (b, a, relay):
            await node.stop()


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xff\xff\xff\x0f", encode_frame(b"\x08\x07"), encode_frame(b"\x0a\x05ab"), b"\x05ab"],
    ids=["oversize", "unknown-type", "truncated-field", "truncated-frame"],
)
async def test_malformed_hop_requests_get_an_error_and_the_relay_serves_on(
    trio: tuple[Node, Node, Node], garbage: bytes
) -> None:
    relay, a, b = trio
    stream = await b.new_stream(addr_of(relay), [HOP_PROTOCOL])
    await stream.write(garbage)
    await stream.close_write()
    try:
        answer = await stream.read_until_eof(4096)
    except StreamResetError:
        answer = b""
    if answer:
        assert decode_hop(answer[1:]).status == Status.MALFORMED_MESSAGE
    await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    assert (await b.dial(circuit_of(relay, a))).limited


async def test_hop_over_a_relayed_connection_is_refused(trio: tuple[Node, Node, Node]) -> None:
    relay, a, b = trio
    a.config.relay_service = None
    from p2pnode.protocols.relay.service import RelayService

    service = RelayService(a, a.identity, refusals=a.refusals)
    service.register()  # A relays too, but not over relayed connections
    await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    await b.dial(circuit_of(relay, a))
    limited = b.connections(a.peer_id)[0]
    stream = await limited.new_stream([HOP_PROTOCOL])
    await stream.write(encode_frame(encode_hop(HopMessage(HopType.RESERVE))))
    answer = decode_hop((await stream.read_until_eof(4096))[1:])
    assert answer.status == Status.PERMISSION_DENIED
    assert a.refusals.counts["relay_over_relay"] == 1


async def test_stop_from_a_relay_without_our_reservation_is_refused(
    trio: tuple[Node, Node, Node],
) -> None:
    relay, a, _ = trio
    stream = await relay.new_stream(addr_of(a), [STOP_PROTOCOL])
    from p2pnode.wire.relay import StopMessage, StopType, decode_stop, encode_stop

    connect = StopMessage(StopType.CONNECT, peer=RelayPeer(Identity.generate().peer_id))
    await stream.write(encode_frame(encode_stop(connect)))
    answer = decode_stop((await stream.read_until_eof(4096))[1:])
    assert answer.status == Status.PERMISSION_DENIED


async def test_a_kept_reservation_comes_back_after_the_relay_restarts() -> None:
    identity = Identity.generate()
    relay = await Node.start(identity, ["/ip4/127.0.0.1/tcp/0"], _relay_config())
    address = addr_of(relay)
    a = await start_node(relays=[address])
    try:
        await _wait_for(lambda: bool(a.relay_client.reservations))
        await relay.stop()
        await _wait_for(lambda: not a.relay_client.reservations)
        assert not [x for x in a.advertised_addrs if x.is_circuit]
        relay = await Node.start(identity, [address.split("/p2p/")[0]], _relay_config())
        await _wait_for(lambda: bool(a.relay_client.reservations), timeout=10)
    finally:
        await a.stop()
        await relay.stop()


async def test_a_large_transfer_waits_for_a_direct_connection_not_the_relay(
    trio: tuple[Node, Node, Node],
) -> None:
    relay, a, b = trio
    await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    await b.dial(circuit_of(relay, a))
    direct = await b.dial(addr_of(a))
    assert not direct.limited
    stream = await b.new_stream(a.peer_id, [ECHO])
    data = bytes(range(256)) * 2048  # 512 KiB: beyond the relay's 128 KiB per direction
    echoed = await roundtrip(stream, data)
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


async def test_dialing_a_circuit_without_a_peer_fails_clearly(
    trio: tuple[Node, Node, Node],
) -> None:
    relay, _, b = trio
    with pytest.raises(DialError, match="names no peer"):
        await b.relay_client.dial(Multiaddr.from_string(f"{addr_of(relay)}/p2p-circuit"))


def _relay_config() -> object:
    from p2pnode.node import NodeConfig

    return NodeConfig(relay_service=RelayLimits())


async def _wait_for(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_a_task_too_large_for_the_relay_waits_for_a_direct_connection(
    trio: tuple[Node, Node, Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    relay, a, b = trio
    TaskServer(a, {"default": EchoHandler()}).install()
    await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
    await b.dial(circuit_of(relay, a))
    small = await b.run_task(a.peer_id, b"fits")
    assert small.data == b"fits"
    monkeypatch.setattr(client2, "DIRECT_WAIT", 0.3)
    large = bytes(200 * 1024)  # the relay carries 128 KiB per direction
    with pytest.raises(TaskRefusedError, match=r"128 KiB per direction.*no direct connection"):
        await b.run_task(a.peer_id, large)
    monkeypatch.setattr(client2, "DIRECT_WAIT", 10.0)
    pending = asyncio.ensure_future(b.run_task(a.peer_id, large, max_output=len(large) + 64))
    await asyncio.sleep(0)  # the task is waiting for a direct connection
    direct = await b.dial(addr_of(a))  # (what a hole punch would bring)
    assert (await asyncio.wait_for(pending, 10)).data == large
    assert not direct.limited and relay.relay_service is not None
    assert relay.relay_service.relayed_bytes < 64 * 1024  # the large input went direct


async def test_hole_punching_replaces_a_relayed_connection() -> None:
    relay = await start_node(relay_service=RelayLimits())
    a, b = await start_node(), await start_node()
    a.set_handler(ECHO, echo)
    try:
        await a.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
        relayed = await b.dial(circuit_of(relay, a))
        assert relayed.limited
        # A received the relayed connection: it runs DCUtR, B dials at SYNC
        await _wait_for(lambda: sum(a.nat.punches.values()) > 0)
        assert a.nat.punches == {"succeeded": 1, "failed": 0}, (a.nat.punches, b.nat.punches)
        await _wait_for(lambda: any(not c.limited for c in b.connections(a.peer_id)))
        direct = b._usable_connection(a.peer_id)
        assert direct is not None and not direct.limited
        stream = await b.new_stream(a.peer_id, [ECHO])
        assert stream.connection is direct
        assert await roundtrip(stream, b"direct") == b"direct"
    finally:
        for node in (b, a, relay):
            await node.stop()
