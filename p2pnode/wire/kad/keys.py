"""Kademlia keys and the XOR metric.

Every DHT key lives in one 256-bit space: the SHA-256 of its bytes (the spec's
``XOR(sha256(key1), sha256(key2))``). For a peer the bytes are its binary PeerId (the
``key`` of FIND_NODE); for provider records they are a multihash (the ``key`` of
ADD_PROVIDER / GET_PROVIDERS, as go-libp2p-kad-dht sends a CID's multihash); for value
records the record key itself, e.g. ``/pk/<peer id bytes>``.
"""

from __future__ import annotations

import hashlib
from typing import NewType

from p2pnode.errors import DecodeError
from p2pnode.wire.identity import PeerId
from p2pnode.wire.varint import decode_uvarint

KEY_BITS = 256

Key = NewType("Key", int)
"""A point of the keyspace: SHA-256 of a key's bytes, read as a big-endian integer."""

PK_PREFIX = b"/pk/"
KIND_PREFIX = b"p2pnode:kind:"
_SHA2_256 = b"\x12\x20"


def kad_key(raw: bytes) -> Key:
    """The keyspace point of ``raw`` key bytes."""
    return Key(int.from_bytes(hashlib.sha256(raw).digest(), "big"))


def kad_key_for_peer(peer_id: PeerId) -> Key:
    """The keyspace point of a peer: SHA-256 of its binary PeerId."""
    return kad_key(peer_id.to_bytes())


def xor_distance(a: Key, b: Key) -> int:
    """Kademlia distance between two keyspace points."""
    return a ^ b


def common_prefix_length(a: Key, b: Key) -> int:
    """Leading bits ``a`` and ``b`` share (256 when equal)."""
    return KEY_BITS - (a ^ b).bit_length()


def provider_key_for_kind(kind: str) -> bytes:
    """The provider-record key for peers that run tasks of ``kind``.

    A sha2-256 multihash (0x12 0x20 + digest) of ``b"p2pnode:kind:" + kind``, so that
    go and js nodes, which expect a multihash there, store and serve it.
    """
    return _SHA2_256 + hashlib.sha256(KIND_PREFIX + kind.encode()).digest()


def pk_record_key(peer_id: PeerId) -> bytes:
    """The value-record key of a peer's public key: ``/pk/`` + binary PeerId."""
    return PK_PREFIX + peer_id.to_bytes()


def is_multihash(raw: bytes) -> bool:
    """True when ``raw`` is one well-formed multihash (code, length, digest of that length).

    The check the spec asks of ADD_PROVIDER / GET_PROVIDERS keys.
    """
    try:
        code = decode_uvarint(raw)
        length = decode_uvarint(raw, code[1]) if code is not None else None
    except DecodeError:
        return False
    return length is not None and len(raw) - length[1] == length[0]
