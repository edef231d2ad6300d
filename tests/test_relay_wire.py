"""Circuit relay v2 without sockets: the codec (fuzzed), vouchers, the relay's book."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, RecordError
from p2pnode.wire.envelope import Envelope
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.protobuf import encode_bytes_field, encode_varint_field
from p2pnode.wire.relay import (
    MAX_MESSAGE_SIZE,
    VOUCHER_DOMAIN,
    VOUCHER_PAYLOAD_TYPE,
    HopMessage,
    HopType,
    Limit,
    RelayBook,
    RelayLimits,
    RelayPeer,
    Reservation,
    Status,
    StopMessage,
    StopType,
    Voucher,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)

ALICE, RELAY = Identity.generate(), Identity.generate()
ADDR = Multiaddr.from_string(f"/ip4/192.0.2.1/tcp/4001/p2p/{RELAY.peer_id}")


def test_a_hop_message_has_the_specs_field_numbers() -> None:
    message = HopMessage(
        HopType.STATUS,
        peer=RelayPeer(ALICE.peer_id, (ADDR,)),
        reservation=Reservation(1700000000, (ADDR,), b"v"),
        limit=Limit(120, 131072),
        status=Status.OK,
    )
    raw = encode_hop(message)
    peer = encode_bytes_field(1, ALICE.peer_id.to_bytes()) + encode_bytes_field(2, ADDR.to_bytes())
    reservation = (
        encode_varint_field(1, 1700000000)
        + encode_bytes_field(2, ADDR.to_bytes())
        + encode_bytes_field(3, b"v")
    )
    limit = encode_varint_field(1, 120) + encode_varint_field(2, 131072)
    assert raw == (
        encode_varint_field(1, 2)
        + encode_bytes_field(2, peer)
        + encode_bytes_field(3, reservation)
        + encode_bytes_field(4, limit)
        + encode_varint_field(5, 100)
    )
    assert decode_hop(raw) == message


def test_a_stop_message_round_trips_and_unknown_fields_are_skipped() -> None:
    message = StopMessage(StopType.CONNECT, peer=RelayPeer(ALICE.peer_id), limit=Limit(data=1))
    raw = encode_stop(message) + encode_bytes_field(15, b"from a newer peer")
    assert decode_stop(raw) == message


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "no type"),
        (encode_varint_field(1, 9), "unknown type"),
        (encode_varint_field(1, 2) + encode_varint_field(5, 999), "unknown status"),
        (encode_bytes_field(1, b"x"), "wire type"),
        (encode_varint_field(1, 1) + encode_bytes_field(2, b""), "no id"),
        (encode_varint_field(1, 1) + encode_bytes_field(2, encode_bytes_field(1, b"junk")), "id"),
        (encode_varint_field(1, 2) + encode_bytes_field(3, b""), "expiry"),
        (b"\x08" + b"\x00" * (MAX_MESSAGE_SIZE + 1), "exceeds"),
    ],
)
def test_malformed_hop_messages_are_decode_errors(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_hop(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_gives_a_message_or_a_decode_error_only(raw: bytes) -> None:
    for decode in (decode_hop, decode_stop):
        with contextlib.suppress(DecodeError):
            decode(raw)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**40), st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_hop_messages_round_trip(expire: int, data: int, voucher: bytes) -> None:
    message = HopMessage(
        HopType.STATUS,
        reservation=Reservation(expire, (ADDR,), voucher),
        limit=Limit(data % 7200, data),
        status=Status.OK,
    )
    raw = encode_hop(message)
    assert decode_hop(raw) == message
    for cut in range(len(raw)):
        # a truncated message is an error or (cut at a field boundary) a shorter one
        with contextlib.suppress(DecodeError):
            assert decode_hop(raw[:cut]) != message


def test_a_voucher_opens_only_with_the_relays_signature() -> None:
    voucher = Voucher(RELAY.peer_id, ALICE.peer_id, 1700000000)
    assert Voucher.open(voucher.seal(RELAY)) == voucher
    with pytest.raises(RecordError, match="signed by"):
        Voucher.open(voucher.seal(ALICE))  # a voucher for RELAY signed by someone else
    sealed = bytearray(voucher.seal(RELAY))
    sealed[-1] ^= 1
    with pytest.raises(RecordError, match="does not verify"):
        Voucher.open(bytes(sealed))
    other_domain = Envelope.seal(RELAY, "libp2p-routing-state", VOUCHER_PAYLOAD_TYPE, b"")
    with pytest.raises(RecordError):
        Voucher.open(other_domain.to_bytes())
    assert VOUCHER_DOMAIN == "libp2p-relay-rsvp"


def test_the_book_expires_renews_and_limits_per_ip() -> None:
    book = RelayBook(RelayLimits(reservation_ttl=10, max_reservations_per_ip=2))
    peers = [Identity.generate().peer_id for _ in range(3)]
    assert book.reserve(peers[0], "198.51.100.1", now=0) == Status.OK
    assert book.reserve(peers[1], "198.51.100.1", now=0) == Status.OK
    assert book.reserve(peers[2], "198.51.100.1", now=0) == Status.RESERVATION_REFUSED
    assert book.reserve(peers[2], "198.51.100.2", now=0) == Status.OK
    assert book.reserve(peers[0], "198.51.100.1", now=5) == Status.OK  # a renewal
    assert set(book.reservations(now=12)) == {peers[0]}
    assert book.open_circuit(peers[1], peers[2], now=12) == Status.NO_RESERVATION


def test_circuits_are_counted_at_both_ends_and_released() -> None:
    book = RelayBook(RelayLimits(max_circuits=1))
    a, b, c = (Identity.generate().peer_id for _ in range(3))
    book.reserve(b, None, now=0)
    assert book.open_circuit(a, b, now=0) == Status.OK
    assert book.open_circuit(c, b, now=0) == Status.RESOURCE_LIMIT_EXCEEDED
    book.close_circuit(a, b)
    assert book.circuits(b) == 0
    assert book.open_circuit(c, b, now=0) == Status.OK


def test_limit_describes_itself() -> None:
    assert Limit(120, 128 * 1024).describe() == "120 s and 128 KiB per direction"
    assert Limit().describe() == "no limit"
