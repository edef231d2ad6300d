"""Identify messages: round trip, and hostile shapes give our DecodeError, never a crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import P2PError
from p2pnode.protocols.identify import IdentifyInfo, decode_identify, encode_identify
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import encode_bytes_field
from p2pnode.wire.varint import encode_uvarint


def sample() -> IdentifyInfo:
    return IdentifyInfo(
        public_key=Identity.generate().public_key,
        listen_addrs=[Multiaddr.from_string("/ip4/127.0.0.1/tcp/4001")],
        observed_addr=Multiaddr.from_string("/ip4/10.0.0.1/tcp/5555"),
        protocols=["/ipfs/ping/1.0.0", "/ipfs/id/1.0.0"],
        protocol_version="ipfs/0.1.0",
        agent_version="test/1",
    )


def test_round_trip() -> None:
    info = sample()
    decoded = decode_identify(encode_identify(info))
    assert decoded.peer_id == info.peer_id
    assert decoded.listen_addrs == info.listen_addrs
    assert decoded.observed_addr == info.observed_addr
    assert decoded.protocols == info.protocols
    assert decoded.agent_version == "test/1"


@pytest.mark.parametrize(
    "message",
    [
        encode_bytes_field(6, b"\xff\xfe agent"),  # agentVersion not UTF-8
        encode_bytes_field(3, b"\xc3"),  # a protocol cut inside a UTF-8 sequence
        encode_bytes_field(1, b"\x08\x01\x12\x05short"),  # an Ed25519 key of 5 bytes
        encode_bytes_field(1, b"\xff" * 40),  # a key that is not a protobuf
        b"\x0a" + encode_uvarint(1 << 40) + b"x",  # a length far beyond the message
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # a varint of 11 bytes
        b"\x32",  # a field tag with no value
        b"\x07",  # wire type 7 does not exist
    ],
)
def test_hostile_messages_are_our_error(message: bytes) -> None:
    with pytest.raises(P2PError):
        decode_identify(message)


def test_unparseable_addresses_and_unknown_fields_are_skipped() -> None:
    message = (
        encode_bytes_field(2, b"\xff\xff\xff")
        + encode_bytes_field(2, Multiaddr.from_string("/ip4/1.2.3.4/tcp/1").to_bytes())
        + encode_bytes_field(99, b"from a newer peer")
        + b"\x28\x05"  # field 5 as a varint: the wrong wire type, ignored
    )
    info = decode_identify(message)
    assert info.listen_addrs == [Multiaddr.from_string("/ip4/1.2.3.4/tcp/1")]
    assert info.protocol_version == ""


def test_thousands_of_protocols_within_the_size_limit_decode() -> None:
    message = b"".join(encode_bytes_field(3, f"/p/{i}") for i in range(5000))
    assert len(decode_identify(message).protocols) == 5000


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_our_error(data: bytes) -> None:
    with contextlib.suppress(P2PError):
        decode_identify(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 8), st.binary(max_size=64)), max_size=20))
def test_any_fields_decode_or_raise_our_error(fields: list[tuple[int, bytes]]) -> None:
    message = b"".join(encode_bytes_field(number, value) for number, value in fields)
    with contextlib.suppress(P2PError):
        decode_identify(message)
