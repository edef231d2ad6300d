"""Task protocol 2's codec (sans-I/O): round trips, the spec's examples, bad input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import DecodeError
from p2pnode.protocols.task.examples2 import EXAMPLES
from p2pnode.protocols.task.messages2 import (
    MAX_JSON_DEPTH,
    MAX_PARTS_PER_MESSAGE,
    Accepted,
    Cancel,
    Completed,
    Failed,
    InputChunk,
    OutputChunk,
    Part,
    PartAssembler,
    Progress,
    Request,
    accepted_body,
    decode_client_message,
    decode_server_event,
    encode,
    split_part,
)
from p2pnode.wire.framing import FrameDecoder, encode_frame

CLIENT_TYPES = (Request, InputChunk, Cancel)
JSON_LEAVES = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text()  # msgpack ints: 64 bits


def test_every_byte_value_survives_a_round_trip() -> None:
    data = bytes(range(256))
    request = Request("t", "echo", [Part.of_bytes(data, "application/x-test")])
    decoded = decode_client_message(encode(request))
    assert isinstance(decoded, Request)
    assert decoded.input[0].data == data
    assert decoded.input[0].media == "application/x-test"


def test_the_spec_examples_decode_to_what_they_show() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "task-protocol-2.md").read_text()
    for title, message in EXAMPLES:
        framed = FrameDecoder(1 << 20).receive_data(encode_framed(message))
        assert len(framed) == 1
        decode = decode_client_message if isinstance(message, CLIENT_TYPES) else decode_server_event
        assert decode(framed[0]) == message, title
        assert encode_framed(message).hex(" ") in doc, f"docs are stale for {title!r}"


def encode_framed(message: object) -> bytes:
    return encode_frame(encode(message))  # type: ignore[arg-type]


def test_unknown_message_types_and_keys_are_ignored() -> None:
    newer = msgspec.msgpack.encode({"type": "heartbeat", "x": 1})
    assert decode_server_event(newer) is None
    assert decode_client_message(newer) is None
    extra = msgspec.msgpack.encode({"type": "accepted", "id": "a", "queue": 3})
    assert decode_server_event(extra) == Accepted("a")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "request", "id": ""}, "task id"),
        ({"type": "request", "id": "x" * 129}, "task id"),
        ({"type": "request", "id": "a", "timeout_ms": 0}, "timeout_ms"),
        ({"type": "request", "id": "a", "input": [{"type": "video"}]}, "unknown part type"),
        ({"type": "request", "id": "a", "input": [{"type": "bytes"}]}, "no data"),
        ({"type": "request", "id": "a", "input": [{"type": "bytes", "data": "str"}]}, "invalid"),
        ({"type": "request"}, "invalid"),
        ({"type": "request", "id": "a", "metadata": {"k": "v" * 70_000}}, "metadata"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(body: object, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem):
        decode_client_message(msgspec.msgpack.encode(body))


def test_too_many_parts_and_deep_json_are_refused() -> None:
    many = Request("a", input=[Part.of_text("x")] * (MAX_PARTS_PER_MESSAGE + 1))
    with pytest.raises(DecodeError, match="parts"):
        decode_client_message(encode(many))
    deep: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    with pytest.raises(DecodeError, match="deeper"):
        decode_client_message(encode(Request("a", input=[Part.of_json(deep)])))


def test_json_nested_beyond_the_decoder_is_a_decode_error() -> None:
    body = b"\x82\xa4type\xa7request\xa2id" + b"\x91" * 100_000 + b"\x01"
    with pytest.raises(DecodeError):
        decode_client_message(body)


def test_split_parts_append_back_to_the_original() -> None:
    for part in (Part.of_bytes(bytes(range(256)) * 5000, "image/png"), Part.of_text("é" * 90_000)):
        pieces = split_part(part, 64 * 1024)
        assert len(pieces) > 1 and not pieces[0][1] and all(a for _, a in pieces[1:])
        assert all(p.size <= 64 * 1024 for p, _ in pieces)
        assembler = PartAssembler()
        for piece, append in pieces:
            assembler.add(piece, append)
        assert assembler.parts() == [part]


def test_appending_to_nothing_or_to_another_type_is_refused() -> None:
    with pytest.raises(DecodeError, match="no part before"):
        PartAssembler().add(Part.of_text("x"), True)
    mismatched = [(Part.of_text("x"), Part.of_bytes(b"y")), (Part.of_json(1), Part.of_json(2))]
    for first, second in mismatched:
        assembler = PartAssembler()
        assembler.add(first)
        with pytest.raises(DecodeError, match="cannot append"):
            assembler.add(second, True)


def test_every_server_event_round_trips() -> None:
    events = [
        Accepted("a"),
        Progress(0.25),
        Progress(message="thinking"),
        OutputChunk(Part.of_json({"k": [1, 2.5, None, True]}), append=False),
        Completed("a", [Part.of_text("done")], 7, cached=True),
        Failed("a", "cancelled", "the client cancelled", 3),
    ]
    for event in events:
        assert decode_server_event(encode(event)) == event


@given(st.binary(max_size=512))
def test_garbage_never_escapes_as_anything_but_decode_error(body: bytes) -> None:
    for decode in (decode_client_message, decode_server_event):
        with contextlib.suppress(DecodeError):
            decode(body)


@given(
    st.lists(
        st.one_of(
            st.builds(Part.of_text, st.text(max_size=50)),
            st.builds(Part.of_bytes, st.binary(max_size=50)),
            st.builds(
                Part.of_json,
                st.recursive(JSON_LEAVES, st.lists),
            ),
        ),
        max_size=8,
    ),
    st.text(min_size=1, max_size=20),
)
def test_requests_round_trip(parts: list[Part], task_id: str) -> None:
    request = Request(task_id, input=parts, stream=True)
    assert decode_client_message(encode(request)) == request


@given(st.text(max_size=200))
def test_the_accepted_shortcut_encodes_what_msgspec_does(task_id: str) -> None:
    assert accepted_body(task_id) == encode(Accepted(task_id))
