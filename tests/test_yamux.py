"""Tests of the sans-I/O yamux session (p2pnode.yamux)."""

from __future__ import annotations

import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import (
    ConnectionClosedError,
    DecodeError,
    LocalProtocolError,
    P2PError,
    RemoteProtocolError,
    StreamClosedError,
    TooManyStreamsError,
)
from p2pnode.net.limits import MemoryBudget
from p2pnode.wire.muxer import (
    GoAwayReceived,
    MuxerEvent,
    MuxerSession,
    PongReceived,
    SendWindowOpened,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
)
from p2pnode.wire.yamux import (
    CREDIT_FLOOR,
    INITIAL_WINDOW,
    PROTOCOL_ID,
    Flag,
    FrameType,
    GoAwayCode,
    YamuxConfig,
    YamuxSession,
    encode_header,
)

KIB = 1024
# A config that grants no credit beyond the spec's 256 KiB: frames are easy to predict.
PLAIN = YamuxConfig(max_receive_window=INITIAL_WINDOW)
GOAWAY_PROTOCOL_ERROR = bytes.fromhex("00 03 0000 00000000 00000001")


def h(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text)


def pair(
    client_config: YamuxConfig | None = PLAIN, server_config: YamuxConfig | None = PLAIN
) -> tuple[YamuxSession, YamuxSession]:
    return (
        YamuxSession(is_client=True, config=client_config),
        YamuxSession(is_client=False, config=server_config),
    )


def exchange(
    a: YamuxSession, b: YamuxSession, max_rounds: int = 100
) -> tuple[list[MuxerEvent], list[MuxerEvent]]:
    """Deliver queued bytes both ways until both sides are quiet; return (a's, b's) events."""
    events_a: list[MuxerEvent] = []
    events_b: list[MuxerEvent] = []
    for _ in range(max_rounds):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            return events_a, events_b
        if out_a:
            events_b += b.receive_data(out_a)
        if out_b:
            events_a += a.receive_data(out_b)
    raise AssertionError("sessions kept talking")


def open_pair(
    client_config: YamuxConfig | None = PLAIN, server_config: YamuxConfig | None = PLAIN
) -> tuple[YamuxSession, YamuxSession, int]:
    client, server = pair(client_config, server_config)
    stream_id = client.open_stream()
    exchange(client, server)
    return client, server, stream_id


def received_bytes(events: list[MuxerEvent], stream_id: int) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, StreamData) and e.stream_id == stream_id
    )


# -- API shape ---------------------------------------------------------------------


def test_satisfies_muxer_protocol() -> None:
    session: MuxerSession = YamuxSession(is_client=True)
    assert session.protocol_id == PROTOCOL_ID == "/yamux/1.0.0"


def test_enum_values_match_spec() -> None:
    assert [t.value for t in FrameType] == [0, 1, 2, 3]
    assert [f.value for f in Flag] == [1, 2, 4, 8]
    assert [c.value for c in GoAwayCode] == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_receive_window": 1000},  # below the initial window
        {"max_receive_window": 2**32},
        {"initial_window": 0},
        {"max_frame_payload": 0},
        {"max_frame_payload": 2 * 1024 * 1024},
        {"max_inbound_streams": -1},
        {"max_ack_backlog": 0},
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(LocalProtocolError):
        YamuxConfig(**kwargs)


# -- byte fixtures, computed by hand from the spec's header layout -----------------


def test_encode_header_layout() -> None:
    assert encode_header(FrameType.DATA, Flag.SYN | Flag.FIN, 0x01020304, 0x0A0B0C0D) == h(
        "00 00 0005 01020304 0a0b0c0d"
    )


def test_open_stream_sends_window_update_syn() -> None:
    client = YamuxSession(is_client=True, config=PLAIN)
    assert client.open_stream() == 1
    assert client.data_to_send() == h("00 01 0001 00000001 00000000")


def test_open_stream_grants_extra_credit_by_default() -> None:
    client = YamuxSession(is_client=True)
    client.open_stream()
    # 16 MiB - 256 KiB = 0x01000000 - 0x00040000 = 0x00fc0000
    assert client.data_to_send() == h("00 01 0001 00000001 00fc0000")


def test_inbound_syn_is_acked() -> None:
    server = YamuxSession(is_client=False)
    events = server.receive_data(h("00 01 0001 00000001 00000000"))
    assert events == [StreamOpened(1)]
    assert server.data_to_send() == h("00 01 0002 00000001 00fc0000")


def test_data_frame_bytes() -> None:
    client, _, stream_id = open_pair()
    assert client.send(stream_id, b"hi") == 2
    assert client.data_to_send() == h("00 00 0000 00000001 00000002 6869")


def test_fin_and_rst_bytes() -> None:
    client, _, stream_id = open_pair()
    client.close_stream(stream_id)
    assert client.data_to_send() == h("00 01 0004 00000001 00000000")
    other = client.open_stream()
    client.data_to_send()
    client.reset_stream(other)
    assert client.data_to_send() == h("00 01 0008 00000003 00000000")


def test_ping_bytes_and_automatic_pong() -> None:
    client = YamuxSession(is_client=True)
    assert client.ping() == 1
    assert client.ping() == 2
    assert client.data_to_send() == h("00 02 0001 00000000 00000001 00 02 0001 00000000 00000002")
    server = YamuxSession(is_client=False)
    assert server.receive_data(h("00 02 0001 00000000 deadbeef")) == []
    assert server.data_to_send() == h("00 02 0002 00000000 deadbeef")
    assert client.receive_data(h("00 02 0002 00000000 deadbeef")) == [PongReceived(0xDEADBEEF)]


def test_go_away_bytes() -> None:
    session = YamuxSession(is_client=True)
    session.go_away(GoAwayCode.INTERNAL_ERROR)
    session.go_away(0)  # idempotent: only the first one is sent
    assert session.data_to_send() == h("00 03 0000 00000000 00000002")


def test_window_update_bytes_after_consumption() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, bytes(128 * KIB))
    server.receive_data(client.data_to_send())
    # consumed() says whether it queued anything, so the connection flushes only then
    assert server.consumed(stream_id, 128 * KIB - 1) is False
    assert not server.has_data_to_send
    assert server.data_to_send() == b""  # below half the window: no update yet
    assert server.consumed(stream_id, 1) is True
    assert server.has_data_to_send
    assert server.data_to_send() == h("00 01 0000 00000001 00020000")
    assert not server.has_data_to_send


# -- streams -------------------------------------------------------------------------


def test_stream_id_parity() -> None:
    client, server = pair()
    assert [client.open_stream() for _ in range(3)] == [1, 3, 5]
    assert [server.open_stream() for _ in range(2)] == [2, 4]


def test_handshake_both_directions() -> None:
    client, server = pair(client_config=None, server_config=None)
    client_stream = client.open_stream()
    server_stream = server.open_stream()
    client_events, server_events = exchange(client, server)
    assert server_events[0] == StreamOpened(client_stream)
    assert client_events[0] == StreamOpened(server_stream)
    # The ACKs grant the extra credit: each side may now send the full 16 MiB.
    assert SendWindowOpened(client_stream) in client_events
    assert SendWindowOpened(server_stream) in server_events
    assert client.send_window(client_stream) == 16 * 1024 * KIB
    assert server.send_window(client_stream) == 16 * 1024 * KIB


def test_data_both_ways() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, b"request")
    _, server_events = exchange(client, server)
    assert server_events == [StreamData(stream_id, b"request")]
    server.send(stream_id, bytearray(b"response"))
    client_events, _ = exchange(client, server)
    assert client_events == [StreamData(stream_id, b"response")]
    assert type(client_events[0].data) is bytes  # type: ignore[union-attr]


def test_inbound_data_with_syn_and_fin() -> None:
    server = YamuxSession(is_client=False, config=PLAIN)
    frame = h("00 00 0005 00000007 00000003") + b"abc"
    assert server.receive_data(frame) == [
        StreamOpened(7),
        StreamData(7, b"abc"),
        StreamEnded(7),
    ]


def test_send_copies_mutable_buffers() -> None:
    client, server, stream_id = open_pair()
    buffer = bytearray(b"before")
    client.send(stream_id, buffer)
    client.send(stream_id, memoryview(bytearray(b"-view")))
    buffer[:] = b"AFTER!"
    _, server_events = exchange(client, server)
    assert received_bytes(server_events, stream_id) == b"before-view"


def test_send_splits_into_max_frame_payload() -> None:
    config = YamuxConfig(max_receive_window=INITIAL_WINDOW, max_frame_payload=1000)
    client, server, stream_id = open_pair(client_config=config)
    payload = bytes(range(256)) * 10
    assert client.send(stream_id, payload) == 2560
    wire = client.data_to_send()
    assert len(wire) == 2560 + 3 * 12
    assert wire[:12] == h("00 00 0000 00000001 000003e8")
    assert wire[1012:1024] == h("00 00 0000 00000001 000003e8")
    assert wire[2024:2036] == h("00 00 0000 00000001 00000230")
    events = server.receive_data(wire)
    assert [len(e.data) for e in events if isinstance(e, StreamData)] == [1000, 1000, 560]
    assert received_bytes(events, stream_id) == payload


def test_window_exhaustion_and_reopening() -> None:
    client, server, stream_id = open_pair()
    payload = bytes(300 * KIB)
    assert client.send(stream_id, payload) == INITIAL_WINDOW
    assert client.send_window(stream_id) == 0
    assert client.send(stream_id, b"more") == 0
    server_events = server.receive_data(client.data_to_send())
    assert len(received_bytes(server_events, stream_id)) == INITIAL_WINDOW
    server.consumed(stream_id, INITIAL_WINDOW // 2)
    client_events = client.receive_data(server.data_to_send())
    assert client_events == [SendWindowOpened(stream_id)]
    assert client.send_window(stream_id) == INITIAL_WINDOW // 2
    assert client.send(stream_id, payload) == INITIAL_WINDOW // 2


def test_no_window_update_after_peer_fin() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, bytes(200 * KIB))
    client.close_stream(stream_id)
    exchange(client, server)
    server.consumed(stream_id, 200 * KIB)
    assert server.data_to_send() == b""


def test_send_accepts_memoryview_of_wider_items() -> None:
    client, server, stream_id = open_pair()
    words = memoryview(array.array("H", [0x0102, 0x0304]))
    assert client.send(stream_id, words) == 4
    _, server_events = exchange(client, server)
    assert received_bytes(server_events, stream_id) == words.tobytes()
    pong = array.array("H", h("00 02 0002 00000000 00000007"))
    assert client.receive_data(memoryview(pong)) == [PongReceived(7)]


def test_stream_ids_exhausted() -> None:
    server = YamuxSession(is_client=False)
    server._next_id = 2**32
    with pytest.raises(TooManyStreamsError):
        server.open_stream()


def test_consumed_more_than_received_is_local_error() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, b"abc")
    exchange(client, server)
    with pytest.raises(LocalProtocolError):
        server.consumed(stream_id, 4)
    server.consumed(stream_id, 3)
    server.consumed(99, 10)  # unknown stream: ignored


def test_half_close_both_ways() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, b"question")
    client.close_stream(stream_id)
    assert client.send_window(stream_id) == 0
    with pytest.raises(StreamClosedError):
        client.send(stream_id, b"late")
    _, server_events = exchange(client, server)
    assert server_events == [StreamData(stream_id, b"question"), StreamEnded(stream_id)]
    # The server can still answer on its half.
    server.send(stream_id, b"answer")
    server.close_stream(stream_id)
    client_events, _ = exchange(client, server)
    assert client_events == [StreamData(stream_id, b"answer"), StreamEnded(stream_id)]
    assert client.stream_count == 0
    assert server.stream_count == 0
    client.close_stream(stream_id)  # already gone: no-op
    assert client.data_to_send() == b""


def test_data_after_fin_resets_only_that_stream() -> None:
    client, server, stream_id = open_pair()
    other = client.open_stream()
    exchange(client, server)
    server.receive_data(h("00 01 0004 00000001 00000000"))
    events = server.receive_data(h("00 00 0000 00000001 00000001 78"))
    assert events == [StreamReset(stream_id, "peer sent data after FIN")]
    assert server.data_to_send() == h("00 01 0008 00000001 00000000")
    client.send(other, b"still fine")
    _, server_events = exchange(client, server)
    assert StreamData(other, b"still fine") in server_events


def test_reset_by_either_side() -> None:
    client, server, stream_id = open_pair()
    server.send(stream_id, b"in flight")
    in_flight = server.data_to_send()
    client.reset_stream(stream_id)
    assert client.send_window(stream_id) == 0
    with pytest.raises(StreamClosedError):
        client.send(stream_id, b"x")
    _, server_events = exchange(client, server)
    assert server_events == [StreamReset(stream_id, "reset by peer")]
    assert server.stream_count == 0
    # Frames the peer sent before it saw our RST are ignored, not errors.
    assert client.receive_data(in_flight) == []
    client.reset_stream(stream_id)  # unknown now: no-op
    assert client.data_to_send() == b""


def test_max_inbound_streams_resets_the_excess() -> None:
    client, server = pair(
        server_config=YamuxConfig(max_receive_window=INITIAL_WINDOW, max_inbound_streams=2)
    )
    ids = [client.open_stream() for _ in range(3)]
    client_events, server_events = exchange(client, server)
    assert server_events == [
        StreamOpened(ids[0]),
        StreamOpened(ids[1]),
        StreamRefused(ids[2], 2),  # reset, and said so: the node counts the refusal
    ]
    assert client_events == [StreamReset(ids[2], "reset by peer")]
    assert server.stream_count == 2
    # Data the client sent before it saw the RST is dropped quietly.
    assert server.receive_data(h("00 00 0000 00000005 00000001 61")) == []
    # Freeing a slot lets the next stream in.
    client.reset_stream(ids[0])
    exchange(client, server)
    fourth = client.open_stream()
    _, server_events = exchange(client, server)
    assert server_events == [StreamOpened(fourth)]


def test_ack_backlog_limits_unacknowledged_outbound_streams() -> None:
    config = YamuxConfig(max_receive_window=INITIAL_WINDOW, max_ack_backlog=2)
    client, server = pair(client_config=config)
    client.open_stream()
    assert client.can_open_stream
    client.open_stream()
    assert not client.can_open_stream
    with pytest.raises(TooManyStreamsError):
        client.open_stream()
    exchange(client, server)  # the ACKs arrive
    assert client.can_open_stream
    assert client.open_stream() == 5


def test_ping_pong_round_trip() -> None:
    client, server = pair()
    opaque = client.ping()
    client_events, server_events = exchange(client, server)
    assert server_events == []
    assert client_events == [PongReceived(opaque)]


def test_go_away_from_client() -> None:
    client, server = pair()
    late = server.open_stream()  # opened before the server learns of the GoAway
    client.go_away()
    with pytest.raises(ConnectionClosedError):
        client.open_stream()
    server_events = server.receive_data(client.data_to_send())
    assert server_events == [GoAwayReceived(0)]
    assert server.goaway_received == 0
    with pytest.raises(ConnectionClosedError):
        server.open_stream()
    # The client refuses the SYN that crossed its GoAway.
    assert client.receive_data(server.data_to_send()) == []
    assert client.data_to_send() == h("00 01 0008 00000002 00000000")
    assert server.receive_data(h("00 01 0008 00000002 00000000")) == [
        StreamReset(late, "reset by peer")
    ]


def test_go_away_from_server_keeps_existing_streams() -> None:
    client, server, stream_id = open_pair()
    server.go_away(GoAwayCode.NORMAL)
    client_events, _ = exchange(client, server)
    assert client_events == [GoAwayReceived(0)]
    with pytest.raises(ConnectionClosedError):
        client.open_stream()
    client.send(stream_id, b"still open")
    _, server_events = exchange(client, server)
    assert server_events == [StreamData(stream_id, b"still open")]


def test_go_away_code_must_fit_32_bits() -> None:
    with pytest.raises(LocalProtocolError):
        YamuxSession(is_client=True).go_away(2**32)


# -- protocol errors -------------------------------------------------------------


def assert_protocol_error(
    session: YamuxSession, data: bytes, error: type[RemoteProtocolError] = RemoteProtocolError
) -> None:
    with pytest.raises(error):
        session.receive_data(data)
    assert session.data_to_send().endswith(GOAWAY_PROTOCOL_ERROR)
    # The session is dead: later input raises again and nothing opens.
    with pytest.raises(RemoteProtocolError):
        session.receive_data(h("00 02 0001 00000000 00000001"))
    with pytest.raises(ConnectionClosedError):
        session.open_stream()
    assert session.data_to_send() == b""


def test_receive_window_violation() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, bytes(200 * KIB))
    server.receive_data(client.data_to_send())
    # 100 KiB more, with only 56 KiB of the 256 KiB window left.
    with pytest.raises(RemoteProtocolError, match="window"):
        server.receive_data(h("00 00 0000 00000001 00019000") + bytes(100 * KIB))
    assert server.data_to_send() == GOAWAY_PROTOCOL_ERROR
    with pytest.raises(ConnectionClosedError):
        server.send(stream_id, b"x")
    with pytest.raises(ConnectionClosedError):
        server.ping()


def test_receive_window_violation_on_syn_data() -> None:
    server = YamuxSession(is_client=False)
    assert_protocol_error(server, h("00 00 0001 00000001 00040001") + bytes(INITIAL_WINDOW + 1))


def test_oversized_length_fails_from_the_header_alone() -> None:
    server = YamuxSession(is_client=False)
    assert_protocol_error(server, h("00 00 0001 00000001 ffffffff"), DecodeError)


def test_oversized_length_fails_from_a_split_header() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(h("00 00 0001 0000")) == []
    assert_protocol_error(server, h("0001 ffffffff") + bytes(100), DecodeError)


def test_unknown_version_in_a_split_header() -> None:
    client, server, stream_id = open_pair()
    client.send(stream_id, b"abc")
    wire = client.data_to_send() + h("01 00 0000 00000001 00000000")
    assert server.receive_data(wire[:20]) == [StreamData(stream_id, b"abc")]
    with pytest.raises(DecodeError, match="version"):
        server.receive_data(wire[20:])


def test_unknown_version() -> None:
    assert_protocol_error(
        YamuxSession(is_client=False), h("01 02 0001 00000000 00000001"), DecodeError
    )


def test_unknown_type() -> None:
    assert_protocol_error(
        YamuxSession(is_client=False), h("00 04 0000 00000000 00000000"), DecodeError
    )


def test_syn_with_our_parity() -> None:
    assert_protocol_error(YamuxSession(is_client=False), h("00 01 0001 00000002 00000000"))


def test_duplicate_syn() -> None:
    _, server, _ = open_pair()
    assert_protocol_error(server, h("00 01 0001 00000001 00000000"))


def test_stream_frame_on_session_id() -> None:
    assert_protocol_error(YamuxSession(is_client=False), h("00 01 0000 00000000 00000010"))


def test_data_for_stream_never_opened() -> None:
    assert_protocol_error(YamuxSession(is_client=False), h("00 00 0000 00000009 00000001 61"))


def test_window_update_for_our_stream_never_opened() -> None:
    assert_protocol_error(YamuxSession(is_client=True), h("00 01 0002 00000001 00000000"))


def test_bare_rst_for_unknown_stream_is_ignored() -> None:
    server = YamuxSession(is_client=False)
    assert server.receive_data(h("00 01 0008 00000009 00000000")) == []
    assert server.data_to_send() == b""


def test_frames_for_closed_streams_are_ignored() -> None:
    client, server, stream_id = open_pair()
    client.close_stream(stream_id)
    server.close_stream(stream_id)
    exchange(client, server)
    assert server.stream_count == 0
    late = h("00 01 0000 00000001 00001000") + h("00 00 0000 00000001 00000002 6869")
    assert server.receive_data(late) == []


# -- framing -----------------------------------------------------------------------


def scripted_wire() -> tuple[bytes, list[MuxerEvent]]:
    """Bytes a client sends for a small conversation, and the events the server gets."""
    client, server = pair()
    first = client.open_stream()
    client.send(first, b"hello " * 50)
    second = client.open_stream()
    client.send(second, bytes(1000))
    client.ping()
    client.close_stream(first)
    client.go_away()
    wire = client.data_to_send()
    return wire, server.receive_data(wire)


def test_fed_byte_by_byte_gives_the_same_events() -> None:
    wire, expected = scripted_wire()
    server = YamuxSession(is_client=False, config=PLAIN)
    events: list[MuxerEvent] = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i : i + 1])
    assert events == expected
    assert GoAwayReceived(0) == expected[-1]


@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20))
def test_fed_in_arbitrary_chunks_gives_the_same_events(cuts: list[int]) -> None:
    wire, expected = scripted_wire()
    server = YamuxSession(is_client=False, config=PLAIN)
    events: list[MuxerEvent] = []
    previous = 0
    for cut in [*sorted(c % (len(wire) + 1) for c in cuts), len(wire)]:
        events += server.receive_data(memoryview(wire)[previous:cut])
        previous = cut
    assert events == expected


# -- property tests --------------------------------------------------------------------

_FRAME_TYPES = st.sampled_from([0, 1, 2, 3, 4])
_HEADERS = st.builds(
    lambda frame_type, flags, stream_id, length: encode_header(
        frame_type, flags, stream_id, length
    ),
    _FRAME_TYPES,
    st.integers(0, 15),
    st.integers(0, 8),
    st.integers(0, 64),
)
_CHUNKS = st.lists(st.one_of(_HEADERS, st.binary(max_size=40)), max_size=30)


@settings(max_examples=300)
@given(chunks=_CHUNKS, is_client=st.booleans())
def test_arbitrary_bytes_give_events_or_p2p_errors(chunks: list[bytes], is_client: bool) -> None:
    config = YamuxConfig(initial_window=16, max_receive_window=32, max_inbound_streams=2)
    session = YamuxSession(is_client=is_client, config=config)
    for chunk in chunks:
        try:
            events = session.receive_data(chunk)
        except P2PError:
            continue
        assert all(isinstance(e, MuxerEvent) for e in events)
        session.data_to_send()


def _pattern(offset: int, size: int) -> bytes:
    """Deterministic, position-dependent bytes so reordering would be caught."""
    block = bytes(range(251)) * (size // 251 + 2)
    start = offset % 251
    return block[start : start + size]


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "deliver", "consume"]),
        st.booleans(),  # which side acts
        st.integers(0, 1),  # which stream
        st.integers(0, 5000),  # size
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_random_traffic_delivers_exact_bytes_within_windows(
    ops: list[tuple[str, bool, int, int]],
) -> None:
    config = YamuxConfig(initial_window=1024, max_receive_window=4096, max_frame_payload=700)
    client, server = pair(config, config)
    ids = [client.open_stream(), server.open_stream()]
    exchange(client, server)
    sides = {True: client, False: server}
    sent: dict[tuple[bool, int], bytearray] = {}
    backlog: dict[tuple[bool, int], bytearray] = {}
    got: dict[tuple[bool, int], bytearray] = {}
    unread: dict[tuple[bool, int], int] = {}
    for side in (True, False):
        for sid in ids:
            sent[side, sid] = bytearray()
            backlog[side, sid] = bytearray()
            got[side, sid] = bytearray()  # received by `side`
            unread[side, sid] = 0

    def flush(side: bool, sid: int) -> None:
        pending = backlog[side, sid]
        window = sides[side].send_window(sid)
        accepted = sides[side].send(sid, bytes(pending))
        assert accepted == min(window, len(pending))
        del pending[:accepted]

    def deliver(side: bool) -> bool:
        wire = sides[side].data_to_send()
        for event in sides[not side].receive_data(wire):
            if isinstance(event, StreamData):
                got[not side, event.stream_id] += event.data
                unread[not side, event.stream_id] += len(event.data)
            elif isinstance(event, SendWindowOpened):
                flush(not side, event.stream_id)
        return bool(wire)

    def check_windows() -> None:
        for session in (client, server):
            for stream in session._streams.values():
                assert stream.send_window >= 0
                assert stream.recv_window >= 0
                granted = stream.recv_window + stream.unconsumed + stream.pending_credit
                assert granted == config.max_receive_window

    for op, side, index, size in ops:
        sid = ids[index]
        if op == "send":
            data = _pattern(len(sent[side, sid]), size)
            sent[side, sid] += data
            backlog[side, sid] += data
            flush(side, sid)
        elif op == "deliver":
            deliver(side)
        else:
            amount = min(size, unread[side, sid])
            sides[side].consumed(sid, amount)
            unread[side, sid] -= amount
        check_windows()

    for _ in range(1000):  # drain: everything read, every backlog flushed
        moved = [deliver(side) for side in (True, False)]
        for side in (True, False):
            for sid in ids:
                sides[side].consumed(sid, unread[side, sid])
                unread[side, sid] = 0
                flush(side, sid)
        check_windows()
        if not any(moved) and not any(backlog.values()):
            break
    for side in (True, False):
        for sid in ids:
            assert got[not side, sid] == sent[side, sid]


def test_a_ping_flood_leaves_one_pong_to_send() -> None:
    """A peer that pings without reading gets its latest ping answered, not a queue of pongs."""
    server = YamuxSession(is_client=False, config=PLAIN)
    flood = b"".join(encode_header(FrameType.PING, Flag.SYN, 0, n) for n in range(1, 10_001))
    assert server.receive_data(flood) == []
    assert server.has_data_to_send
    assert server.data_to_send() == encode_header(FrameType.PING, Flag.ACK, 0, 10_000)
    assert not server.has_data_to_send and server.data_to_send() == b""


def test_receive_credit_comes_from_the_connection_budget() -> None:
    """32 streams may not each be granted 16 MiB: grants beyond the initial window share
    max_connection_window, and a closed stream gives its share back."""
    budget = 32 * 1024 * KIB
    client, server = pair(client_config=None, server_config=YamuxConfig())
    streams = [client.open_stream() for _ in range(32)]
    exchange(client, server)
    windows = [client.send_window(s) for s in streams]  # what the server granted each
    extra = [w - INITIAL_WINDOW for w in windows]
    assert windows[0] == windows[1] == 16 * 1024 * KIB  # room for the first ones in full
    assert sum(extra) <= budget and windows[-1] < 2 * INITIAL_WINDOW
    assert all(w >= INITIAL_WINDOW for w in windows)
    client.reset_stream(streams[0])
    exchange(client, server)
    fresh = client.open_stream()
    exchange(client, server)
    assert client.send_window(fresh) - INITIAL_WINDOW >= extra[0] // 2  # the share came back


def test_refusals_in_a_row_are_one_event() -> None:
    # a SYN flood costs a counter per stream, not an event (and a log line) each
    client, server = pair(server_config=YamuxConfig(max_inbound_streams=2))
    ids = [client.open_stream() for _ in range(6)]
    client_events, server_events = exchange(client, server)
    assert opened_or_refused(server_events) == [
        StreamOpened(ids[0]),
        StreamOpened(ids[1]),
        StreamRefused(ids[2], 2, count=4),
    ]
    resets = [e for e in client_events if isinstance(e, StreamReset)]
    assert resets == [StreamReset(i, "reset by peer") for i in ids[2:]]  # an RST each


def opened_or_refused(events: list[MuxerEvent]) -> list[MuxerEvent]:
    return [e for e in events if isinstance(e, StreamOpened | StreamRefused)]


def test_sessions_of_one_peer_share_its_receive_credit() -> None:
    mib = 1024 * 1024
    peer = MemoryBudget(CREDIT_FLOOR + 2 * mib, parent=MemoryBudget(1 << 40))
    config = YamuxConfig(max_receive_window=mib, max_inbound_streams=1000)
    clients = [YamuxSession(is_client=True, config=config) for _ in range(2)]
    servers = [YamuxSession(is_client=False, config=config, credit=peer) for _ in range(2)]
    first = clients[0].open_stream()
    exchange(clients[0], servers[0])
    assert clients[0].send_window(first) == mib  # a whole window
    assert peer.used == mib
    second = clients[1].open_stream()
    exchange(clients[1], servers[1])
    # the other connection's stream gets half of what is left above the floor
    assert clients[1].send_window(second) == INITIAL_WINDOW + (mib - INITIAL_WINDOW) // 2
    # a burst: extra credit shrinks, the floor keeps initial windows for at least 64 more
    burst = [clients[1].open_stream() for _ in range(100)]
    events = opened_or_refused(exchange(clients[1], servers[1])[1])
    opened = [e for e in events if isinstance(e, StreamOpened)]
    assert len(opened) >= CREDIT_FLOOR // INITIAL_WINDOW
    refused = events[len(opened)]
    assert isinstance(refused, StreamRefused)
    assert (refused.stream_id, refused.reason) == (burst[len(opened)], "peer_receive_memory")
    assert refused.limit == peer.room() < INITIAL_WINDOW  # what was left: not enough
    used = peer.used
    clients[0].reset_stream(first)
    exchange(clients[0], servers[0])
    assert peer.used == used - mib
    servers[1].release_credit()  # its connection is gone
    servers[0].release_credit()
    assert peer.used == 0


class CountingBudget(MemoryBudget):
    """A peer's budget that counts how often a session comes to it."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.calls = 0

    def room(self) -> int:
        self.calls += 1
        return super().room()

    def force(self, size: int) -> None:
        self.calls += 1
        super().force(size)

    def release(self, size: int) -> None:
        self.calls += 1
        super().release(size)


def test_a_busy_session_leases_credit_of_closed_streams_and_an_idle_one_holds_none() -> None:
    mib = 1024 * 1024
    peer = CountingBudget(64 * mib)
    config = YamuxConfig(max_receive_window=mib)
    client = YamuxSession(is_client=True, config=config)
    server = YamuxSession(is_client=False, config=config, credit=peer)
    keep, first, second = (client.open_stream() for _ in range(3))
    exchange(client, server)
    assert peer.used == 3 * mib
    client.reset_stream(first)
    exchange(client, server)
    assert peer.used == 3 * mib  # leased: `keep` is still open
    calls = peer.calls
    third = client.open_stream()
    exchange(client, server)
    assert client.send_window(third) == mib  # a whole window, from the lease
    assert peer.calls == calls and peer.used == 3 * mib  # without a trip to the pool
    client.reset_stream(second)
    client.reset_stream(third)
    exchange(client, server)
    assert peer.used == 2 * mib  # `keep` and a lease of at most one window
    client.reset_stream(keep)
    exchange(client, server)
    assert peer.used == 0  # no stream left: nothing is kept


def test_streams_we_open_always_get_their_initial_window() -> None:
    peer = MemoryBudget(INITIAL_WINDOW)
    client = YamuxSession(is_client=True, config=YamuxConfig(), credit=peer)
    client.open_stream()
    client.open_stream()  # past the limit, but ours
    assert peer.used == 2 * INITIAL_WINDOW
    client.release_credit()
    assert peer.used == 0
