"""Keys, PeerIds and key files, checked against vectors produced by js-libp2p."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import IdentityError, P2PError
from p2pnode.wire.base58 import ALPHABET, b58decode, b58encode
from p2pnode.wire.identity import Identity, KeyType, PeerId, PublicKey, default_identity_path

VECTORS = json.loads((Path(__file__).parent / "vectors" / "js_vectors.json").read_text())
KEYS = {k["type"]: k for k in VECTORS["keys"]}


@pytest.mark.parametrize("vector", VECTORS["keys"], ids=lambda v: v["type"])
def test_js_public_keys_parse_verify_and_give_the_same_peer_id(vector: dict) -> None:
    key = PublicKey.from_protobuf(bytes.fromhex(vector["public_key_protobuf"]))
    message, signature = bytes.fromhex(vector["message"]), bytes.fromhex(vector["signature"])
    assert key.verify(message, signature)
    assert not key.verify(message + b"!", signature)
    assert key.to_protobuf().hex() == vector["public_key_protobuf"]
    if vector["peer_id"] is not None:
        assert str(key.peer_id()) == vector["peer_id"]
        assert key.peer_id().to_cid_string() == vector["peer_id_cid"]
        assert PeerId.from_string(vector["peer_id_cid"]) == key.peer_id()
        assert PeerId.from_string(vector["peer_id"]) == key.peer_id()


def test_rsa_peer_ids_are_sha256_and_ed25519_ids_inline_the_key() -> None:
    rsa = PeerId.from_string(KEYS["RSA"]["peer_id"])
    assert rsa.to_bytes()[:2] == b"\x12\x20"
    assert rsa.extract_public_key() is None
    ed = PeerId.from_string(KEYS["Ed25519"]["peer_id"])
    assert ed.to_bytes()[:2] == b"\x00\x24"
    assert ed.extract_public_key() == PublicKey.from_protobuf(
        bytes.fromhex(KEYS["Ed25519"]["public_key_protobuf"])
    )


def test_js_private_key_protobuf_loads_to_the_same_identity() -> None:
    vector = KEYS["Ed25519"]
    identity = Identity.from_private_key_protobuf(bytes.fromhex(vector["private_key_protobuf"]))
    assert str(identity.peer_id) == vector["peer_id"]
    assert identity.to_private_key_protobuf().hex() == vector["private_key_protobuf"]
    # js signs Ed25519 deterministically, so our signature must be byte-identical.
    assert identity.sign(bytes.fromhex(vector["message"])).hex() == vector["signature"]


def test_legacy_96_byte_ed25519_private_keys_load() -> None:
    identity = Identity.generate()
    modern = identity.to_private_key_protobuf()
    data = modern[4:]  # strip Type field and Data header: 64 bytes
    legacy = b"\x08\x01\x12\x60" + data + data[32:]
    assert Identity.from_private_key_protobuf(legacy).peer_id == identity.peer_id
    broken = b"\x08\x01\x12\x60" + data + bytes(32)
    with pytest.raises(IdentityError):
        Identity.from_private_key_protobuf(broken)


def test_spec_example_sha256_peer_id_round_trips() -> None:
    text = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    peer = PeerId.from_string(text)
    assert str(peer) == text
    assert PeerId.from_bytes(peer.to_bytes()) == peer
    assert PeerId.from_string(peer.to_cid_string()) == peer


@pytest.mark.parametrize(
    "text",
    ["", "12D3KooW", "0OIl", "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5", "bafzzzz", "xyz"],
)
def test_bad_peer_id_text_is_an_identity_error(text: str) -> None:
    with pytest.raises(IdentityError):
        PeerId.from_string(text)


def test_key_file_is_written_0600_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "identity.key"
    created = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert Identity.load_or_create(path).peer_id == created.peer_id
    assert Identity.load(path).to_private_key_protobuf() == created.to_private_key_protobuf()


def test_group_readable_key_file_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    Identity.generate().save(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


def test_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(b"\x08\x01\x12\x40" + b"\x00" * 10)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="corrupt"):
        Identity.load(path)


def test_non_ed25519_private_keys_are_refused() -> None:
    with pytest.raises(IdentityError, match="only Ed25519"):
        Identity.from_private_key_protobuf(b"\x08\x00\x12\x02ab")


def test_default_identity_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_identity_path() == tmp_path / "p2pnode" / "identity.key"


def test_signatures_verify_only_for_the_signer() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"data")
    assert alice.public_key.verify(b"data", signature)
    assert not bob.public_key.verify(b"data", signature)
    assert alice.public_key.key_type is KeyType.ED25519


@given(st.binary(max_size=200))
def test_any_bytes_give_a_peer_id_or_our_error(data: bytes) -> None:
    for parse in (PeerId.from_bytes, PublicKey.from_protobuf, Identity.from_private_key_protobuf):
        with contextlib.suppress(P2PError):
            parse(data)


@given(st.text(max_size=80))
def test_any_text_gives_a_peer_id_or_our_error(text: str) -> None:
    with contextlib.suppress(P2PError):
        PeerId.from_string(text)


@given(st.text(alphabet=ALPHABET, max_size=60))
def test_base58_spells_each_value_once(text: str) -> None:
    """PeerId.from_string keeps the text it was given as the PeerId's text: right only
    because every base58 text is the one spelling of the bytes it decodes to."""
    assert b58encode(b58decode(text)) == text


def test_peer_id_from_string_keeps_its_text() -> None:
    peer = Identity.generate().peer_id
    parsed = PeerId.from_string(str(peer))
    assert parsed == peer and str(parsed) == str(peer) and repr(parsed) == repr(peer)
