"""AutoNAT v1: the codec, the server's dial-back policy, the client's tracker, and the
service and monitor between real nodes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, DialError, LocalProtocolError, P2PError, StreamResetError
from p2pnode.net.connection import Connection
from p2pnode.net.stream import Stream
from p2pnode.net.transport import TransportConfig, dial
from p2pnode.node import Node
from p2pnode.protocols.autonat import (
    PROTOCOL_ID,
    AutonatService,
    ReachabilityMonitor,
    probe,
)
from p2pnode.wire.autonat import (
    MAX_MESSAGE_SIZE,
    Dial,
    DialBack,
    DialBackPolicy,
    DialResponse,
    Message,
    MessageType,
    PeerInfo,
    ProbeResult,
    Reachability,
    ReachabilityTracker,
    Refusal,
    ResponseStatus,
    decode_message,
    dial_request,
    dial_response,
    encode_message,
    is_relayed,
    observed_ip,
)
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.varint import encode_uvarint

from .conftest import addr_of, start_node

ALICE = Identity.generate().peer_id
BOB = Identity.generate().peer_id
PUBLIC_IP = "1.2.3.4"  # public-looking IPs, only ever parsed by the policy, never dialed
OTHER_IP = "5.6.7.8"


def ma(text: str) -> Multiaddr:
    return Multiaddr.from_string(text)


def info(peer: PeerId | None, *addrs: str | bytes) -> PeerInfo:
    raw = tuple(a if isinstance(a, bytes) else ma(a).to_bytes() for a in addrs)
    return PeerInfo(None if peer is None else peer.to_bytes(), raw)


# -- codec ---------------------------------------------------------------------------


def test_a_dial_response_encodes_to_the_spec_field_numbers() -> None:
    # type=1 (varint 1: DIAL_RESPONSE), dialResponse=3 {status=1 (100), statusText=2 "no"}
    encoded = encode_message(
        Message(
            MessageType.DIAL_RESPONSE,
            dial_response=DialResponse(ResponseStatus.E_DIAL_ERROR, "no"),
        )
    )
    assert encoded == bytes([0x08, 0x01, 0x1A, 0x06, 0x08, 0x64, 0x12, 0x02]) + b"no"


def test_a_dial_encodes_to_the_spec_field_numbers() -> None:
    addr = ma("/ip4/1.2.3.4/tcp/1").to_bytes()
    peer_id = ALICE.to_bytes()
    peer_info = bytes([0x0A, len(peer_id)]) + peer_id + bytes([0x12, len(addr)]) + addr
    expected = bytes([0x08, 0x00, 0x12, len(peer_info) + 2, 0x0A, len(peer_info)]) + peer_info
    assert dial_request(ALICE, [ma("/ip4/1.2.3.4/tcp/1")]) == expected
    assert decode_message(expected) == Message(MessageType.DIAL, Dial(PeerInfo(peer_id, (addr,))))


def test_status_values_are_the_specs() -> None:
    assert {s.name: s.value for s in ResponseStatus} == {
        "OK": 0,
        "E_DIAL_ERROR": 100,
        "E_DIAL_REFUSED": 101,
        "E_BAD_REQUEST": 200,
        "E_INTERNAL_ERROR": 300,
    }
    assert (MessageType.DIAL, MessageType.DIAL_RESPONSE) == (0, 1)


def test_a_response_round_trips_with_its_address() -> None:
    addr = ma("/ip4/127.0.0.1/tcp/4001")
    message = decode_message(dial_response(ResponseStatus.OK, None, addr))
    assert message == Message(
        MessageType.DIAL_RESPONSE,
        dial_response=DialResponse(ResponseStatus.OK, None, addr.to_bytes()),
    )


def test_unknown_fields_are_skipped() -> None:
    extra = bytes([0x20, 0x05]) + bytes([0x2A, 0x01, 0xFF])  # field 4 varint, field 5 bytes
    message = decode_message(dial_response(ResponseStatus.E_BAD_REQUEST, "x") + extra)
    assert message.dial_response == DialResponse(ResponseStatus.E_BAD_REQUEST, "x")


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x08, 0x07]),  # message type 7
        bytes([0x1A, 0x02, 0x08, 0x05]),  # status 5
        bytes([0x0A, 0x00]),  # type as bytes
        bytes([0x12, 0x02, 0x08, 0x01]),  # Dial.peer as a varint
        bytes([0x1A, 0x02, 0x12, 0x01]),  # statusText runs past its message
        bytes([0x1A, 0x03, 0x12, 0x01, 0xFF]),  # statusText not UTF-8
        bytes([0x08]),  # truncated
        dial_response(ResponseStatus.OK, "x" * MAX_MESSAGE_SIZE),  # well formed, but oversize
    ],
)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)


def test_a_dial_request_drops_addresses_that_would_not_fit() -> None:
    addrs = [ma(f"/dns4/{'a' * 200}{i}.example/tcp/1") for i in range(40)]
    encoded = dial_request(ALICE, addrs)
    assert len(encoded) <= MAX_MESSAGE_SIZE
    message = decode_message(encoded)
    assert message.dial is not None and message.dial.peer is not None
    kept = message.dial.peer.addrs
    assert 10 < len(kept) < 40 and kept == tuple(a.to_bytes() for a in addrs[: len(kept)])


_opt_bytes = st.none() | st.binary(max_size=40)
_messages = st.builds(
    Message,
    st.none() | st.sampled_from(MessageType),
    st.none()
    | st.builds(
        Dial,
        st.none() | st.builds(PeerInfo, _opt_bytes, st.tuples(*[st.binary(max_size=30)] * 3)),
    ),
    st.none()
    | st.builds(
        DialResponse,
        st.none() | st.sampled_from(ResponseStatus),
        st.none() | st.text(max_size=40),
        _opt_bytes,
    ),
)


@given(_messages)
def test_messages_round_trip(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


@given(st.binary(max_size=600))
def test_garbage_decodes_or_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        assert isinstance(decode_message(data), Message)


@given(_messages, st.data())
def test_truncations_decode_or_raise_decode_error(message: Message, data: st.DataObject) -> None:
    encoded = encode_message(message)
    cut = data.draw(st.integers(0, max(0, len(encoded) - 1)))
    with contextlib.suppress(DecodeError):
        assert isinstance(decode_message(encoded[:cut]), Message)


def test_a_cut_inside_a_field_raises() -> None:
    encoded = dial_response(ResponseStatus.OK, "fine")
    with pytest.raises(DecodeError):
        decode_message(encoded[:-1])


@given(st.integers(MAX_MESSAGE_SIZE + 1, MAX_MESSAGE_SIZE * 4))
def test_oversized_messages_raise(size: int) -> None:
    with pytest.raises(DecodeError):
        decode_message(dial_response(ResponseStatus.OK, "x" * size))


# -- the dial-back policy ------------------------------------------------------------


def decide(
    policy: DialBackPolicy,
    peer: PeerInfo | None,
    *,
    requester: PeerId = ALICE,
    observed: str | None = PUBLIC_IP,
    relayed: bool = False,
    now: float = 0.0,
) -> DialBack | Refusal:
    return policy.decide(requester, observed, relayed, peer, now)


def test_only_addresses_at_the_observed_ip_are_dialed() -> None:
    asked = info(
        ALICE, f"/ip4/{PUBLIC_IP}/tcp/1", f"/ip4/{OTHER_IP}/tcp/2", f"/ip4/{PUBLIC_IP}/tcp/3"
    )
    decision = decide(DialBackPolicy(), asked)
    assert decision == DialBack(
        ALICE, (ma(f"/ip4/{PUBLIC_IP}/tcp/1"), ma(f"/ip4/{PUBLIC_IP}/tcp/3"))
    )


def test_a_request_to_dial_a_third_party_is_refused() -> None:
    decision = decide(
        DialBackPolicy(), info(ALICE, f"/ip4/{OTHER_IP}/tcp/80", "/dns4/x.example/tcp/1")
    )
    assert decision == Refusal(ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")


def test_requests_over_a_relay_are_refused() -> None:
    decision = decide(DialBackPolicy(), info(ALICE, f"/ip4/{PUBLIC_IP}/tcp/1"), relayed=True)
    assert isinstance(decision, Refusal) and decision.status is ResponseStatus.E_DIAL_REFUSED


def test_circuit_addresses_are_never_dialed() -> None:
    relay = Identity.generate().peer_id
    circuit = f"/ip4/{PUBLIC_IP}/tcp/1/p2p/{relay}/p2p-circuit"
    decision = decide(DialBackPolicy(), info(ALICE, circuit))
    assert decision == Refusal(ResponseStatus.E_DIAL_REFUSED, "no dialable addresses")
    assert is_relayed(ma(circuit)) and not is_relayed(ma(f"/ip4/{PUBLIC_IP}/tcp/1"))


def test_a_peer_info_naming_someone_else_is_a_bad_request() -> None:
    decision = decide(DialBackPolicy(), info(BOB, f"/ip4/{PUBLIC_IP}/tcp/1"))
    assert decision == Refusal(ResponseStatus.E_BAD_REQUEST, "peer id mismatch")


def test_an_unparsable_peer_id_or_no_peer_info_is_a_bad_request() -> None:
    garbled = PeerInfo(b"\x99\x01", (ma(f"/ip4/{PUBLIC_IP}/tcp/1").to_bytes(),))
    assert decide(DialBackPolicy(), garbled) == Refusal(ResponseStatus.E_BAD_REQUEST, "bad peer id")
    assert decide(DialBackPolicy(), None) == Refusal(
        ResponseStatus.E_BAD_REQUEST, "missing peer info"
    )


def test_a_peer_info_without_id_is_the_requester() -> None:
    decision = decide(DialBackPolicy(), info(None, f"/ip4/{PUBLIC_IP}/tcp/1"))
    assert decision == DialBack(ALICE, (ma(f"/ip4/{PUBLIC_IP}/tcp/1"),))


def test_addresses_naming_another_peer_are_skipped_and_our_own_id_is_stripped() -> None:
    asked = info(
        ALICE,
        f"/ip4/{PUBLIC_IP}/tcp/1/p2p/{BOB}",
        f"/ip4/{PUBLIC_IP}/tcp/2/p2p/{ALICE}",
        b"\xff\xff\xff",  # unparsable: skipped, not fatal
    )
    assert decide(DialBackPolicy(), asked) == DialBack(ALICE, (ma(f"/ip4/{PUBLIC_IP}/tcp/2"),))


def test_the_number_of_addresses_is_capped_and_duplicates_dropped() -> None:
    ports = [1, 1, *range(2, 30)]
    decision = decide(
        DialBackPolicy(max_addrs=4), info(ALICE, *(f"/ip4/{PUBLIC_IP}/tcp/{p}" for p in ports))
    )
    assert isinstance(decision, DialBack)
    assert [a.value_for("tcp") for a in decision.addrs] == ["1", "2", "3", "4"]


def test_private_ips_are_refused_unless_allowed() -> None:
    asked = info(ALICE, "/ip4/127.0.0.1/tcp/1")
    assert decide(DialBackPolicy(), asked, observed="127.0.0.1") == Refusal(
        ResponseStatus.E_DIAL_REFUSED, "refusing to dial a non-public IP"
    )
    allowed = decide(DialBackPolicy(allow_private=True), asked, observed="127.0.0.1")
    assert allowed == DialBack(ALICE, (ma("/ip4/127.0.0.1/tcp/1"),))


def test_an_ipv4_mapped_observation_matches_the_ipv4_address() -> None:
    asked = info(ALICE, f"/ip4/{PUBLIC_IP}/tcp/1")
    assert isinstance(decide(DialBackPolicy(), asked, observed=f"::ffff:{PUBLIC_IP}"), DialBack)


def test_an_unknown_observed_ip_is_refused() -> None:
    asked = info(ALICE, f"/ip4/{PUBLIC_IP}/tcp/1")
    decision = decide(DialBackPolicy(), asked, observed=None)
    assert isinstance(decision, Refusal) and decision.status is ResponseStatus.E_DIAL_REFUSED
    assert observed_ip(ma("/dns4/x.example/tcp/1")) is None
    assert observed_ip(ma(f"/ip4/{PUBLIC_IP}/tcp/9")) == PUBLIC_IP


def test_addresses_this_node_cannot_dial_are_dropped() -> None:
    policy = DialBackPolicy(dialable=lambda a: a.unsupported_part() is None)
    asked = info(ALICE, f"/ip4/{PUBLIC_IP}/udp/1/quic-v1", f"/ip4/{PUBLIC_IP}/tcp/2")
    assert decide(policy, asked) == DialBack(ALICE, (ma(f"/ip4/{PUBLIC_IP}/tcp/2"),))


def test_each_peer_is_rate_limited_within_the_period() -> None:
    policy = DialBackPolicy(peer_max=3, period=60.0)
    asked = info(ALICE, f"/ip4/{PUBLIC_IP}/tcp/1")
    assert all(isinstance(decide(policy, asked, now=t), DialBack) for t in (0.0, 1.0, 2.0))
    assert decide(policy, asked, now=59.0) == Refusal(
        ResponseStatus.E_DIAL_REFUSED, "too many dials"
    )
    assert isinstance(
        decide(policy, info(BOB, f"/ip4/{PUBLIC_IP}/tcp/1"), requester=BOB, now=59.0), DialBack
    )
    assert isinstance(decide(policy, asked, now=60.0), DialBack)  # the first grant expired
    assert isinstance(decide(policy, asked, now=60.5), Refusal)


def test_all_peers_together_are_rate_limited() -> None:
    policy = DialBackPolicy(peer_max=3, global_max=5, period=10.0)
    peers = [Identity.generate().peer_id for _ in range(6)]
    granted = [
        decide(policy, info(p, f"/ip4/{PUBLIC_IP}/tcp/1"), requester=p, now=1.0) for p in peers
    ]
    assert [isinstance(d, DialBack) for d in granted] == [True] * 5 + [False]
    assert isinstance(
        decide(policy, info(peers[5], f"/ip4/{PUBLIC_IP}/tcp/1"), requester=peers[5], now=11.0),
        DialBack,
    )


def test_refused_requests_do_not_count_against_the_limit() -> None:
    policy = DialBackPolicy(peer_max=1)
    for _ in range(5):
        decide(policy, info(ALICE, f"/ip4/{OTHER_IP}/tcp/1"))
    assert isinstance(decide(policy, info(ALICE, f"/ip4/{PUBLIC_IP}/tcp/1")), DialBack)


def test_the_defaults_are_go_libp2ps() -> None:
    policy = DialBackPolicy()
    assert (policy.max_addrs, policy.peer_max, policy.global_max, policy.period) == (
        16,
        3,
        30,
        60.0,
    )
    assert not policy.allow_private


_ips = st.sampled_from([PUBLIC_IP, OTHER_IP, "2a01:4f8::1", "11.22.33.44"])
_addr_texts = st.builds(
    lambda ip, port, tail: f"/{'ip6' if ':' in ip else 'ip4'}/{ip}/tcp/{port}{tail}",
    _ips,
    st.integers(1, 65535),
    st.sampled_from(["", f"/p2p/{ALICE}", f"/p2p/{BOB}", f"/p2p/{BOB}/p2p-circuit"]),
)


@given(st.lists(_addr_texts | st.binary(max_size=12).map(bytes), max_size=30), _ips, st.booleans())
def test_no_request_makes_us_dial_another_ip_or_a_relay(
    addrs: list[str | bytes], observed: str, relayed: bool
) -> None:
    raw = tuple(a if isinstance(a, bytes) else ma(a).to_bytes() for a in addrs)
    decision = decide(
        DialBackPolicy(max_addrs=8),
        PeerInfo(ALICE.to_bytes(), raw),
        observed=observed,
        relayed=relayed,
    )
    if isinstance(decision, DialBack):
        assert not relayed and 1 <= len(decision.addrs) <= 8
        for addr in decision.addrs:
            assert observed_ip(addr) == observed and not is_relayed(addr) and addr.peer_id is None


# -- the tracker ---------------------------------------------------------------------

OK_ADDR = ma(f"/ip4/{PUBLIC_IP}/tcp/4001")


def ok(addr: Multiaddr | None = OK_ADDR) -> ProbeResult:
    return ProbeResult(ALICE, ResponseStatus.OK, "", addr)


def failed() -> ProbeResult:
    return ProbeResult(ALICE, ResponseStatus.E_DIAL_ERROR, "dial failed")


def test_one_successful_dial_back_makes_us_public_and_more_make_us_sure() -> None:
    tracker = ReachabilityTracker()
    assert tracker.observe(ok()) is Reachability.PUBLIC
    assert (tracker.confidence, tracker.public_addr, tracker.confident) == (0, OK_ADDR, False)
    assert [tracker.observe(ok()) for _ in range(4)] == [None] * 4
    assert tracker.confidence == 3 and tracker.confident  # capped at go's maximum


def test_failures_wear_public_down_before_it_turns_private() -> None:
    tracker = ReachabilityTracker()
    for _ in range(4):
        tracker.observe(ok())
    assert [tracker.observe(failed()) for _ in range(3)] == [None, None, None]
    assert tracker.reachability is Reachability.PUBLIC and tracker.confidence == 0
    assert tracker.observe(failed()) is Reachability.PRIVATE
    assert tracker.public_addr is None and tracker.confidence == 0
    tracker.observe(failed())
    assert tracker.confidence == 1


def test_from_unknown_a_failure_means_private_and_a_success_public_again() -> None:
    tracker = ReachabilityTracker()
    assert tracker.observe(failed()) is Reachability.PRIVATE
    tracker.observe(failed())
    assert tracker.observe(ok()) is Reachability.PUBLIC  # a dial-back that worked is proof
    assert tracker.confidence == 0


def test_refusals_say_nothing() -> None:
    tracker = ReachabilityTracker()
    tracker.observe(ok())
    tracker.observe(ok())
    refused = ProbeResult(ALICE, ResponseStatus.E_DIAL_REFUSED, "too many dials")
    assert tracker.observe(refused) is None
    assert (tracker.reachability, tracker.confidence) == (Reachability.PUBLIC, 1)


def test_unanswered_probes_wear_confidence_down_then_make_us_unknown() -> None:
    tracker = ReachabilityTracker()
    tracker.observe(ok())
    tracker.observe(ok())
    no_answer = ProbeResult(ALICE, None, "timed out")
    internal = ProbeResult(ALICE, ResponseStatus.E_INTERNAL_ERROR, "oops")
    assert tracker.observe(no_answer) is None and tracker.confidence == 0
    assert tracker.observe(internal) is Reachability.UNKNOWN
    assert tracker.public_addr is None
    assert tracker.observe(no_answer) is None and tracker.confidence == 0


def test_a_success_without_an_address_keeps_the_last_confirmed_one() -> None:
    tracker = ReachabilityTracker()
    tracker.observe(ok())
    tracker.observe(ok(None))
    assert tracker.public_addr == OK_ADDR


# -- the service on a real stream ----------------------------------------------------


@dataclass
class DialBacks:
    """A dial_back for tests: a fresh connection (its own identity) to the address with
    the peer's id, closed straight away; remembers what it was asked and what it did."""

    asked: list[tuple[PeerId, tuple[Multiaddr, ...]]] = field(default_factory=list)
    connected: list[Connection] = field(default_factory=list)
    config: TransportConfig = field(default_factory=lambda: TransportConfig(Identity.generate()))

    async def __call__(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> Multiaddr:
        self.asked.append((peer, tuple(addrs)))
        for addr in addrs:
            try:
                conn = await dial(addr.with_peer_id(peer), self.config, _refuse_streams)
            except P2PError:
                continue
            self.connected.append(conn)
            await conn.close()
            return addr
        raise DialError(f"could not dial {peer} back at any of {len(addrs)} addresses")


async def _refuse_streams(stream: Stream) -> None:
    stream.reset()


@dataclass
class Served:
    node: Node
    service: AutonatService
    dial_backs: DialBacks


async def serve(**policy: object) -> Served:
    node = await start_node()
    dial_backs = DialBacks()
    service = AutonatService(
        node,
        dial_backs,
        DialBackPolicy(allow_private=True, **policy),  # type: ignore[arg-type]
        pad_failures=False,
    )
    node.set_handler(PROTOCOL_ID, service.handle)
    return Served(node, service, dial_backs)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    """Nodes to stop after the test."""
    started: list[Node] = []
    yield started
    for node in started:
        await node.stop()


async def connected(client: Node, *servers: Node) -> None:
    """``client`` connected to each server and knowing, from identify, what it serves."""
    for server in servers:
        await client.dial(addr_of(server))
        await client.identify_service.identify(server.peer_id)


def a_closed_port() -> int:
    with socket.socket() as sock:  # bound and closed again: nothing listens there after
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def send_raw(client: Node, server: Node, data: bytes) -> Stream:
    stream = await client.new_stream(server.peer_id, [PROTOCOL_ID])
    await stream.write(data)
    return stream


@pytest.mark.parametrize(
    "data",
    [
        encode_frame(b"\x08\x07"),  # an unknown message type
        encode_frame(dial_response(ResponseStatus.OK)),  # a response where a DIAL belongs
        encode_uvarint(MAX_MESSAGE_SIZE + 1) + b"\x00" * 64,  # announced oversize
        encode_frame(b"\x12\x05\x0a"),  # Dial runs past the message
    ],
)
async def test_a_malformed_request_resets_only_its_stream(data: bytes, nodes: list[Node]) -> None:
    served = await serve()
    client = await start_node()
    nodes += [served.node, client]
    await connected(client, served.node)
    stream = await send_raw(client, served.node, data)
    with pytest.raises(StreamResetError):
        async with asyncio.timeout(5):
            await stream.read()
    (conn,) = client.connections(served.node.peer_id)
    assert conn.is_usable and served.dial_backs.asked == []
    result = await probe(client, served.node.peer_id, client.listen_addrs)
    assert result.status is ResponseStatus.OK


async def test_a_whole_oversized_request_resets_its_stream(nodes: list[Node]) -> None:
    served = await serve()
    client = await start_node()
    nodes += [served.node, client]
    await connected(client, served.node)
    big = encode_message(
        Message(MessageType.DIAL, Dial(PeerInfo(None, (b"x" * MAX_MESSAGE_SIZE,))))
    )
    stream = await send_raw(client, served.node, encode_frame(big))
    with pytest.raises(StreamResetError):
        async with asyncio.timeout(5):
            await stream.read()
    assert client.connections(served.node.peer_id)[0].is_usable


async def answer_with(node: Node, data: bytes) -> None:
    async def handler(stream: Stream) -> None:
        await stream.read()
        await stream.write(data)
        await stream.close()

    node.set_handler(PROTOCOL_ID, handler)


@pytest.mark.parametrize(
    "answer",
    [
        encode_frame(b"\x1a\x02\x08\x05"),  # an undefined status
        encode_frame(encode_message(Message(MessageType.DIAL_RESPONSE))),  # no dialResponse
        encode_uvarint(MAX_MESSAGE_SIZE + 1),  # oversize
        b"",  # no answer at all
    ],
)
async def test_a_bad_answer_is_a_decode_error(answer: bytes, nodes: list[Node]) -> None:
    server, client = await start_node(), await start_node()
    nodes += [server, client]
    await answer_with(server, answer)
    await client.dial(addr_of(server))
    with pytest.raises(DecodeError):
        await probe(client, server.peer_id, client.listen_addrs)
    assert client.connections(server.peer_id)[0].is_usable


async def test_a_probe_needs_an_address(nodes: list[Node]) -> None:
    client = await start_node()
    nodes.append(client)
    with pytest.raises(LocalProtocolError):
        await probe(client, BOB, [])


async def test_a_reachable_address_is_dialed_back_over_a_new_connection(nodes: list[Node]) -> None:
    served = await serve()
    client = await start_node()
    nodes += [served.node, client]
    await connected(client, served.node)
    result = await probe(client, served.node.peer_id, client.listen_addrs)
    assert result == ProbeResult(served.node.peer_id, ResponseStatus.OK, "", client.listen_addrs[0])
    assert served.dial_backs.asked == [(client.peer_id, tuple(client.listen_addrs))]
    (back,) = served.dial_backs.connected
    assert back.remote_peer == client.peer_id and back.is_closed
    assert len(client.connections(served.node.peer_id)) == 1  # not the request's connection


async def test_an_address_where_nothing_listens_is_a_dial_error(nodes: list[Node]) -> None:
    served = await serve()
    client = await start_node()
    nodes += [served.node, client]
    await connected(client, served.node)
    result = await probe(client, served.node.peer_id, [ma(f"/ip4/127.0.0.1/tcp/{a_closed_port()}")])
    assert (result.status, result.text, result.addr) == (
        ResponseStatus.E_DIAL_ERROR,
        "dial failed",
        None,
    )


async def test_another_peer_listening_at_the_address_is_a_dial_error(nodes: list[Node]) -> None:
    served = await serve()
    client, stranger = await start_node(), await start_node()
    nodes += [served.node, client, stranger]
    await connected(client, served.node)
    result = await probe(client, served.node.peer_id, stranger.listen_addrs)
    assert result.status is ResponseStatus.E_DIAL_ERROR
    assert served.dial_backs.connected == []


async def test_loopback_is_refused_by_the_default_policy(nodes: list[Node]) -> None:
    node, client = await start_node(), await start_node()
    nodes += [node, client]
    dial_backs = DialBacks()
    AutonatService(node, dial_backs).register()
    await connected(client, node)
    result = await probe(client, node.peer_id, client.listen_addrs)
    assert result.status is ResponseStatus.E_DIAL_REFUSED and dial_backs.asked == []


async def test_a_dial_back_that_hangs_is_cut_off_and_a_crash_is_internal(nodes: list[Node]) -> None:
    node, client = await start_node(), await start_node()
    nodes += [node, client]

    async def hang(peer: PeerId, addrs: Sequence[Multiaddr]) -> Multiaddr:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def crash(peer: PeerId, addrs: Sequence[Multiaddr]) -> Multiaddr:
        raise RuntimeError("bug")

    policy = DialBackPolicy(allow_private=True)
    hanging = AutonatService(node, hang, policy, dial_timeout=0.05, pad_failures=False)
    node.set_handler(PROTOCOL_ID, hanging.handle)
    await connected(client, node)
    result = await probe(client, node.peer_id, client.listen_addrs)
    assert result.status is ResponseStatus.E_DIAL_ERROR
    node.set_handler(PROTOCOL_ID, AutonatService(node, crash, policy).handle)
    result = await probe(client, node.peer_id, client.listen_addrs)
    assert result.status is ResponseStatus.E_INTERNAL_ERROR


async def test_the_service_rate_limits_a_peer(nodes: list[Node]) -> None:
    served = await serve(peer_max=2)
    client = await start_node()
    nodes += [served.node, client]
    await connected(client, served.node)
    statuses = [
        (await probe(client, served.node.peer_id, client.listen_addrs)).status for _ in range(3)
    ]
    assert statuses == [ResponseStatus.OK, ResponseStatus.OK, ResponseStatus.E_DIAL_REFUSED]


# -- the monitor ---------------------------------------------------------------------


async def test_reachable_nodes_become_public(nodes: list[Node]) -> None:
    servers = [await serve() for _ in range(3)]
    client = await start_node()
    nodes += [s.node for s in servers] + [client]
    await connected(client, *(s.node for s in servers))
    monitor = ReachabilityMonitor(client)
    changes: list[Reachability] = []
    monitor.on_change(changes.append)
    results = await monitor.run_round()
    assert {r.peer for r in results} == {s.node.peer_id for s in servers}
    assert all(r.status is ResponseStatus.OK for r in results)
    assert changes == [Reachability.PUBLIC] and monitor.public_addr == client.listen_addrs[0]
    assert not monitor.tracker.confident  # three agreeing answers after the flip: 0, 1, 2
    assert await monitor.run_round() == []  # each server was just asked
    await monitor.run_round(force=True)
    assert monitor.tracker.confident and changes == [Reachability.PUBLIC]


async def test_unreachable_addresses_make_a_node_private(nodes: list[Node]) -> None:
    servers = [await serve() for _ in range(2)]
    client = await start_node()
    nodes += [s.node for s in servers] + [client]
    await connected(client, *(s.node for s in servers))
    closed = ma(f"/ip4/127.0.0.1/tcp/{a_closed_port()}")
    monitor = ReachabilityMonitor(client, addrs=lambda: [closed])
    changes: list[Reachability] = []
    monitor.on_change(changes.append)
    results = await monitor.run_round()
    assert [r.status for r in results] == [ResponseStatus.E_DIAL_ERROR] * 2
    assert changes == [Reachability.PRIVATE] and monitor.reachability == "private"
    assert monitor.public_addr is None


async def test_only_peers_serving_autonat_are_asked(nodes: list[Node]) -> None:
    served = await serve()
    plain, client = await start_node(), await start_node()
    nodes += [served.node, plain, client]
    await connected(client, served.node, plain)
    monitor = ReachabilityMonitor(client, peers_per_round=5)
    assert monitor.candidates() == [served.node.peer_id]


async def test_recheck_runs_a_round_in_the_background(nodes: list[Node]) -> None:
    served = await serve()
    client = await start_node()
    nodes += [served.node, client]
    await connected(client, served.node)
    monitor = ReachabilityMonitor(client, boot_delay=3600.0)
    changed: asyncio.Queue[Reachability] = asyncio.Queue()
    monitor.on_change(changed.put_nowait)
    monitor.start()
    try:
        monitor.recheck()
        async with asyncio.timeout(10):
            assert await changed.get() is Reachability.PUBLIC
    finally:
        await monitor.close()
    assert served.dial_backs.asked == [(client.peer_id, tuple(client.listen_addrs))]


async def test_a_peer_that_fails_to_answer_counts_as_unknown(nodes: list[Node]) -> None:
    server, client = await start_node(), await start_node()
    nodes += [server, client]
    await answer_with(server, b"")
    await connected(client, server)
    monitor = ReachabilityMonitor(client)
    monitor.tracker.observe(ok())
    (result,) = await monitor.run_round()
    assert result.status is None and "without answering" in result.text
    assert monitor.reachability is Reachability.UNKNOWN
