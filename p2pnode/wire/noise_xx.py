"""The Noise ``XX`` handshake over 25519, ChaChaPoly and SHA256 (Noise spec rev. 34), sans-I/O.

``Noise_XX_25519_ChaChaPoly_SHA256``, the one pattern libp2p uses, written straight
on ``cryptography``'s X25519 and ChaCha20-Poly1305 and the standard library's SHA-256
and HMAC. A general Noise library builds every pattern from objects on each handshake
and costs ~30 ms to import; this module is the three messages of XX:

    -> e
    <- e, ee, s, es
    -> s, se

Each side calls :meth:`write_message` and :meth:`read_message` in turn (the initiator
writes first); after the third message :meth:`split` gives the transport keys.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2pnode.errors import HandshakeError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
DH_LEN = 32
TAG_LEN = 16
_NONCE = struct.Struct("<4xQ")


def _hkdf2(chaining_key: bytes, input_key: bytes) -> tuple[bytes, bytes]:
    """The spec's HKDF with two outputs (HMAC-SHA256)."""
    temp = hmac.digest(chaining_key, input_key, "sha256")
    first = hmac.digest(temp, b"\x01", "sha256")
    return first, hmac.digest(temp, first + b"\x02", "sha256")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # a low-order point gives an all-zero secret, which OpenSSL refuses
        raise HandshakeError("the peer's Noise key is invalid (a low-order point)") from None


class XXHandshake:
    """One side of ``Noise_XX_25519_ChaChaPoly_SHA256`` with an empty prologue.

    ``static_private`` is this side's 32-byte X25519 static key; ``ephemeral`` may be
    given for test vectors (a fresh one is generated otherwise).
    """

    __slots__ = (
        "_aead",
        "_ck",
        "_e",
        "_h",
        "_initiator",
        "_n",
        "_re",
        "_s",
        "_s_public",
        "_step",
        "remote_static",
    )

    def __init__(
        self,
        static_private: bytes | X25519PrivateKey,
        *,
        initiator: bool,
        ephemeral: X25519PrivateKey | None = None,
        static_public: bytes | None = None,
    ) -> None:
        self._initiator = initiator
        if isinstance(static_private, bytes):
            static_private = X25519PrivateKey.from_private_bytes(static_private)
        self._s = static_private
        if static_public is None:
            static_public = static_private.public_key().public_bytes_raw()
        self._s_public = static_public
        self._e = ephemeral or X25519PrivateKey.generate()
        # the name is exactly 32 bytes, so h starts as the name itself and ck = h; then
        # MixHash(prologue) with the empty prologue
        self._ck = PROTOCOL_NAME
        self._h = hashlib.sha256(PROTOCOL_NAME).digest()
        self._aead: ChaCha20Poly1305 | None = None
        self._n = 0
        self._re = b""
        self._step = 0  # messages written or read so far
        self.remote_static = b""  # the peer's static key, once message 2 or 3 revealed it

    @property
    def handshake_hash(self) -> bytes:
        """The transcript hash ``h`` (the same on both sides once complete)."""
        return self._h

    @property
    def complete(self) -> bool:
        """True once all three messages went through."""
        return self._step == 3

    # -- SymmetricState ---------------------------------------------------------------

    def _mix_hash(self, data: bytes) -> None:
        self._h = hashlib.sha256(self._h + data).digest()

    def _mix_key(self, input_key: bytes) -> None:
        self._ck, key = _hkdf2(self._ck, input_key)
        self._aead, self._n = ChaCha20Poly1305(key), 0

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self._aead is None:
            out = plaintext
        else:
            out = self._aead.encrypt(_NONCE.pack(self._n), plaintext, self._h)
            self._n += 1
        self._mix_hash(out)
        return out

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self._aead is None:
            out = ciphertext
        else:
            try:
                out = self._aead.decrypt(_NONCE.pack(self._n), ciphertext, self._h)
            except InvalidTag:
                raise HandshakeError(
                    f"Noise handshake message {self._step + 1} failed authentication"
                ) from None
            self._n += 1
        self._mix_hash(ciphertext)
        return out

    # -- the three messages -----------------------------------------------------------

    def _my_turn(self) -> bool:
        return (self._step % 2 == 0) == self._initiator

    def write_message(self, payload: bytes) -> bytes:
        """The next handshake message, carrying ``payload`` (encrypted from message 2)."""
        if self.complete or not self._my_turn():
            raise HandshakeError("Noise handshake: not this side's turn to write")
        e_public = self._e.public_key().public_bytes_raw()
        if self._step == 0:  # -> e
            self._mix_hash(e_public)
            out = e_public + self._encrypt_and_hash(payload)
        elif self._step == 1:  # <- e, ee, s, es
            self._mix_hash(e_public)
            self._mix_key(_dh(self._e, self._re))
            sealed_static = self._encrypt_and_hash(self._s_public)
            self._mix_key(_dh(self._s, self._re))
            out = e_public + sealed_static + self._encrypt_and_hash(payload)
        else:  # -> s, se
            sealed_static = self._encrypt_and_hash(self._s_public)
            self._mix_key(_dh(self._s, self._re))
            out = sealed_static + self._encrypt_and_hash(payload)
        self._step += 1
        return out

    def read_message(self, message: bytes | bytearray) -> bytes:
        """Process the peer's next handshake message; return its payload."""
        message = bytes(message)
        if self.complete or self._my_turn():
            raise HandshakeError("Noise handshake: not the peer's turn to write")
        sealed = DH_LEN + TAG_LEN  # a static key, encrypted
        needed = (DH_LEN, DH_LEN + sealed + TAG_LEN, sealed + TAG_LEN)[self._step]
        if len(message) < needed:
            raise HandshakeError(
                f"Noise handshake message {self._step + 1} is too short "
                f"({len(message)} bytes, at least {needed})"
            )
        if self._step == 0:  # -> e
            self._re = message[:DH_LEN]
            self._mix_hash(self._re)
            payload = self._decrypt_and_hash(message[DH_LEN:])
        elif self._step == 1:  # <- e, ee, s, es
            self._re = message[:DH_LEN]
            self._mix_hash(self._re)
            self._mix_key(_dh(self._e, self._re))
            self.remote_static = self._decrypt_and_hash(message[DH_LEN : DH_LEN + sealed])
            self._mix_key(_dh(self._e, self.remote_static))
            payload = self._decrypt_and_hash(message[DH_LEN + sealed :])
        else:  # -> s, se
            self.remote_static = self._decrypt_and_hash(message[:sealed])
            self._mix_key(_dh(self._e, self.remote_static))
            payload = self._decrypt_and_hash(message[sealed:])
        self._step += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """``(send_key, receive_key)`` for the transport, once the handshake is complete."""
        if not self.complete:
            raise HandshakeError("the Noise handshake is not complete")
        initiator_key, responder_key = _hkdf2(self._ck, b"")
        if self._initiator:
            return initiator_key, responder_key
        return responder_key, initiator_key
