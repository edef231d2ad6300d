"""mplex, driven with bytes only."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import ConnectionClosedError, DecodeError, P2PError, StreamClosedError
from p2pnode.wire.mplex import MplexConfig, MplexSession
from p2pnode.wire.muxer import (
    MuxerSession,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
)


def pair(config: MplexConfig | None = None) -> tuple[MplexSession, MplexSession]:
    return MplexSession(is_initiator=True, config=config), MplexSession(
        is_initiator=False, config=config
    )


def shuttle(src: MplexSession, dst: MplexSession) -> list:
    return dst.receive_data(src.data_to_send())


def test_satisfies_the_muxer_interface() -> None:
    session: MuxerSession = MplexSession(is_initiator=True)
    assert session.protocol_id == "/mplex/6.7.0"
    assert session.ping() is None


def test_frame_bytes_follow_the_spec() -> None:
    a, _ = pair()
    key = a.open_stream()
    # NewStream: header (0 << 3 | 0) = 0, length 1, name "0".
    assert a.data_to_send() == b"\x00\x01" + b"0"
    a.send(key, b"hi")
    assert a.data_to_send() == b"\x02\x02hi"  # MessageInitiator (2) on stream 0
    a.close_stream(key)
    assert a.data_to_send() == b"\x04\x00"  # CloseInitiator
    b = MplexSession(is_initiator=False)
    b.receive_data(b"\x08\x01" + b"1")  # peer's stream 1 (1 << 3 | NewStream)
    b.send(3, b"x")  # key for the peer's stream 1
    assert b.data_to_send() == b"\x09\x01x"  # MessageReceiver (1) on stream 1
    b.reset_stream(3)
    assert b.data_to_send() == b"\x0d\x00"  # ResetReceiver (5)


def test_streams_open_and_carry_data_both_ways() -> None:
    a, b = pair()
    key = a.open_stream()
    a.send(key, b"hello")
    events = shuttle(a, b)
    assert events == [StreamOpened(1), StreamData(1, b"hello")]
    b.send(1, b"world")
    assert shuttle(b, a) == [StreamData(key, b"world")]


def test_same_number_from_both_sides_is_two_streams() -> None:
    a, b = pair()
    ka, kb = a.open_stream(), b.open_stream()
    assert ka == kb == 0
    a.send(ka, b"from a")
    b.send(kb, b"from b")
    events_at_b = shuttle(a, b)
    events_at_a = shuttle(b, a)
    assert StreamData(1, b"from a") in events_at_b
    assert StreamData(1, b"from b") in events_at_a
    a.send(1, b"reply to b's stream")
    assert shuttle(a, b) == [StreamData(0, b"reply to b's stream")]


def test_half_close_and_reset() -> None:
    a, b = pair()
    key = a.open_stream()
    shuttle(a, b)
    a.close_stream(key)
    assert shuttle(a, b) == [StreamEnded(1)]
    with pytest.raises(StreamClosedError):
        a.send(key, b"late")
    b.send(1, b"still open this way")
    assert shuttle(b, a) == [StreamData(key, b"still open this way")]
    b.close_stream(1)
    assert shuttle(b, a) == [StreamEnded(key)]
    assert a.stream_count == 0 and b.stream_count == 0
    key2 = a.open_stream()
    shuttle(a, b)
    b.reset_stream(3)
    assert shuttle(b, a) == [StreamReset(key2, "reset by the peer")]


def test_buffer_limit_resets_only_that_stream() -> None:
    a, b = pair(MplexConfig(max_stream_buffer=1000))
    greedy, fine = a.open_stream(), a.open_stream()
    shuttle(a, b)
    a.send(greedy, b"x" * 1001)
    a.send(fine, b"y" * 10)
    events = shuttle(a, b)
    assert StreamReset(1, "receive buffer over 1000 bytes") in events
    assert StreamData(3, b"y" * 10) in events
    assert shuttle(b, a) == [StreamReset(greedy, "reset by the peer")]
    assert b.consumed(3, 10) is False  # no flow control: nothing to tell the peer
    a.send(fine, b"z" * 900)
    assert shuttle(a, b) == [StreamData(3, b"z" * 900)]


def test_consuming_makes_room() -> None:
    a, b = pair(MplexConfig(max_stream_buffer=100))
    key = a.open_stream()
    shuttle(a, b)
    for _ in range(5):
        a.send(key, b"x" * 80)
        assert shuttle(a, b) == [StreamData(1, b"x" * 80)]
        b.consumed(1, 80)


def test_inbound_stream_limit_resets_the_excess() -> None:
    a, b = pair(MplexConfig(max_inbound_streams=2))
    keys = [a.open_stream() for _ in range(3)]
    events = shuttle(a, b)
    assert [e for e in events if isinstance(e, StreamOpened)] == [StreamOpened(1), StreamOpened(3)]
    # the receiver names the stream by its own key for a remote stream: number * 2 + 1
    assert [e for e in events if isinstance(e, StreamRefused)] == [StreamRefused(keys[2] + 1, 2)]
    assert shuttle(b, a) == [StreamReset(keys[2], "reset by the peer")]


def test_refusals_in_a_row_are_one_event() -> None:
    a, b = pair(MplexConfig(max_inbound_streams=1))
    keys = [a.open_stream() for _ in range(4)]
    refused = [e for e in shuttle(a, b) if isinstance(e, StreamRefused)]
    assert refused == [StreamRefused(keys[1] + 1, 1, count=3)]
    assert shuttle(b, a) == [StreamReset(k, "reset by the peer") for k in keys[1:]]


def test_oversized_frame_is_refused_before_its_payload_arrives() -> None:
    _, b = pair(MplexConfig(max_message_size=1024))
    with pytest.raises(DecodeError, match="exceeds"):
        b.receive_data(b"\x02\x81\x08")  # claims 1025 bytes, none sent
    with pytest.raises(DecodeError):
        b.receive_data(b"")  # the session stays dead


def test_unknown_flag_is_a_protocol_error() -> None:
    with pytest.raises(DecodeError, match="unknown mplex flag"):
        MplexSession(is_initiator=False).receive_data(b"\x07\x00")


def test_frames_for_unknown_streams_are_ignored() -> None:
    b = MplexSession(is_initiator=False)
    assert b.receive_data(b"\x0a\x02hi\x0c\x00\x0e\x00") == []


def test_data_after_close_resets_that_stream_only() -> None:
    a, b = pair()
    key = a.open_stream()
    a.close_stream(key)
    shuttle(a, b)
    events = b.receive_data(b"\x02\x01x")
    assert events == [StreamReset(1, "peer sent data after closing the stream")]


def test_go_away_refuses_new_streams() -> None:
    a, b = pair()
    b.go_away()
    a.open_stream()
    assert shuttle(a, b) == []
    with pytest.raises(ConnectionClosedError):
        b.open_stream()


def test_large_writes_are_chunked() -> None:
    a, b = pair(MplexConfig(max_outbound_message=1000))
    key = a.open_stream()
    a.send(key, b"q" * 2500)
    data = [e for e in shuttle(a, b) if isinstance(e, StreamData)]
    assert [len(e.data) for e in data] == [1000, 1000, 500]


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_events_or_our_error(data: bytes) -> None:
    with contextlib.suppress(P2PError):
        MplexSession(is_initiator=False).receive_data(data)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=3000)), max_size=30),
    st.integers(1, 97),
)
def test_interleaved_streams_deliver_exactly_what_was_sent(
    writes: list[tuple[int, bytes]], step: int
) -> None:
    a, b = pair()
    keys = [a.open_stream() for _ in range(4)]
    for index, payload in writes:
        a.send(keys[index], payload)
    wire = a.data_to_send()
    received: dict[int, bytearray] = {}
    for i in range(0, len(wire), step):
        for event in b.receive_data(wire[i : i + step]):
            if isinstance(event, StreamData):
                received.setdefault(event.stream_id, bytearray()).extend(event.data)
                b.consumed(event.stream_id, len(event.data))
    for index, key in enumerate(keys):
        expected = b"".join(p for i, p in writes if i == index)
        assert bytes(received.get(key + 1, b"")) == expected


def test_has_data_to_send_tracks_the_queue() -> None:
    a, b = pair()
    assert not a.has_data_to_send
    stream = a.open_stream()  # NewStream frame queued
    assert a.has_data_to_send
    shuttle(a, b)
    assert not a.has_data_to_send
    b.consumed(stream, 0)
    assert not b.has_data_to_send  # consuming never queues anything: no flow control


def test_streams_the_peer_closed_or_reset_free_their_inbound_slot() -> None:
    a, b = pair(MplexConfig(max_inbound_streams=2))
    for round_ in range(4):  # 8 streams in all, never more than 2 open at once
        closed, reset = a.open_stream(), a.open_stream()
        events = shuttle(a, b)
        assert not [e for e in events if isinstance(e, StreamRefused)], round_
        b.close_stream(closed + 1)
        a.close_stream(closed)  # the peer closes last
        a.reset_stream(reset)
        shuttle(b, a)
        shuttle(a, b)
    assert b.stream_count == 0


class Pool:
    """A CreditPool with a fixed limit, as net.limits.MemoryBudget is."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def force(self, size: int) -> None:
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size
        assert self.used >= 0

    def room(self) -> int:
        return max(0, self.limit - self.used)


def test_unread_data_of_two_sessions_shares_one_peer_pool() -> None:
    pool = Pool(1000)
    a1, a2 = MplexSession(is_initiator=True), MplexSession(is_initiator=True)
    b1 = MplexSession(is_initiator=False, credit=pool)
    b2 = MplexSession(is_initiator=False, credit=pool)
    s1, s2 = a1.open_stream(), a2.open_stream()
    a1.send(s1, b"x" * 700)
    assert StreamData(1, b"x" * 700) in shuttle(a1, b1)
    a2.send(s2, b"y" * 400)  # fits the stream's buffer, not what is left of the peer's pool
    assert StreamReset(1, "the peer's receive memory (all its connections) is full") in shuttle(
        a2, b2
    )
    assert pool.used == 700
    b1.consumed(1, 300)
    assert pool.used == 400
    b1.release_credit()  # the connection is gone
    assert pool.used == 0
