"""Signed envelopes (libp2p RFC 0002): a payload, its type, and the signer's key.

An envelope can be handed on by anyone and still be checked against its signer: the
signature covers a domain string (so a signature made for one use is never valid for
another), the payload type and the payload, each preceded by its uvarint length.
Relay reservation vouchers and agent cards travel in envelopes.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pnode.errors import DecodeError, IdentityError, RecordError
from p2pnode.wire.identity import Identity, PeerId, PublicKey
from p2pnode.wire.protobuf import LENGTH_DELIMITED, encode_bytes_field, iter_fields
from p2pnode.wire.varint import encode_uvarint

MAX_ENVELOPE_SIZE = 64 * 1024


def _signed_content(domain: str, payload_type: bytes, payload: bytes) -> bytes:
    raw_domain = domain.encode()
    return b"".join(
        (
            encode_uvarint(len(raw_domain)),
            raw_domain,
            encode_uvarint(len(payload_type)),
            payload_type,
            encode_uvarint(len(payload)),
            payload,
        )
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified (or freshly signed) envelope; build one with :meth:`seal` or :meth:`open`."""

    public_key: PublicKey
    payload_type: bytes
    payload: bytes
    signature: bytes

    @property
    def signer(self) -> PeerId:
        return self.public_key.peer_id()

    @classmethod
    def seal(cls, identity: Identity, domain: str, payload_type: bytes, payload: bytes) -> Envelope:
        """Sign ``payload`` for ``domain`` with ``identity``."""
        signature = identity.sign(_signed_content(domain, payload_type, payload))
        return cls(identity.public_key, payload_type, payload, signature)

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                encode_bytes_field(1, self.public_key.to_protobuf()),
                encode_bytes_field(2, self.payload_type),
                encode_bytes_field(3, self.payload),
                encode_bytes_field(5, self.signature),
            )
        )

    @classmethod
    def open(cls, data: bytes, domain: str, payload_type: bytes | None = None) -> Envelope:
        """Decode and verify; RecordError if the signature (or the expected type) is wrong."""
        if len(data) > MAX_ENVELOPE_SIZE:
            raise DecodeError(f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_SIZE}")
        fields: dict[int, bytes] = {}
        for number, wire_type, value in iter_fields(data):
            if wire_type == LENGTH_DELIMITED and number in (1, 2, 3, 5):
                assert isinstance(value, bytes)
                fields[number] = value
        missing = [name for n, name in ((1, "public_key"), (5, "signature")) if n not in fields]
        if missing:
            raise DecodeError(f"envelope has no {' or '.join(missing)}")
        try:
            public_key = PublicKey.from_protobuf(fields[1])
        except IdentityError as exc:
            raise DecodeError(f"envelope signer key is unusable: {exc}") from None
        kind, payload = fields.get(2, b""), fields.get(3, b"")
        if payload_type is not None and kind != payload_type:
            raise RecordError(
                f"envelope carries payload type {kind.hex()}, expected {payload_type.hex()}"
            )
        if not public_key.verify(_signed_content(domain, kind, payload), fields[5]):
            raise RecordError(
                f"envelope signature by {public_key.peer_id()} does not verify for domain "
                f"{domain!r}: the record was altered or signed for another use; discard it"
            )
        return cls(public_key, kind, payload, fields[5])
