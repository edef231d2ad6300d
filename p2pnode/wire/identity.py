"""Keys and PeerIds exactly as libp2p defines them (specs: ``peer-ids/peer-ids.md``).

A public key travels as a protobuf ``PublicKey {KeyType Type = 1; bytes Data = 2}``.
A PeerId is the multihash of that encoding: the identity multihash when it is at
most 42 bytes (Ed25519, secp256k1), SHA2-256 otherwise (RSA, ECDSA). Its text form
is base58btc (``12D3KooW...`` / ``Qm...``); the CIDv1 form (``bafz...``) is read too.
Our own key is Ed25519; peers' RSA, secp256k1 and ECDSA keys can be verified.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import stat
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p2pnode.errors import DecodeError, IdentityError
from p2pnode.wire.base58 import b58decode, b58encode
from p2pnode.wire.protobuf import (
    LENGTH_DELIMITED,
    VARINT,
    encode_bytes_field,
    encode_varint_field,
    iter_fields,
)

_IDENTITY_MULTIHASH = 0x00
_SHA2_256_MULTIHASH = 0x12
_LIBP2P_KEY_CODEC = 0x72
_CID_V1 = 0x01
_MAX_INLINE_KEY = 42
_MAX_KEY_PROTOBUF = 8 * 1024


class KeyType(IntEnum):
    """libp2p key types (the ``KeyType`` protobuf enum)."""

    RSA = 0
    ED25519 = 1
    SECP256K1 = 2
    ECDSA = 3


def _encode_key_protobuf(key_type: KeyType, data: bytes) -> bytes:
    return encode_varint_field(1, int(key_type)) + encode_bytes_field(2, data)


def _decode_key_protobuf(data: bytes, what: str) -> tuple[KeyType, bytes]:
    key_type: int | None = None
    key_data: bytes | None = None
    try:
        for number, wire_type, value in iter_fields(data):
            if number == 1 and wire_type == VARINT and isinstance(value, int):
                key_type = value
            elif number == 2 and wire_type == LENGTH_DELIMITED and isinstance(value, bytes):
                key_data = value
    except DecodeError as exc:
        raise IdentityError(f"malformed {what} protobuf: {exc}") from None
    if key_type is None or key_data is None:
        raise IdentityError(f"{what} protobuf lacks its Type or Data field")
    try:
        return KeyType(key_type), key_data
    except ValueError:
        raise IdentityError(f"unsupported key type {key_type} in {what}") from None


_CURVES_BY_OID: dict[str, ec.EllipticCurve] = {
    "2a8648ce3d030107": ec.SECP256R1(),
    "2b81040022": ec.SECP384R1(),
    "2b81040023": ec.SECP521R1(),
}


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) items of a DER sequence body; ValueError when malformed."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated DER item")
        tag, size = data[pos], data[pos + 1]
        pos += 2
        if size & 0x80:
            width = size & 0x7F
            if width == 0 or width > 2 or pos + width > len(data):
                raise ValueError("bad DER length")
            size = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        if pos + size > len(data):
            raise ValueError("DER item runs past the end")
        items.append((tag, data[pos : pos + size]))
        pos += size
    return items


def _load_sec1_style_ecdsa(raw: bytes) -> ec.EllipticCurvePublicKey:
    """js-libp2p's ECDSA form: SEQUENCE {1, [0] {curve OID}, [1] {BIT STRING point}}."""
    ((tag, body),) = _der_items(raw)
    fields = dict(_der_items(body)) if tag == 0x30 else {}
    if 0xA0 not in fields or 0xA1 not in fields:
        raise ValueError("not an ECDSA public key structure")
    ((_, oid),) = _der_items(fields[0xA0])
    ((_, bits),) = _der_items(fields[0xA1])
    curve = _CURVES_BY_OID.get(oid.hex())
    if curve is None or not bits or bits[0] != 0:
        raise ValueError("unsupported ECDSA curve or point encoding")
    return ec.EllipticCurvePublicKey.from_encoded_point(curve, bits[1:])


class PublicKey:
    """A peer's public key: verify its signatures and derive its PeerId."""

    __slots__ = ("_key", "_protobuf", "key_type")

    def __init__(self, key_type: KeyType, key: object, protobuf: bytes) -> None:
        self.key_type = key_type
        self._key = key
        self._protobuf = protobuf

    @classmethod
    def from_ed25519(cls, key: ed25519.Ed25519PublicKey) -> PublicKey:
        raw = key.public_bytes_raw()
        return cls(KeyType.ED25519, key, _encode_key_protobuf(KeyType.ED25519, raw))

    @classmethod
    def from_protobuf(cls, data: bytes) -> PublicKey:
        """Decode a protobuf ``PublicKey``; IdentityError if malformed or unsupported."""
        if len(data) > _MAX_KEY_PROTOBUF:
            raise IdentityError("public key protobuf is implausibly large")
        key_type, raw = _decode_key_protobuf(bytes(data), "PublicKey")
        key: object
        try:
            if key_type is KeyType.ED25519:
                if len(raw) != 32:
                    raise IdentityError(f"Ed25519 public key must be 32 bytes, not {len(raw)}")
                key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
            elif key_type is KeyType.SECP256K1:
                key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
            elif key_type is KeyType.ECDSA and raw[:1] == b"\x30" and b"\xa1" in raw[:40]:
                key = _load_sec1_style_ecdsa(raw)
            else:
                # imported here: the serialization package costs ~15 ms at start-up
                from cryptography.hazmat.primitives.serialization import load_der_public_key

                key = load_der_public_key(raw)
                expected = (
                    rsa.RSAPublicKey if key_type is KeyType.RSA else ec.EllipticCurvePublicKey
                )
                if not isinstance(key, expected):
                    raise IdentityError(f"{key_type.name} key data holds another kind of key")
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"invalid {key_type.name} public key: {exc}") from None
        return cls(key_type, key, bytes(data))

    def to_protobuf(self) -> bytes:
        """The protobuf ``PublicKey`` encoding."""
        return self._protobuf

    def verify(self, data: bytes, signature: bytes) -> bool:
        """True if ``signature`` over ``data`` was made with the matching private key."""
        key = self._key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(key, ec.EllipticCurvePublicKey):
                size = (key.curve.key_size + 7) // 8
                if len(signature) == 2 * size and signature[:1] != b"\x30":
                    # js-libp2p signs ECDSA as raw r || s; the spec (and go) use DER.
                    r, s = signature[:size], signature[size:]
                    signature = encode_dss_signature(
                        int.from_bytes(r, "big"), int.from_bytes(s, "big")
                    )
                key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                return False
        except (InvalidSignature, ValueError):
            return False
        return True

    def peer_id(self) -> PeerId:
        """The PeerId this key stands for."""
        return PeerId.from_public_key_protobuf(self._protobuf)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other._protobuf == self._protobuf

    def __hash__(self) -> int:
        return hash(self._protobuf)

    def __repr__(self) -> str:
        return f"<PublicKey {self.key_type.name} {self.peer_id()}>"


class PeerId:
    """A libp2p peer identifier: the multihash of a public key."""

    __slots__ = ("_multihash", "_text")

    def __init__(self, multihash: bytes) -> None:
        self._multihash = multihash
        self._text: str | None = None  # base58 text, made when first asked for

    @classmethod
    def from_public_key_protobuf(cls, data: bytes) -> PeerId:
        """The PeerId of a protobuf-encoded public key."""
        if len(data) <= _MAX_INLINE_KEY:
            return cls(bytes((_IDENTITY_MULTIHASH, len(data))) + bytes(data))
        return cls(bytes((_SHA2_256_MULTIHASH, 32)) + hashlib.sha256(data).digest())

    @classmethod
    def from_bytes(cls, multihash: bytes) -> PeerId:
        """Parse the binary form (a multihash); IdentityError when it is not a valid one."""
        multihash = bytes(multihash)
        if len(multihash) < 2:
            raise IdentityError("PeerId multihash is too short")
        code, length = multihash[0], multihash[1]
        if code == _IDENTITY_MULTIHASH:
            if length > _MAX_INLINE_KEY:
                raise IdentityError("identity-multihash PeerId longer than 42 bytes")
        elif code == _SHA2_256_MULTIHASH:
            if length != 32:
                raise IdentityError("sha2-256 PeerId must carry a 32-byte digest")
        else:
            raise IdentityError(f"PeerId uses unsupported multihash code 0x{code:02x}")
        if len(multihash) != 2 + length:
            raise IdentityError("PeerId multihash length does not match its content")
        return cls(multihash)

    @classmethod
    def from_string(cls, text: str) -> PeerId:
        """Parse base58btc (``12D3KooW...``, ``Qm...``) or CIDv1 (``bafz...``) text."""
        if not text:
            raise IdentityError("empty PeerId")
        if text[0] in "1Q":
            return _from_base58(text)
        if text[0] == "b":
            return cls._from_cid(text)
        raise IdentityError(
            f"invalid PeerId {text!r}: expected base58 text like 12D3KooW... or a CID like bafz..."
        )

    @classmethod
    def _from_cid(cls, text: str) -> PeerId:
        body = text[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except ValueError:
            raise IdentityError(f"invalid PeerId CID {text!r}: not base32") from None
        if len(raw) < 2 or raw[0] != _CID_V1 or raw[1] != _LIBP2P_KEY_CODEC:
            raise IdentityError(f"invalid PeerId CID {text!r}: not a CIDv1 with codec libp2p-key")
        return cls.from_bytes(raw[2:])

    def to_bytes(self) -> bytes:
        """The binary form (multihash)."""
        return self._multihash

    def to_cid_string(self) -> str:
        """The CIDv1 text form (multibase base32, codec libp2p-key)."""
        raw = bytes((_CID_V1, _LIBP2P_KEY_CODEC)) + self._multihash
        return "b" + base64.b32encode(raw).decode().lower().rstrip("=")

    def extract_public_key(self) -> PublicKey | None:
        """The public key inlined in an identity-multihash PeerId, else None."""
        if self._multihash[0] != _IDENTITY_MULTIHASH:
            return None
        return PublicKey.from_protobuf(self._multihash[2:])

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._text = b58encode(self._multihash)
        return text

    def __repr__(self) -> str:
        return f"PeerId({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other._multihash == self._multihash

    def __hash__(self) -> int:
        return hash(self._multihash)


@functools.lru_cache(maxsize=1024)
def _from_base58(text: str) -> PeerId:
    """A base58btc PeerId, remembered: an address names its peer in base58, and decoding it
    (12 µs) came up several times per dial. PeerIds are values, so sharing one is safe."""
    try:
        peer = PeerId.from_bytes(b58decode(text))
    except DecodeError as exc:
        raise IdentityError(f"invalid PeerId {text!r}: {exc}") from None
    peer._text = text  # base58btc has one spelling per value: this is it
    return peer


class Identity:
    """This node's Ed25519 key pair."""

    def __init__(self, private_key: ed25519.Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = PublicKey.from_ed25519(private_key.public_key())
        self.peer_id = self.public_key.peer_id()

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` with the identity key."""
        return self._private_key.sign(data)

    def to_private_key_protobuf(self) -> bytes:
        """libp2p ``PrivateKey`` protobuf: Ed25519 Data is the 32-byte seed then the public key."""
        seed = self._private_key.private_bytes_raw()
        public = self._private_key.public_key().public_bytes_raw()
        return _encode_key_protobuf(KeyType.ED25519, seed + public)

    @classmethod
    def from_private_key_protobuf(cls, data: bytes) -> Identity:
        """Load a libp2p ``PrivateKey`` protobuf (Ed25519 only)."""
        key_type, raw = _decode_key_protobuf(bytes(data), "PrivateKey")
        if key_type is not KeyType.ED25519:
            raise IdentityError(f"only Ed25519 identity keys are supported, not {key_type.name}")
        # 64 bytes: seed + public key; older libp2p wrote 96: seed + public key twice.
        if len(raw) not in (64, 96) or (len(raw) == 96 and raw[32:64] != raw[64:]):
            raise IdentityError(f"Ed25519 private key must be 64 bytes, not {len(raw)}")
        identity = cls(ed25519.Ed25519PrivateKey.from_private_bytes(raw[:32]))
        if identity.public_key.to_protobuf()[4:] != raw[32:64]:
            raise IdentityError("Ed25519 private key's public half does not match its seed")
        return identity

    def save(self, path: Path) -> None:
        """Write the key file with mode 0600, atomically (parent directory made 0700)."""
        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.to_private_key_protobuf())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key file; refuse one that others can read, or that is corrupt."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise IdentityError(
                    f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):o}): "
                    f"run `chmod 600 {path}`"
                )
            data = path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            return cls.from_private_key_protobuf(data)
        except IdentityError as exc:
            raise IdentityError(
                f"key file {path} is corrupt ({exc}); move it away to create a new identity"
            ) from None

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key file, creating it with a fresh identity if it does not exist."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity


def default_identity_path() -> Path:
    """``$XDG_CONFIG_HOME/p2pnode/identity.key`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "p2pnode" / "identity.key"
