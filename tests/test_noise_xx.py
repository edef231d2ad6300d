"""Our Noise XX against an independent implementation (noiseprotocol), and bad input."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from p2pnode.errors import HandshakeError
from p2pnode.wire.noise_xx import PROTOCOL_NAME, XXHandshake


def static_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def reference(static: bytes, *, initiator: bool) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.start_handshake()
    return conn


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


@pytest.mark.parametrize("we_initiate", [True, False])
def test_handshake_and_transport_keys_match_the_reference(we_initiate: bool) -> None:
    ours_static, theirs_static = static_key(), static_key()
    ours = XXHandshake(ours_static, initiator=we_initiate)
    theirs = reference(theirs_static, initiator=not we_initiate)
    payloads = [b"", b"responder payload", b"initiator payload"]
    for step, payload in enumerate(payloads):
        if (step % 2 == 0) == we_initiate:
            assert theirs.read_message(ours.write_message(payload)) == payload
        else:
            assert ours.read_message(theirs.write_message(payload)) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.remote_static == public_of(theirs_static)
    send, receive = ours.split()
    protocol = theirs.noise_protocol
    assert send == protocol.cipher_state_decrypt.k
    assert receive == protocol.cipher_state_encrypt.k
    assert ours.handshake_hash == protocol.handshake_hash


def run(initiator: XXHandshake, responder: XXHandshake) -> tuple[bytes, bytes, bytes]:
    message1 = initiator.write_message(b"")
    responder.read_message(message1)
    message2 = responder.write_message(b"two")
    initiator.read_message(message2)
    message3 = initiator.write_message(b"three")
    return message1, message2, message3


def test_tampering_with_any_byte_of_message_2_or_3_fails_authentication() -> None:
    for index in (0, 40, 90):  # the ephemeral key, the sealed static key, the payload
        initiator = XXHandshake(static_key(), initiator=True)
        responder = XXHandshake(static_key(), initiator=False)
        responder.read_message(initiator.write_message(b""))
        message2 = bytearray(responder.write_message(b"two"))
        message2[index] ^= 1
        with pytest.raises(HandshakeError):
            initiator.read_message(bytes(message2))
    initiator = XXHandshake(static_key(), initiator=True)
    responder = XXHandshake(static_key(), initiator=False)
    *_, message3 = run(initiator, responder)
    with pytest.raises(HandshakeError, match="message 3 failed authentication"):
        responder.read_message(message3[:-1] + bytes([message3[-1] ^ 1]))


def test_messages_out_of_turn_and_short_messages_are_refused() -> None:
    initiator = XXHandshake(static_key(), initiator=True)
    with pytest.raises(HandshakeError, match="turn"):
        initiator.read_message(bytes(96))
    responder = XXHandshake(static_key(), initiator=False)
    with pytest.raises(HandshakeError, match="turn"):
        responder.write_message(b"")
    with pytest.raises(HandshakeError, match="too short"):
        responder.read_message(bytes(31))
    with pytest.raises(HandshakeError, match="not complete"):
        responder.split()


def test_a_low_order_ephemeral_key_is_refused() -> None:
    initiator = XXHandshake(static_key(), initiator=True)
    responder = XXHandshake(static_key(), initiator=False)
    initiator.write_message(b"")
    responder.read_message(bytes(32))  # the all-zero point: every DH with it is zero
    with pytest.raises(HandshakeError, match="low-order"):
        responder.write_message(b"")


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_bytes_as_messages_give_a_payload_or_our_error(first: bytes, second: bytes) -> None:
    initiator = XXHandshake(static_key(), initiator=True)
    responder = XXHandshake(static_key(), initiator=False)
    try:
        responder.read_message(first)
        initiator.write_message(b"")
        initiator.read_message(second)
    except HandshakeError:
        return
