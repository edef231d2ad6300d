"""multistream-select 1.0, driven with bytes only."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pnode.errors import DecodeError, P2PError, ProtocolNotSupportedError
from p2pnode.wire.multistream import (
    MAX_PROPOSALS,
    MultistreamDialer,
    MultistreamListener,
    encode_message,
)

HEADER = b"\x13/multistream/1.0.0\n"


def negotiate(dialer: MultistreamDialer, listener: MultistreamListener, step: int) -> None:
    """Shuttle bytes between the two, ``step`` bytes at a time."""
    to_listener = dialer.initial_bytes()
    while not dialer.done:
        to_dialer = b""
        for i in range(0, len(to_listener), step):
            if not listener.done:
                to_dialer += listener.receive_data(to_listener[i : i + step])
        to_listener = b""
        for i in range(0, len(to_dialer), step):
            if not dialer.done:
                to_listener += dialer.receive_data(to_dialer[i : i + step])


def test_message_encoding() -> None:
    assert encode_message("/multistream/1.0.0") == HEADER
    assert encode_message("na") == b"\x03na\n"


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_fallback_after_na(step: int) -> None:
    dialer = MultistreamDialer(["/yamux/1.0.0", "/mplex/6.7.0"])
    listener = MultistreamListener({"/mplex/6.7.0"})
    negotiate(dialer, listener, step)
    assert dialer.selected == listener.selected == "/mplex/6.7.0"


def test_exact_bytes_of_a_successful_negotiation() -> None:
    dialer = MultistreamDialer(["/noise"])
    listener = MultistreamListener(["/noise"])
    request = dialer.initial_bytes()
    assert request == HEADER + b"\x07/noise\n"
    answer = listener.receive_data(request)
    assert answer == HEADER + b"\x07/noise\n"
    assert dialer.receive_data(answer) == b""
    assert dialer.done and listener.done


def test_a_long_proposal_and_a_header_that_is_almost_ours() -> None:
    name = "/" + "x" * 200  # a two-byte length prefix
    dialer = MultistreamDialer([name])
    listener = MultistreamListener([name])
    negotiate(dialer, listener, 1000)
    assert dialer.selected == listener.selected == name
    other = MultistreamListener(["/noise"])
    with pytest.raises(DecodeError, match="header"):
        other.receive_data(b"\x13/multistream/2.0.0\n\x07/noise\n")


def test_everything_refused() -> None:
    dialer = MultistreamDialer(["/a", "/b"])
    listener = MultistreamListener(["/c"])
    with pytest.raises(ProtocolNotSupportedError, match="/a, /b"):
        negotiate(dialer, listener, 100)


def test_pipelined_data_is_left_over_on_both_sides() -> None:
    dialer = MultistreamDialer(["/echo"], optimistic=True)
    listener = MultistreamListener(["/echo"])
    answer = listener.receive_data(dialer.initial_bytes() + b"request bytes")
    assert listener.leftover() == b"request bytes"
    dialer.receive_data(answer + b"response bytes")
    assert dialer.leftover() == b"response bytes"


def test_optimistic_dialer_raises_on_na() -> None:
    dialer = MultistreamDialer(["/x"], optimistic=True)
    listener = MultistreamListener(["/y"])
    with pytest.raises(ProtocolNotSupportedError):
        dialer.receive_data(listener.receive_data(dialer.initial_bytes()))


def test_ls_lists_protocols() -> None:
    listener = MultistreamListener(["/b", "/a"])
    answer = listener.receive_data(HEADER + encode_message("ls"))
    listing = answer[len(HEADER) :]
    assert encode_message("/a") + encode_message("/b") in listing
    assert not listener.done


def test_callable_support_and_listener_header_up_front() -> None:
    listener = MultistreamListener(lambda p: p.startswith("/ok/"))
    assert listener.initial_bytes() == HEADER
    assert listener.receive_data(HEADER + encode_message("/ok/1")) == encode_message("/ok/1")


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"\x13/multistream/2.0.0\n", "multistream-select 1.0"),
        (b"\x05hello", "newline"),
        (b"\xff\xff\x03", "exceeds|length prefix"),
        (b"\x03\xff\xfe\n", "UTF-8"),
        (b"\x00", "newline"),
        (b"\xff" * 20, "length prefix"),
    ],
)
def test_garbage_is_a_decode_error(data: bytes, complaint: str) -> None:
    with pytest.raises(DecodeError, match=complaint):
        MultistreamListener(["/x"]).receive_data(data)


def test_endless_proposals_are_cut_off() -> None:
    listener = MultistreamListener(["/x"])
    listener.receive_data(HEADER)
    with pytest.raises(DecodeError, match="refused proposals"):
        for i in range(MAX_PROPOSALS + 1):
            listener.receive_data(encode_message(f"/nope/{i}"))


def test_unexpected_answer_to_a_proposal() -> None:
    dialer = MultistreamDialer(["/x"])
    with pytest.raises(DecodeError, match="unexpected"):
        dialer.receive_data(HEADER + encode_message("/something-else"))


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_to_a_listener_or_dialer_give_answers_or_our_error(data: bytes) -> None:
    for side in (MultistreamListener(["/x"]), MultistreamDialer(["/x", "/y"])):
        with contextlib.suppress(P2PError):
            side.receive_data(data)
