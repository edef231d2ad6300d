"""Muxer negotiation inside the Noise handshake (specs: inlined-muxer-negotiation.md)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import HandshakeError, P2PError
from p2pnode.node import Node
from p2pnode.wire.identity import Identity
from p2pnode.wire.noise import (
    HandshakePayload,
    NoiseHandshake,
    choose_muxer,
    decode_payload,
    encode_muxer_extensions,
    encode_payload,
)
from p2pnode.wire.protobuf import encode_bytes_field

from .conftest import addr_of, inbound_connection, start_node

YAMUX, MPLEX = "/yamux/1.0.0", "/mplex/6.7.0"


def run_handshake(
    initiator_muxers: tuple[str, ...], responder_muxers: tuple[str, ...]
) -> tuple[NoiseHandshake, NoiseHandshake]:
    initiator = NoiseHandshake(Identity.generate(), initiator=True, muxers=initiator_muxers)
    responder = NoiseHandshake(Identity.generate(), initiator=False, muxers=responder_muxers)
    message2 = responder.receive_data(initiator.start())
    message3 = initiator.receive_data(message2)
    assert responder.receive_data(message3) == b""
    assert initiator.complete and responder.complete
    return initiator, responder


def test_extensions_encoding_is_the_protobuf_of_the_spec() -> None:
    # extensions = field 4 (tag 0x22) holding stream_muxers = field 2 (tag 0x12) per name
    name = YAMUX.encode()
    assert encode_muxer_extensions([YAMUX]) == bytes([0x22, 2 + len(name), 0x12, len(name)]) + name
    assert encode_muxer_extensions([]) == b""


def test_payload_with_muxers_round_trips_and_other_extensions_are_ignored() -> None:
    payload = encode_payload(b"key", b"sig") + encode_muxer_extensions([YAMUX, MPLEX])
    assert decode_payload(payload) == HandshakePayload(b"key", b"sig", (YAMUX, MPLEX))
    certhash = encode_bytes_field(4, encode_bytes_field(1, b"\x12\x20" + bytes(32)))
    assert decode_payload(encode_payload(b"k", b"s") + certhash).stream_muxers == ()


def test_a_muxer_name_that_is_not_utf8_fails_the_handshake() -> None:
    bad = encode_bytes_field(4, encode_bytes_field(2, b"\xff\xfe"))
    with pytest.raises(HandshakeError, match="UTF-8"):
        decode_payload(encode_payload(b"k", b"s") + bad)


@given(st.binary(max_size=200))
def test_any_extensions_bytes_give_a_payload_or_our_error(data: bytes) -> None:
    try:
        decoded = decode_payload(encode_payload(b"k", b"s") + encode_bytes_field(4, data))
    except HandshakeError:
        return
    assert all(isinstance(name, str) for name in decoded.stream_muxers)


def test_the_initiators_first_common_muxer_wins() -> None:
    # the spec's example: the client prefers yamux, the server mplex
    assert choose_muxer((YAMUX, MPLEX), (MPLEX, YAMUX)) == YAMUX
    assert choose_muxer(("/other/1.0.0", MPLEX), (YAMUX, MPLEX)) == MPLEX
    assert choose_muxer((), (YAMUX,)) is None and choose_muxer((YAMUX,), ()) is None


def test_both_sides_agree_and_the_initiator_sends_only_its_choice() -> None:
    initiator, responder = run_handshake((MPLEX, YAMUX), (YAMUX, MPLEX))
    assert initiator.muxer == responder.muxer == MPLEX
    assert initiator.remote_muxers == (YAMUX, MPLEX)
    assert responder.remote_muxers == (MPLEX,)
    initiator, responder = run_handshake(("/other/1.0.0", YAMUX), (MPLEX, YAMUX))
    assert initiator.muxer == responder.muxer == YAMUX


def test_an_initiator_that_got_no_list_sends_its_whole_list() -> None:
    _, responder = run_handshake((YAMUX, MPLEX), ())
    assert responder.remote_muxers == (YAMUX, MPLEX) and responder.muxer is None


@pytest.mark.parametrize(
    ("initiator_muxers", "responder_muxers"), [((), (YAMUX,)), ((YAMUX,), ()), ((), ())]
)
def test_a_side_without_a_list_means_multistream_on_both_sides(
    initiator_muxers: tuple[str, ...], responder_muxers: tuple[str, ...]
) -> None:
    initiator, responder = run_handshake(initiator_muxers, responder_muxers)
    assert initiator.muxer is None and responder.muxer is None


def test_two_lists_with_nothing_in_common_fail_the_handshake() -> None:
    initiator = NoiseHandshake(Identity.generate(), initiator=True, muxers=(MPLEX,))
    responder = NoiseHandshake(Identity.generate(), initiator=False, muxers=(YAMUX,))
    message2 = responder.receive_data(initiator.start())
    with pytest.raises(HandshakeError, match="no stream muxer in common"):
        initiator.receive_data(message2)
    with pytest.raises(HandshakeError, match="no stream muxer in common"):
        choose_muxer((MPLEX,), (YAMUX,))  # what the responder decides on message 3


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_nodes_choose_the_muxer_in_the_handshake(muxer: str) -> None:
    server = await start_node(muxers=("yamux", "mplex"))
    client = await start_node(muxers=(muxer,))
    try:
        conn = await client.dial(addr_of(server))
        assert conn.muxer_in_handshake and conn.muxer_protocol.startswith(f"/{muxer}/")
        assert len(await client.ping(server.peer_id, count=2)) == 2
        inbound = await inbound_connection(server, client.peer_id)
        assert inbound.muxer_in_handshake and inbound.muxer_protocol == conn.muxer_protocol
    finally:
        await client.stop()
        await server.stop()


@pytest.mark.parametrize("inline_on", ["client", "server"])
async def test_a_peer_without_inlining_falls_back_to_multistream(inline_on: str) -> None:
    server = await start_node(inline_muxer_negotiation=inline_on == "server")
    client = await start_node(inline_muxer_negotiation=inline_on == "client")
    try:
        conn = await client.dial(addr_of(server))
        assert not conn.muxer_in_handshake
        assert conn.muxer_protocol == YAMUX
        assert len(await client.ping(server.peer_id, count=2)) == 2
        inbound = await inbound_connection(server, client.peer_id)
        assert not inbound.muxer_in_handshake
    finally:
        await client.stop()
        await server.stop()


async def test_no_common_muxer_fails_the_dial_and_the_listener_keeps_serving() -> None:
    server = await start_node(muxers=("yamux",))
    mplex_only = await start_node(muxers=("mplex",))
    other = await start_node()
    try:
        with pytest.raises(P2PError, match="no stream muxer in common"):
            await mplex_only.dial(addr_of(server))
        conn = await asyncio.wait_for(other.dial(addr_of(server)), 10)
        assert conn.muxer_in_handshake
    finally:
        for node in (mplex_only, other, server):
            await node.stop()


async def test_streams_opened_right_after_the_handshake_reach_the_listener() -> None:
    # the dialer may write its first stream in the same flight as message 3
    server = await start_node()
    clients: list[Node] = [await start_node() for _ in range(3)]
    try:
        results = await asyncio.gather(*(c.ping(addr_of(server), count=1) for c in clients))
        assert all(len(r) == 1 for r in results)
    finally:
        for node in (*clients, server):
            await node.stop()
