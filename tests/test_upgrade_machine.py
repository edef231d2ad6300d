"""The upgrade as a state machine (multistream -> Noise -> muxer), with no socket: two
machines fed each other's bytes."""

from __future__ import annotations

import pytest

from p2pnode.errors import P2PError
from p2pnode.net.transport import TransportConfig, _SecurityUpgrade, _Upgraded
from p2pnode.wire.identity import Identity
from p2pnode.wire.yamux import PROTOCOL_ID as YAMUX_ID


def pair(*, inline: bool = True) -> tuple[_SecurityUpgrade, _SecurityUpgrade, Identity, Identity]:
    dialer_id, listener_id = Identity.generate(), Identity.generate()
    dialer = _SecurityUpgrade(
        TransportConfig(dialer_id, inline_muxer_negotiation=inline),
        initiator=True,
        expected_peer=listener_id.peer_id,
    )
    listener = _SecurityUpgrade(TransportConfig(listener_id), initiator=False, expected_peer=None)
    return dialer, listener, dialer_id, listener_id


def shuttle(dialer: _SecurityUpgrade, listener: _SecurityUpgrade) -> int:
    """Carry bytes both ways until both are done; the number of flights it took."""
    flights, to_listener = 1, dialer.initial_bytes()
    while dialer.result is None or listener.result is None:
        to_dialer = listener.receive_data(to_listener) if to_listener else b""
        to_listener = b""
        if to_dialer:
            flights += 1
            to_listener = dialer.receive_data(to_dialer)
        if dialer.result is not None and listener.result is None:
            to_listener += dialer.result.unsent  # the dialer's last message, held back
            dialer.result.unsent = b""
        if to_listener:
            flights += 1
        elif not to_dialer:
            raise AssertionError("the upgrade stalled")
    return flights


def check(result: _Upgraded | None, peer: Identity) -> _Upgraded:
    assert result is not None
    assert result.remote_peer == peer.peer_id
    assert result.muxer_id == YAMUX_ID
    return result


def test_the_muxer_chosen_in_noise_takes_three_flights_and_holds_message_3_back() -> None:
    dialer, listener, dialer_id, listener_id = pair()
    first = dialer.initial_bytes()
    assert listener.receive_data(first[:10]) == b""  # a partial proposal: nothing to say yet
    message2 = listener.receive_data(first[10:])
    assert message2  # the multistream echo and Noise message 2, in one piece
    assert dialer.receive_data(message2) == b""  # message 3 is not sent on its own
    done = check(dialer.result, listener_id)
    assert done.muxer_in_handshake and done.unsent
    assert listener.receive_data(done.unsent) == b""
    assert check(listener.result, dialer_id).muxer_in_handshake


def test_without_muxers_in_noise_multistream_chooses_after_the_handshake() -> None:
    dialer, listener, dialer_id, listener_id = pair(inline=False)
    assert shuttle(dialer, listener) == 4  # one flight more than with the inlined choice
    assert not check(dialer.result, listener_id).muxer_in_handshake
    assert not check(listener.result, dialer_id).muxer_in_handshake


def test_bytes_after_the_last_message_become_the_connections_early_plaintext() -> None:
    dialer, listener, _, _ = pair()
    dialer.receive_data(listener.receive_data(dialer.initial_bytes()))
    done = dialer.result
    assert done is not None
    early = done.secure.encrypt(b"a stream opened at once")
    listener.receive_data(done.unsent + bytes(early))
    assert listener.result is not None
    assert listener.result.early_plaintext == b"a stream opened at once"


def test_a_proposal_that_is_no_multistream_fails_the_upgrade() -> None:
    _, listener, _, _ = pair()
    with pytest.raises(P2PError):
        listener.receive_data(b"\x0fGET / HTTP/1.1\n")  # a length, then no multistream header
