"""Signed envelopes (RFC 0002): seal, open, and every way an envelope can be wrong."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, RecordError
from p2pnode.wire.envelope import MAX_ENVELOPE_SIZE, Envelope
from p2pnode.wire.identity import Identity
from p2pnode.wire.protobuf import encode_bytes_field

DOMAIN = "p2pnode-test"
TYPE = b"\x03\x02"


def test_seal_then_open_gives_back_payload_and_signer() -> None:
    me = Identity.generate()
    sealed = Envelope.seal(me, DOMAIN, TYPE, b"hello")
    opened = Envelope.open(sealed.to_bytes(), DOMAIN, TYPE)
    assert opened.payload == b"hello"
    assert opened.payload_type == TYPE
    assert opened.signer == me.peer_id


def test_another_domain_does_not_verify() -> None:
    data = Envelope.seal(Identity.generate(), DOMAIN, TYPE, b"x").to_bytes()
    with pytest.raises(RecordError, match="does not verify"):
        Envelope.open(data, "libp2p-relay-rsvp", TYPE)


def test_altered_payload_does_not_verify() -> None:
    env = Envelope.seal(Identity.generate(), DOMAIN, TYPE, b"pay me 1")
    forged = Envelope(env.public_key, env.payload_type, b"pay me 9", env.signature)
    with pytest.raises(RecordError):
        Envelope.open(forged.to_bytes(), DOMAIN, TYPE)


def test_another_key_does_not_verify() -> None:
    env = Envelope.seal(Identity.generate(), DOMAIN, TYPE, b"x")
    other = Identity.generate().public_key
    swapped = Envelope(other, env.payload_type, env.payload, env.signature)
    with pytest.raises(RecordError):
        Envelope.open(swapped.to_bytes(), DOMAIN, TYPE)


def test_unexpected_payload_type_is_refused() -> None:
    data = Envelope.seal(Identity.generate(), DOMAIN, b"\x03\x01", b"x").to_bytes()
    with pytest.raises(RecordError, match="payload type 0301"):
        Envelope.open(data, DOMAIN, TYPE)


def test_missing_fields_and_oversize_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="public_key"):
        Envelope.open(encode_bytes_field(3, b"x"), DOMAIN)
    with pytest.raises(DecodeError, match="signer key"):
        bad_key = encode_bytes_field(1, b"\x08\x01\x12\x01x")
        Envelope.open(bad_key + encode_bytes_field(5, b"s"), DOMAIN)
    with pytest.raises(DecodeError, match="exceeds"):
        Envelope.open(b"\x00" * (MAX_ENVELOPE_SIZE + 1), DOMAIN)


@given(st.binary(max_size=300))
def test_any_bytes_give_an_envelope_or_our_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError, RecordError):
        Envelope.open(data, DOMAIN)
