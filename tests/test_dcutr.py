"""DCUtR: the HolePunch codec, both roles' state machines on a fake clock, dials from a
listen port (SO_REUSEPORT) on loopback, and the asyncio driver between two nodes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import (
    DecodeError,
    DialError,
    LocalProtocolError,
    P2PError,
    PeerIdMismatchError,
    RemoteProtocolError,
)
from p2pnode.net import transport
from p2pnode.net.connection import Connection
from p2pnode.net.stream import Stream
from p2pnode.node import Node
from p2pnode.protocols import ping
from p2pnode.protocols.dcutr import DcutrService, HolePunchFailedError, hole_punch
from p2pnode.wire.dcutr import (
    MAX_ATTEMPTS,
    MAX_MESSAGE_SIZE,
    PROTOCOL_ID,
    CloseStream,
    DialAt,
    GiveUp,
    HolePunch,
    HolePunchError,
    HolePunchInitiator,
    HolePunchResponder,
    MessageType,
    OpenStream,
    Send,
    State,
    decode_holepunch,
    dialable_addrs,
    encode_holepunch,
    encode_message,
)
from p2pnode.wire.framing import FrameDecoder, encode_frame
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import encode_bytes_field, encode_varint_field

from .conftest import addr_of, inbound_connection, start_node

B_ADDRS = [Multiaddr.from_string("/ip4/127.0.0.1/tcp/4001")]  # the initiator's
A_ADDRS = [
    Multiaddr.from_string("/ip4/127.0.0.1/tcp/5001"),
    Multiaddr.from_string("/ip6/::1/tcp/5002"),
]
A_BYTES = tuple(a.to_bytes() for a in A_ADDRS)


def connect(addrs: Sequence[bytes] = A_BYTES) -> bytes:
    return encode_message(HolePunch(MessageType.CONNECT, tuple(addrs)))


SYNC = encode_message(HolePunch(MessageType.SYNC))


def sent(actions: Sequence[object]) -> list[HolePunch]:
    """The messages in the Send actions of ``actions``."""
    decoder = FrameDecoder(MAX_MESSAGE_SIZE)
    return [
        decode_holepunch(body)
        for a in actions
        if isinstance(a, Send)
        for body in decoder.receive_data(a.data)
    ]


# -- codec -------------------------------------------------------------------------


def test_wire_bytes_match_the_schema() -> None:
    """type is field 1 (varint), ObsAddrs field 2 (bytes); CONNECT=100, SYNC=300."""
    assert encode_holepunch(HolePunch(MessageType.SYNC)) == bytes([0x08, 0xAC, 0x02])
    assert encode_holepunch(HolePunch(MessageType.CONNECT, (b"\x01\x02",))) == bytes(
        [0x08, 100, 0x12, 2, 1, 2]
    )
    assert bytes([3, 0x08, 0xAC, 0x02]) == SYNC  # length-prefixed on the stream


@given(st.sampled_from(MessageType), st.lists(st.binary(max_size=64), max_size=20))
def test_round_trip(kind: MessageType, addrs: list[bytes]) -> None:
    message = HolePunch(kind, tuple(addrs))
    assert decode_holepunch(encode_holepunch(message)) == message


def test_unknown_fields_are_ignored() -> None:
    body = (
        encode_varint_field(1, 300) + encode_bytes_field(9, b"future") + encode_varint_field(7, 1)
    )
    assert decode_holepunch(body) == HolePunch(MessageType.SYNC)


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no type: it is required
        encode_bytes_field(2, b"\x04"),  # addresses but no type
        encode_varint_field(1, 200),  # no such type
        encode_bytes_field(1, b"\x64"),  # type with the wrong wire type
        encode_varint_field(1, 100) + encode_varint_field(2, 5),  # ObsAddrs as a varint
        encode_varint_field(1, 100) + b"\x12\x05ab",  # an address running past the end
        b"\x08",  # truncated varint
    ],
)
def test_malformed_messages_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_holepunch(body)


def test_oversized_message_is_refused() -> None:
    fits = HolePunch(MessageType.CONNECT, (b"x" * (MAX_MESSAGE_SIZE - 6),))
    assert len(encode_holepunch(fits)) <= MAX_MESSAGE_SIZE
    decode_holepunch(encode_holepunch(fits))
    big = encode_holepunch(HolePunch(MessageType.CONNECT, (b"x" * MAX_MESSAGE_SIZE,)))
    with pytest.raises(DecodeError):
        decode_holepunch(big)


@given(st.binary(max_size=512))
def test_garbage_gives_a_message_or_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        assert isinstance(decode_holepunch(data), HolePunch)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5), st.data())
def test_truncation_gives_a_message_or_decode_error(
    addrs: list[bytes], data: st.DataObject
) -> None:
    body = encode_holepunch(HolePunch(MessageType.CONNECT, tuple(addrs)))
    cut = data.draw(st.integers(0, len(body) - 1))
    try:
        shorter = decode_holepunch(body[:cut])
    except DecodeError:
        return
    assert shorter.type is MessageType.CONNECT and len(shorter.obs_addrs) < len(addrs)


def test_dialable_addrs_keep_direct_tcp_only() -> None:
    relayed = Multiaddr.from_string(
        "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit"
    )
    quic = Multiaddr.from_string("/ip4/1.2.3.4/udp/1/quic-v1")
    raw = [b"\xff\xff", relayed.to_bytes(), quic.to_bytes(), *A_BYTES, A_BYTES[0]]
    assert dialable_addrs(raw) == A_ADDRS


# -- the initiator (the peer that received the relayed connection) ------------------


def initiator_to_dial(machine: HolePunchInitiator, start: float, rtt: float) -> DialAt:
    """Run one attempt's exchange: the stream opens at ``start``, the answer comes ``rtt`` later."""
    first = machine.stream_opened(start)
    assert [m.type for m in sent(first)] == [MessageType.CONNECT]
    actions = machine.receive_data(connect(), start + rtt)
    assert [m.type for m in sent(actions)] == [MessageType.SYNC]
    assert isinstance(actions[1], CloseStream)
    dial = actions[2]
    assert isinstance(dial, DialAt) and len(actions) == 3
    return dial


def test_initiator_sends_its_addresses_and_dials_half_an_rtt_after_sync() -> None:
    machine = HolePunchInitiator([*B_ADDRS, B_ADDRS[0]])
    assert machine.start() == [OpenStream(1)]
    (hello,) = sent(machine.stream_opened(100.0))
    assert hello == HolePunch(MessageType.CONNECT, (B_ADDRS[0].to_bytes(),))
    assert machine.state is State.AWAIT_CONNECT
    assert machine.receive_data(connect()[:3], 100.1) == []  # a piece: nothing yet
    actions = machine.receive_data(connect()[3:], 100.25)
    assert machine.rtt == pytest.approx(0.25)
    assert sent(actions) == [HolePunch(MessageType.SYNC)]
    assert actions[1:] == [CloseStream(), DialAt(tuple(A_ADDRS), 100.375, False, 1)]
    assert machine.state is State.DIALING
    machine.dial_succeeded()
    assert machine.state is State.DONE


def test_three_attempts_each_measuring_the_rtt_server_client_server() -> None:
    machine = HolePunchInitiator(B_ADDRS)
    assert machine.start() == [OpenStream(1)]
    dials = []
    for attempt, (start, rtt) in enumerate([(0.0, 0.2), (20.0, 0.04), (40.0, 1.0)], 1):
        dial = initiator_to_dial(machine, start, rtt)
        assert dial.when == pytest.approx(start + rtt + rtt / 2)
        assert dial.attempt == attempt
        dials.append(dial)
        after = machine.dial_failed()
        if attempt < MAX_ATTEMPTS:
            assert after == [OpenStream(attempt + 1)] and machine.state is State.IDLE
    assert after == [GiveUp(3)] and machine.state is State.FAILED
    assert [d.as_initiator for d in dials] == [False, True, False]
    with pytest.raises(LocalProtocolError):
        machine.dial_failed()


def test_a_successful_retry_ends_the_hole_punch() -> None:
    machine = HolePunchInitiator(B_ADDRS)
    machine.start()
    initiator_to_dial(machine, 0.0, 0.1)
    assert machine.dial_failed() == [OpenStream(2)]
    initiator_to_dial(machine, 10.0, 0.1)
    machine.dial_succeeded()
    assert machine.state is State.DONE and machine.attempt == 2
    with pytest.raises(LocalProtocolError):
        machine.dial_failed()


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (SYNC, "SYNC instead of CONNECT"),
        (connect() + SYNC, "a message after the peer's CONNECT"),
        (connect() + SYNC[:2], "part of a message after CONNECT"),
        (connect([]), "no addresses"),
        (connect([B_ADDRS[0].encapsulate("/p2p-circuit").to_bytes()]), "relayed addresses only"),
        (encode_frame(b"\x08\xc8\x01"), "unknown type 200"),
        (b"\xff\xff\x01", "a length over 4 KiB"),
    ],
)
def test_initiator_fails_without_retry_on_protocol_errors(data: bytes, what: str) -> None:
    machine = HolePunchInitiator(B_ADDRS)
    machine.start()
    machine.stream_opened(0.0)
    with pytest.raises(RemoteProtocolError):
        machine.receive_data(data, 1.0)
    assert machine.state is State.FAILED, what
    with pytest.raises(LocalProtocolError):  # no retry after the peer broke the protocol
        machine.dial_failed()


def test_initiator_refuses_data_after_the_exchange() -> None:
    machine = HolePunchInitiator(B_ADDRS)
    machine.start()
    initiator_to_dial(machine, 0.0, 0.1)
    with pytest.raises(HolePunchError):
        machine.receive_data(connect(), 0.2)
    assert machine.state is State.FAILED


def test_initiator_stream_closed_early_is_an_error() -> None:
    machine = HolePunchInitiator(B_ADDRS)
    machine.start()
    machine.stream_opened(0.0)
    with pytest.raises(HolePunchError):
        machine.stream_ended()


def test_initiator_misuse_and_nothing_to_offer() -> None:
    with pytest.raises(LocalProtocolError):
        HolePunchInitiator([])
    with pytest.raises(LocalProtocolError):  # a relayed address is no use for a direct dial
        HolePunchInitiator([B_ADDRS[0].encapsulate("/p2p-circuit")])
    machine = HolePunchInitiator(B_ADDRS)
    with pytest.raises(LocalProtocolError):
        machine.stream_opened(0.0)  # before start()
    machine.start()
    with pytest.raises(LocalProtocolError):
        machine.start()
    with pytest.raises(LocalProtocolError):
        machine.dial_succeeded()


# -- the responder (the peer that dialed through the relay) --------------------------


def test_responder_answers_connect_and_dials_as_client_when_sync_arrives() -> None:
    machine = HolePunchResponder(A_ADDRS)
    b_connect = encode_message(HolePunch(MessageType.CONNECT, (B_ADDRS[0].to_bytes(),)))
    actions = machine.receive_data(b_connect, 5.0)
    assert sent(actions) == [HolePunch(MessageType.CONNECT, A_BYTES)]
    assert machine.state is State.AWAIT_SYNC
    actions = machine.receive_data(SYNC, 5.3)
    assert actions == [CloseStream(), DialAt(tuple(B_ADDRS), 5.3, True, 1)]
    assert machine.rtt == pytest.approx(0.3)
    assert machine.state is State.DONE


@pytest.mark.parametrize(("attempt", "client"), [(1, True), (2, False), (3, True)])
def test_the_responders_role_alternates_with_the_exchanges_on_a_connection(
    attempt: int, client: bool
) -> None:
    # go-libp2p v0.32's initiator dials as client every time, the spec's as server, then
    # client: alternating, one of our first two attempts meets either
    machine = HolePunchResponder(A_ADDRS, attempt)
    b_connect = encode_message(HolePunch(MessageType.CONNECT, (B_ADDRS[0].to_bytes(),)))
    machine.receive_data(b_connect, 1.0)
    actions = machine.receive_data(SYNC, 1.1)
    assert actions[-1] == DialAt(tuple(B_ADDRS), 1.1, client, attempt)


def test_responder_takes_both_messages_in_one_read_and_byte_by_byte() -> None:
    together = HolePunchResponder(A_ADDRS).receive_data(connect() + SYNC, 1.0)
    assert isinstance(together[-1], DialAt) and len(sent(together)) == 1
    machine = HolePunchResponder(A_ADDRS)
    actions = []
    for byte in connect() + SYNC:
        actions += machine.receive_data(bytes([byte]), 1.0)
    assert actions == together


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (SYNC, "SYNC before CONNECT"),
        (connect() + connect(), "CONNECT twice"),
        (connect() + SYNC + SYNC, "a message after SYNC"),
        (connect() + SYNC + b"\x01", "bytes after SYNC"),
        (connect([b"\x00"]), "no usable address"),
        (encode_frame(encode_bytes_field(2, b"\x04")), "a message without a type"),
    ],
)
def test_responder_protocol_errors(data: bytes, what: str) -> None:
    machine = HolePunchResponder(A_ADDRS)
    with pytest.raises(RemoteProtocolError):
        machine.receive_data(data, 0.0)
    assert machine.state is State.FAILED, what


def test_responder_refuses_messages_after_the_end() -> None:
    machine = HolePunchResponder(A_ADDRS)
    machine.receive_data(connect() + SYNC, 0.0)
    with pytest.raises(HolePunchError):
        machine.receive_data(SYNC, 1.0)
    with pytest.raises(HolePunchError):
        HolePunchResponder(A_ADDRS).stream_ended()
    done = HolePunchResponder(A_ADDRS)
    done.receive_data(connect() + SYNC, 0.0)
    done.stream_ended()  # the peer closing after SYNC is normal


@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_bytes_give_actions_or_a_remote_error(chunks: list[bytes]) -> None:
    for machine in (HolePunchResponder(A_ADDRS), HolePunchInitiator(B_ADDRS)):
        if isinstance(machine, HolePunchInitiator):
            machine.start()
            machine.stream_opened(0.0)
        try:
            for chunk in chunks:
                machine.receive_data(chunk, 1.0)
        except RemoteProtocolError:
            assert machine.state is State.FAILED


def test_both_roles_dial_at_the_same_moment() -> None:
    """The machines against each other, 50 ms each way over the relay: the initiator's
    timer and the responder's SYNC end together, which is what makes the punch work."""
    one_way = 0.05
    initiator, responder = HolePunchInitiator(B_ADDRS), HolePunchResponder(A_ADDRS)
    initiator.start()
    (hello,) = initiator.stream_opened(0.0)
    assert isinstance(hello, Send)
    (answer,) = responder.receive_data(hello.data, one_way)
    assert isinstance(answer, Send)
    sync, _, initiator_dial = initiator.receive_data(answer.data, 2 * one_way)
    assert isinstance(sync, Send) and isinstance(initiator_dial, DialAt)
    _, responder_dial = responder.receive_data(sync.data, 3 * one_way)
    assert isinstance(responder_dial, DialAt)
    assert initiator_dial.when == pytest.approx(responder_dial.when) == pytest.approx(0.15)
    assert initiator_dial.addrs == tuple(A_ADDRS) and responder_dial.addrs == tuple(B_ADDRS)
    # exactly one of the two is the security initiator
    assert (initiator_dial.as_initiator, responder_dial.as_initiator) == (False, True)


# -- the TCP transport: dialing from a listen port -----------------------------------


async def echo(stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)
    await stream.close()


async def exchange(conn: Connection, payload: bytes) -> bytes:
    """Raw bytes over a new stream to an echo handler (no protocol negotiation)."""
    stream = await conn.open_stream()
    await stream.write(payload)
    await stream.close_write()
    return await stream.read_until_eof(1024)


def port_of(addr: Multiaddr) -> int:
    return addr.tcp_host_port()[1]


LOOPBACK_MA = Multiaddr.from_string("/ip4/127.0.0.1/tcp/0")


async def test_listeners_share_their_port_and_dials_leave_from_it() -> None:
    config_a, config_b = (transport.TransportConfig(Identity.generate()) for _ in range(2))
    at_b: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
    errors: list[Exception] = []
    listener_a = await transport.listen(
        LOOPBACK_MA, config_a, lambda c: None, echo, lambda e, _: errors.append(e)
    )
    listener_b = await transport.listen(
        LOOPBACK_MA, config_b, at_b.set_result, echo, lambda e, _: errors.append(e)
    )
    port_a = port_of(listener_a.addrs[0])
    try:
        # a socket that asks for SO_REUSEPORT may bind a port only if its listener did too
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind(("127.0.0.1", port_a))
        probe.close()
        target = listener_b.addrs[0].with_peer_id(config_b.identity.peer_id)
        conn = await transport.dial(target, config_a, echo, local_port=port_a)
        inbound = await asyncio.wait_for(at_b, 5)
        assert port_of(conn.local_addr) == port_a
        assert port_of(inbound.remote_addr) == port_a  # the peer sees the listen port
        assert conn.is_initiator and not inbound.is_initiator
        # Nagle off, as on every socket asyncio makes (a relayed task cost 40 ms without)
        sock = conn._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert await exchange(conn, b"through the shared port") == b"through the shared port"
        await conn.close()
        await inbound.close()
    finally:
        await listener_a.close()
        await listener_b.close()
    assert errors == []


async def test_a_port_held_without_reuseport_cannot_be_dialed_from() -> None:
    config = transport.TransportConfig(Identity.generate())
    listener = await transport.listen(LOOPBACK_MA, config, lambda c: None, echo, lambda e, a: None)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        with pytest.raises(DialError):
            await transport.dial(
                listener.addrs[0], config, echo, local_port=holder.getsockname()[1]
            )
    finally:
        holder.close()
        await listener.close()


async def _accept_and_upgrade(
    config: transport.TransportConfig, *, is_initiator: bool
) -> tuple[asyncio.Server, asyncio.Future[Connection]]:
    """A bare TCP server that upgrades what it accepts in the role given (the real upgrade)."""
    loop = asyncio.get_running_loop()
    upgraded: asyncio.Future[Connection] = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()

    class Accept(asyncio.Protocol):
        def connection_made(self, raw: asyncio.BaseTransport) -> None:
            assert isinstance(raw, asyncio.Transport)
            remote = Multiaddr.from_string(
                f"/ip4/127.0.0.1/tcp/{raw.get_extra_info('peername')[1]}"
            )
            local = Multiaddr.from_string(f"/ip4/127.0.0.1/tcp/{raw.get_extra_info('sockname')[1]}")

            async def run() -> None:
                try:
                    conn = await transport.upgrade_transport(
                        raw,
                        config,
                        is_initiator=is_initiator,
                        expected_peer=None,
                        on_inbound_stream=echo,
                        addrs=(remote, local),
                    )
                except BaseException as exc:
                    upgraded.set_exception(exc)
                else:
                    upgraded.set_result(conn)

            tasks.add(loop.create_task(run()))

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    return server, upgraded


async def test_a_dial_as_security_responder_meets_an_accepting_initiator() -> None:
    """What a simultaneous open asks: the side that dialed answers Noise and muxer."""
    config_a, config_b = (transport.TransportConfig(Identity.generate()) for _ in range(2))
    server, upgraded = await _accept_and_upgrade(config_a, is_initiator=True)
    port = server.sockets[0].getsockname()[1]
    target = Multiaddr.from_string(f"/ip4/127.0.0.1/tcp/{port}/p2p/{config_a.identity.peer_id}")
    try:
        dialed = await transport.dial(target, config_b, echo, as_initiator=False)
        accepted = await asyncio.wait_for(upgraded, 5)
        assert not dialed.is_initiator and accepted.is_initiator
        assert dialed.remote_peer == config_a.identity.peer_id
        assert accepted.remote_peer == config_b.identity.peer_id
        # streams both ways: the muxer roles differ, so their stream ids do not clash
        assert await exchange(dialed, b"from the dialer") == b"from the dialer"
        assert await exchange(accepted, b"from the acceptor") == b"from the acceptor"
        await dialed.close()
        await accepted.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_responder_dial_still_checks_the_peer_id() -> None:
    config_a, config_b = (transport.TransportConfig(Identity.generate()) for _ in range(2))
    server, upgraded = await _accept_and_upgrade(config_a, is_initiator=True)
    port = server.sockets[0].getsockname()[1]
    someone_else = Identity.generate().peer_id
    target = Multiaddr.from_string(f"/ip4/127.0.0.1/tcp/{port}/p2p/{someone_else}")
    try:
        with pytest.raises(PeerIdMismatchError):
            await transport.dial(target, config_b, echo, as_initiator=False)
        accepted = await asyncio.wait_for(upgraded, 5)
        await accepted.close()
    finally:
        server.close()
        await server.wait_closed()


# -- the driver between two nodes ----------------------------------------------------


class Punch:
    """Two nodes: ``a`` dialed ``b`` (standing in for the relayed connection), so ``b``
    runs hole_punch and ``a`` serves DCUtR. ``a`` dials from its listen port for real;
    ``b``'s half of the simultaneous open is the connection arriving from that port."""

    def __init__(self, a: Node, b: Node) -> None:
        self.a, self.b = a, b
        self.roles: dict[str, list[bool]] = {"a": [], "b": []}
        self.a_direct: list[Connection] = []
        self.a_config = transport.TransportConfig(a.identity)
        self.fail_a = False
        self.fail_b = False

    @property
    def port_a(self) -> int:
        return port_of(self.a.listen_addrs[0])

    async def dial_a(
        self, peer: PeerId, addrs: Sequence[Multiaddr], as_initiator: bool
    ) -> Connection:
        self.roles["a"].append(as_initiator)
        if self.fail_a:
            raise DialError("no hole today")
        assert peer == self.b.peer_id
        conn = await transport.dial(
            addrs[0].with_peer_id(peer),
            self.a_config,
            echo,
            local_port=self.port_a,
            as_initiator=as_initiator,
        )
        self.a_direct.append(conn)
        return conn

    async def dial_b(
        self, peer: PeerId, addrs: Sequence[Multiaddr], as_initiator: bool
    ) -> Connection:
        self.roles["b"].append(as_initiator)
        if self.fail_b:
            raise DialError("no hole today")
        assert peer == self.a.peer_id and self.port_a in [port_of(a) for a in addrs]
        async with asyncio.timeout(5):
            while True:
                for conn in self.b.connections(peer):
                    if port_of(conn.remote_addr) == self.port_a:
                        return conn
                await asyncio.sleep(0.001)


async def two_nodes() -> tuple[Node, Node, Connection]:
    a, b = await start_node(), await start_node()
    await a.dial(addr_of(b))
    return a, b, await inbound_connection(b, a.peer_id)


async def test_hole_punch_between_two_nodes() -> None:
    a, b, relayed = await two_nodes()
    punch = Punch(a, b)
    service = DcutrService(a, lambda: a.listen_addrs, punch.dial_a, require_relayed=False)
    results: asyncio.Queue[tuple[PeerId, Connection | None]] = asyncio.Queue()
    service.on_result = lambda peer, conn: results.put_nowait((peer, conn))
    service.register()
    try:
        direct = await asyncio.wait_for(hole_punch(b, relayed, b.listen_addrs, punch.dial_b), 10)
        assert direct is not relayed and direct.remote_peer == a.peer_id
        assert port_of(direct.remote_addr) == punch.port_a
        peer, a_side = await asyncio.wait_for(results.get(), 5)
        assert peer == b.peer_id and a_side is punch.a_direct[0]
        assert port_of(a_side.local_addr) == punch.port_a
        # A is the security client, B the server (spec and go-libp2p)
        assert punch.roles == {"a": [True], "b": [False]}
        assert a_side.is_initiator and not direct.is_initiator
        stream = await a_side.new_stream([ping.PROTOCOL_ID])  # b's node serves ping
        await stream.write(b"p" * 32)
        assert await stream.readexactly(32) == b"p" * 32
        stream.reset()
        await a_side.close()
    finally:
        await service.close()
        await a.stop()
        await b.stop()


async def test_hole_punch_tries_three_times_then_gives_up() -> None:
    a, b, relayed = await two_nodes()
    punch = Punch(a, b)
    punch.fail_a = punch.fail_b = True
    service = DcutrService(a, a.listen_addrs, punch.dial_a, require_relayed=False)
    outcomes: list[Connection | None] = []
    service.on_result = lambda _peer, conn: outcomes.append(conn)
    service.register()
    try:
        with pytest.raises(HolePunchFailedError, match="3 times"):
            await asyncio.wait_for(hole_punch(b, relayed, b.listen_addrs, punch.dial_b), 10)
        # opposite roles on every attempt, alternating (see p2pnode.wire.dcutr)
        assert punch.roles["b"] == [False, True, False]
        async with asyncio.timeout(5):
            while len(outcomes) < 3:
                await asyncio.sleep(0.001)
        assert outcomes == [None, None, None] and punch.roles["a"] == [True, False, True]
        assert relayed.is_usable  # the relayed connection stays
    finally:
        await service.close()
        await a.stop()
        await b.stop()


async def test_the_service_refuses_streams_on_connections_it_did_not_dial() -> None:
    a, b, _ = await two_nodes()
    punch = Punch(a, b)
    # b serves DCUtR, but b *received* this connection: only b may start the exchange
    service = DcutrService(b, b.listen_addrs, punch.dial_b, require_relayed=False)
    service.register()
    try:
        (to_b,) = a.connections(b.peer_id)
        with pytest.raises(P2PError):
            await asyncio.wait_for(hole_punch(a, to_b, a.listen_addrs, punch.dial_a), 10)
        assert punch.roles == {"a": [], "b": []}
    finally:
        await service.close()
        await a.stop()
        await b.stop()


async def test_the_service_wants_a_relayed_connection_by_default() -> None:
    a, b, relayed = await two_nodes()
    punch = Punch(a, b)
    service = DcutrService(a, a.listen_addrs, punch.dial_a)
    service.register()
    try:
        with pytest.raises(P2PError):
            await asyncio.wait_for(hole_punch(b, relayed, b.listen_addrs, punch.dial_b), 10)
        assert punch.roles == {"a": [], "b": []}
        assert PROTOCOL_ID in a.protocols
    finally:
        await service.close()
        assert PROTOCOL_ID not in a.protocols
        await a.stop()
        await b.stop()


async def test_an_existing_direct_connection_is_returned_at_once() -> None:
    a, b, relayed = await two_nodes()
    punch = Punch(a, b)
    try:
        await b.dial(a.listen_addrs[0])  # a second, direct connection (no /p2p: a new dial)
        direct = await asyncio.wait_for(hole_punch(b, relayed, b.listen_addrs, punch.dial_b), 10)
        assert direct is not relayed and direct.remote_peer == a.peer_id
        assert punch.roles == {"a": [], "b": []}
    finally:
        await a.stop()
        await b.stop()
