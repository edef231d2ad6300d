"""libp2p Noise, driven with bytes only."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, HandshakeError, P2PError, PeerIdMismatchError
from p2pnode.wire.identity import Identity
from p2pnode.wire.noise import (
    MAX_PLAINTEXT,
    SIGNATURE_PREFIX,
    HandshakePayload,
    NoiseHandshake,
    NoiseStaticKey,
    NoiseTransport,
    decode_payload,
    encode_payload,
)


def handshake(
    step: int | None = None, expected: bool = True
) -> tuple[NoiseHandshake, NoiseHandshake]:
    alice, bob = Identity.generate(), Identity.generate()
    initiator = NoiseHandshake(
        alice, initiator=True, expected_peer=bob.peer_id if expected else None
    )
    responder = NoiseHandshake(bob, initiator=False)

    def feed(side: NoiseHandshake, data: bytes) -> bytes:
        if step is None:
            return side.receive_data(data)
        return b"".join(side.receive_data(data[i : i + step]) for i in range(0, len(data), step))

    message2 = feed(responder, initiator.start())
    message3 = feed(initiator, message2)
    feed(responder, message3)
    return initiator, responder


@pytest.mark.parametrize("step", [None, 1, 7])
def test_handshake_authenticates_both_sides(step: int | None) -> None:
    initiator, responder = handshake(step)
    assert initiator.complete and responder.complete
    a, b = initiator.transport(), responder.transport()
    assert b.receive_data(a.encrypt(b"ping")) == b"ping"
    assert a.receive_data(b.encrypt(b"pong")) == b"pong"


def test_remote_peer_ids_are_the_other_sides_identity() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    i = NoiseHandshake(alice, initiator=True, expected_peer=bob.peer_id)
    r = NoiseHandshake(bob, initiator=False)
    r.receive_data(i.receive_data(r.receive_data(i.start())))
    assert i.remote_peer == bob.peer_id
    assert r.remote_peer == alice.peer_id


def test_wrong_expected_peer_is_refused() -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    i = NoiseHandshake(alice, initiator=True, expected_peer=carol.peer_id)
    r = NoiseHandshake(bob, initiator=False)
    with pytest.raises(PeerIdMismatchError, match=str(carol.peer_id)):
        i.receive_data(r.receive_data(i.start()))


class Forger(Identity):
    def sign(self, data: bytes) -> bytes:
        return Identity.generate().sign(data)


def test_forged_signature_is_refused() -> None:
    forger = Forger.from_private_key_protobuf(Identity.generate().to_private_key_protobuf())
    i = NoiseHandshake(Identity.generate(), initiator=True)
    r = NoiseHandshake(forger, initiator=False)
    with pytest.raises(HandshakeError, match="signature"):
        i.receive_data(r.receive_data(i.start()))


def test_truncated_handshake_waits_without_error() -> None:
    i = NoiseHandshake(Identity.generate(), initiator=True)
    r = NoiseHandshake(Identity.generate(), initiator=False)
    message3 = i.receive_data(r.receive_data(i.start()))
    assert r.receive_data(message3[:-5]) == b""
    assert not r.complete
    with pytest.raises(HandshakeError, match="not complete"):
        r.transport()


def test_tampered_handshake_message_is_refused() -> None:
    i = NoiseHandshake(Identity.generate(), initiator=True)
    r = NoiseHandshake(Identity.generate(), initiator=False)
    message2 = bytearray(r.receive_data(i.start()))
    message2[-1] ^= 1
    with pytest.raises(HandshakeError):
        i.receive_data(bytes(message2))


def test_payload_encoding_and_missing_fields() -> None:
    assert decode_payload(encode_payload(b"key", b"sig")) == HandshakePayload(b"key", b"sig")
    # Unknown extension fields (4) are ignored.
    assert decode_payload(encode_payload(b"k", b"s") + b"\x22\x02\x0a\x00") == HandshakePayload(
        b"k", b"s"
    )
    with pytest.raises(HandshakeError, match="lacks"):
        decode_payload(b"\x0a\x01k")
    assert SIGNATURE_PREFIX == b"noise-libp2p-static-key:"


@pytest.mark.parametrize("size", [0, 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 1 << 20])
def test_transport_splits_and_reassembles(size: int) -> None:
    initiator, responder = handshake()
    a, b = initiator.transport(), responder.transport()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ciphertext = a.encrypt(data)
    frames = 0 if size == 0 else -(-size // MAX_PLAINTEXT)
    assert len(ciphertext) == size + frames * 18
    assert b.receive_data(ciphertext) == data


def test_tampered_ciphertext_is_refused() -> None:
    initiator, responder = handshake()
    ciphertext = bytearray(initiator.transport().encrypt(b"secret"))
    ciphertext[5] ^= 0x80
    with pytest.raises(DecodeError, match="authentication"):
        responder.transport().receive_data(bytes(ciphertext))


def test_frame_shorter_than_tag_is_refused() -> None:
    transport = NoiseTransport(b"k" * 32, b"k" * 32)
    with pytest.raises(DecodeError, match="shorter"):
        transport.receive_data(b"\x00\x03abc")


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.lists(st.integers(1, 5000), max_size=10))
def test_frames_split_anywhere_reassemble(data: bytes, cuts: list[int]) -> None:
    initiator, responder = handshake()
    a, b = initiator.transport(), responder.transport()
    ciphertext = a.encrypt(data) + a.encrypt(b"tail")
    points = sorted({c % (len(ciphertext) + 1) for c in cuts})
    pieces = [
        ciphertext[s:e] for s, e in zip([0, *points], [*points, len(ciphertext)], strict=True)
    ]
    assert b"".join(b.receive_data(p) for p in pieces) == data + b"tail"


@pytest.mark.parametrize("early_call", [True, False], ids=["listener", "no-early-read"])
def test_what_followed_the_handshake_is_kept_whatever_its_cut(early_call: bool) -> None:
    """The bytes read with the last handshake message (the peer's first transport
    messages, pipelined) may hold whole messages and the start of the next: none is lost,
    whether the listener decrypts them at once (``receive_data(b"")``) or not."""
    messages = [bytes([i]) * (50 + 40 * i) for i in range(4)]
    for cut in range(1, 300):
        sender = NoiseTransport(b"a" * 32, b"b" * 32)
        ciphertext = b"".join(sender.encrypt(m) for m in messages)
        # what NoiseHandshake.transport() hands over: the bytes read past message 3
        receiver = NoiseTransport(b"b" * 32, b"a" * 32, ciphertext[:cut])
        received = receiver.receive_data(b"") if early_call else b""
        for start in range(cut, len(ciphertext), 37):
            received += receiver.receive_data(ciphertext[start : start + 37])
        assert received == b"".join(messages), f"cut at {cut}"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_to_a_handshake_give_our_error_or_progress(data: bytes) -> None:
    for side in (
        NoiseHandshake(Identity.generate(), initiator=False),
        NoiseHandshake(Identity.generate(), initiator=True),
    ):
        try:
            side.start()
            side.receive_data(data)
        except P2PError:
            pass


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_any_bytes_to_a_transport_give_our_error_or_nothing(data: bytes) -> None:
    with contextlib.suppress(P2PError):
        NoiseTransport(b"k" * 32, b"k" * 32).receive_data(data)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=70000), min_size=1, max_size=4),
    st.lists(st.integers(1, 300000), max_size=8),
    st.integers(0, 200000),
)
def test_receive_into_a_reused_buffer_matches_receive_data(
    messages: list[bytes], cuts: list[int], scratch_size: int
) -> None:
    """The hot path decrypts into one reused buffer (or a new one when it is too small)."""
    initiator, responder = handshake()
    a = initiator.transport()
    fast = responder.transport()
    ciphertext = b"".join(a.encrypt(m) for m in messages)
    points = sorted({c % (len(ciphertext) + 1) for c in cuts})
    pieces = [
        ciphertext[s:e] for s, e in zip([0, *points], [*points, len(ciphertext)], strict=True)
    ]
    scratch = bytearray(b"\xee" * scratch_size)
    received = bytearray()
    for piece in pieces:
        plaintext = fast.receive_into(piece, scratch)
        if isinstance(plaintext, memoryview):
            assert plaintext.obj is scratch  # decrypted in place, not copied
        received += plaintext
    assert received == b"".join(messages)


def test_a_static_key_is_reused_across_handshakes() -> None:
    """One NoiseStaticKey per node: every handshake sends the same signed key, and each
    still authenticates (the spec allows reuse; rust- and js-libp2p do the same)."""
    alice, bob = Identity.generate(), Identity.generate()
    key = NoiseStaticKey(alice)
    remote_statics = []
    for _ in range(2):
        initiator = NoiseHandshake(key, initiator=True, expected_peer=bob.peer_id)
        responder = NoiseHandshake(bob, initiator=False)
        message_2 = responder.receive_data(initiator.start())
        message_3 = initiator.receive_data(message_2)
        responder.receive_data(message_3)
        assert initiator.complete and responder.complete
        assert responder.remote_peer == alice.peer_id
        remote_statics.append(responder.remote_static_key)
    assert len(remote_statics[0]) == 32 and remote_statics[0] == remote_statics[1]
    assert NoiseStaticKey(alice).private_bytes != key.private_bytes  # a new one per instance
