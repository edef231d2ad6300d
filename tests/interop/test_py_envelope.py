"""Signed envelopes cross-checked with py-libp2p 0.8.1's own (``libp2p.peer.envelope``)."""

from __future__ import annotations

import subprocess

import pytest

from p2pnode.wire.envelope import Envelope
from p2pnode.wire.identity import Identity

from .pypeer import require_py_peer

pytestmark = pytest.mark.interop

DOMAIN = "libp2p-peer-record"  # py-libp2p seals its peer records under this domain
PEER_RECORD_TYPE = b"\x03\x01"

# py-libp2p signs a peer record for a key made from a fixed seed and prints the envelope;
# given an envelope of ours in argv[1], it verifies that instead and prints its signer.
SCRIPT = r"""
import sys
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.envelope import seal_record, unmarshal_envelope
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
if len(sys.argv) > 1:
    env = unmarshal_envelope(bytes.fromhex(sys.argv[1]))
    env.validate(sys.argv[2])
    print(ID.from_pubkey(env.public_key).to_base58(), env.raw_payload.hex())
else:
    pair = create_new_key_pair(b"\x07" * 32)
    record = PeerRecord(ID.from_pubkey(pair.public_key), [], 1)
    sealed = seal_record(record, pair.private_key).marshal_envelope()
    print(ID.from_pubkey(pair.public_key).to_base58(), sealed.hex())
"""


def run_py(*args: str) -> list[str]:
    python = require_py_peer()
    out = subprocess.run(
        [str(python), "-c", SCRIPT, *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_we_open_an_envelope_py_libp2p_sealed() -> None:
    signer, data = run_py()
    env = Envelope.open(bytes.fromhex(data), DOMAIN, PEER_RECORD_TYPE)
    assert str(env.signer) == signer


def test_py_libp2p_opens_an_envelope_we_sealed() -> None:
    me = Identity.generate()
    payload = b"\x0a\x02hi"
    sealed = Envelope.seal(me, DOMAIN, PEER_RECORD_TYPE, payload).to_bytes()
    signer, echoed = run_py(sealed.hex(), DOMAIN)
    assert signer == str(me.peer_id)
    assert bytes.fromhex(echoed) == payload
