"""Length-prefixed messages and the identify message codec."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, P2PError
from p2pnode.protocols.identify import IdentifyInfo, decode_identify, encode_identify
from p2pnode.wire.framing import FrameDecoder, MessageTooLargeError, encode_frame
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr


def test_frames_split_anywhere() -> None:
    wire = encode_frame(b"a" * 300) + encode_frame(b"") + encode_frame(b"xyz")
    decoder = FrameDecoder(1000)
    messages = [m for i in range(len(wire)) for m in decoder.receive_data(wire[i : i + 1])]
    assert messages == [b"a" * 300, b"", b"xyz"]
    assert not decoder.in_message


def test_oversized_length_is_refused_at_the_prefix() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(MessageTooLargeError) as info:
        decoder.receive_data(b"\x81\x08")  # 1025, with no body yet
    assert info.value.size == 1025 and info.value.limit == 1024


def test_bad_prefix_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        FrameDecoder(10).receive_data(b"\xff" * 10)


def test_a_non_minimal_two_byte_prefix_is_refused_in_one_read() -> None:
    with pytest.raises(DecodeError):
        FrameDecoder(1000).receive_data(b"\x85\x00" + b"x" * 5)  # 5, with a zero high byte


@given(st.lists(st.binary(max_size=20000), max_size=4))
def test_two_byte_prefixes_in_one_read(messages: list[bytes]) -> None:
    wire = b"".join(encode_frame(m) for m in messages)
    assert FrameDecoder(20000).receive_data(wire) == messages


@given(st.lists(st.binary(max_size=200), max_size=10), st.integers(1, 50))
def test_round_trip(messages: list[bytes], step: int) -> None:
    wire = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder(200)
    got = [m for i in range(0, len(wire), step) for m in decoder.receive_data(wire[i : i + step])]
    assert got == messages


@given(st.binary(max_size=100))
def test_any_bytes_give_messages_or_our_error(data: bytes) -> None:
    with contextlib.suppress(P2PError):
        FrameDecoder(50).receive_data(data)


def test_identify_round_trip_and_unparsable_addresses_are_skipped() -> None:
    identity = Identity.generate()
    info = IdentifyInfo(
        public_key=identity.public_key,
        listen_addrs=[Multiaddr.from_string("/ip4/1.2.3.4/tcp/5")],
        observed_addr=Multiaddr.from_string("/ip4/5.6.7.8/tcp/9"),
        protocols=["/ipfs/ping/1.0.0", "/x"],
        protocol_version="ipfs/0.1.0",
        agent_version="p2pnode/test",
    )
    encoded = encode_identify(info)
    decoded = decode_identify(encoded + b"\x12\x03\xff\xff\xff" + b"\x40\x01")  # junk addr, field 8
    assert decoded == info
    assert decoded.peer_id == identity.peer_id


@given(st.binary(max_size=300))
def test_any_bytes_give_identify_info_or_our_error(data: bytes) -> None:
    with contextlib.suppress(P2PError):
        decode_identify(data)
