"""libp2p Noise (specs: ``noise/README.md``), sans-I/O.

The handshake is ``Noise_XX_25519_ChaChaPoly_SHA256`` (:mod:`p2pnode.wire.noise_xx`), every
message framed by a 2-byte big-endian length. Messages 2 and 3 carry a protobuf
``NoiseHandshakePayload``: the sender's libp2p identity key and its signature over
``"noise-libp2p-static-key:" + its Noise static key``, which binds the encrypted
channel to the PeerId. After the handshake, transport messages are encrypted with
ChaCha20-Poly1305 from ``cryptography`` directly (the fast path).

Muxer negotiation can ride in the handshake (specs: ``connections/inlined-muxer-negotiation.md``):
the payload's ``extensions`` (field 4) carry ``stream_muxers`` (field 2, repeated string);
the responder lists its muxers in message 2, the initiator in message 3, and both pick
the first muxer of the initiator's list that the responder also lists. A side that sends
no list makes both fall back to multistream-select after the handshake; two lists with
nothing in common fail it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2pnode.errors import DecodeError, HandshakeError, IdentityError, PeerIdMismatchError
from p2pnode.wire.identity import Identity, PeerId, PublicKey
from p2pnode.wire.noise_xx import XXHandshake
from p2pnode.wire.protobuf import LENGTH_DELIMITED, encode_bytes_field, iter_fields

PROTOCOL_ID = "/noise"
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
MAX_MESSAGE = 65535
TAG_SIZE = 16
MAX_PLAINTEXT = MAX_MESSAGE - TAG_SIZE

_LENGTH = struct.Struct(">H")
_NONCE = struct.Struct("<4xQ")  # 32 zero bits, then the 64-bit counter, little-endian
_MAX_NONCE = 2**64 - 1

_EXTENSIONS_FIELD = 4  # NoiseHandshakePayload.extensions
_STREAM_MUXERS_FIELD = 2  # NoiseExtensions.stream_muxers

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """A decoded ``NoiseHandshakePayload``: the identity key, its signature, the muxers."""

    identity_key: bytes
    signature: bytes
    stream_muxers: tuple[str, ...] = ()  # empty: the sender did not offer any


def encode_payload(identity_key: bytes, signature: bytes) -> bytes:
    """A ``NoiseHandshakePayload`` with our identity key and signature (no extensions)."""
    return encode_bytes_field(1, identity_key) + encode_bytes_field(2, signature)


def encode_muxer_extensions(muxers: Sequence[str]) -> bytes:
    """The ``extensions`` field listing ``muxers`` (to append to a payload); b"" for none."""
    if not muxers:
        return b""
    listed = b"".join(encode_bytes_field(_STREAM_MUXERS_FIELD, muxer) for muxer in muxers)
    return encode_bytes_field(_EXTENSIONS_FIELD, listed)


def decode_payload(data: bytes) -> HandshakePayload:
    """Decode a ``NoiseHandshakePayload``; unknown fields and extensions are ignored."""
    key = sig = b""
    muxers: list[str] = []
    try:
        for number, wire_type, value in iter_fields(data):
            if wire_type != LENGTH_DELIMITED or not isinstance(value, bytes):
                continue
            if number == 1:
                key = value
            elif number == 2:
                sig = value
            elif number == _EXTENSIONS_FIELD:
                muxers.extend(_decode_stream_muxers(value))
    except DecodeError as exc:
        raise HandshakeError(f"malformed Noise handshake payload: {exc}") from None
    if not key or not sig:
        raise HandshakeError("Noise handshake payload lacks the identity key or its signature")
    return HandshakePayload(key, sig, tuple(muxers))


def _decode_stream_muxers(extensions: bytes) -> list[str]:
    muxers = []
    for number, wire_type, value in iter_fields(extensions):
        if number == _STREAM_MUXERS_FIELD and wire_type == LENGTH_DELIMITED:
            assert isinstance(value, bytes)
            try:
                muxers.append(value.decode())
            except UnicodeDecodeError:
                raise DecodeError("a stream muxer name is not valid UTF-8") from None
    return muxers


def choose_muxer(initiator_muxers: Sequence[str], responder_muxers: Sequence[str]) -> str | None:
    """The muxer both sides pick: the initiator's first that the responder lists too.

    None when either list is empty (negotiate with multistream-select instead); a
    :class:`HandshakeError` when both offered muxers but none in common.
    """
    if not initiator_muxers or not responder_muxers:
        return None
    for muxer in initiator_muxers:
        if muxer in responder_muxers:
            return muxer
    raise HandshakeError(
        f"no stream muxer in common: the dialer offers {', '.join(initiator_muxers)}, "
        f"the listener {', '.join(responder_muxers)}; enable a common muxer on one side"
    )


class NoiseStaticKey:
    """A Noise static DH key and the identity's signature over it, as sent in the handshake.

    Make one per identity and pass it to every :class:`NoiseHandshake`: the spec lets a
    node keep its static key (rust- and js-libp2p do), and it saves a key generation and
    a signature per connection.
    """

    __slots__ = ("key", "payload", "private_bytes", "public_bytes")

    def __init__(self, identity: Identity) -> None:
        static = X25519PrivateKey.generate()
        public = static.public_key().public_bytes_raw()
        self.key = static  # each handshake uses the object itself: no re-parse per connection
        self.public_bytes = public
        self.private_bytes = static.private_bytes_raw()
        self.payload = encode_payload(
            identity.public_key.to_protobuf(), identity.sign(SIGNATURE_PREFIX + public)
        )


class NoiseHandshake:
    """One side of the XX handshake; becomes ``complete`` once the peer is authenticated.

    ``identity`` is an :class:`Identity` (a fresh static key for this handshake) or a
    :class:`NoiseStaticKey` made from one (the key is reused). ``muxers``, in order of
    preference, are offered in the handshake; once complete, :attr:`muxer` is the one
    chosen there, or None when multistream-select has to choose.
    """

    def __init__(
        self,
        identity: Identity | NoiseStaticKey,
        *,
        initiator: bool,
        expected_peer: PeerId | None = None,
        muxers: Sequence[str] = (),
    ) -> None:
        static = identity if isinstance(identity, NoiseStaticKey) else NoiseStaticKey(identity)
        self._identity_payload = static.payload
        self._muxers = tuple(muxers)
        self._noise = XXHandshake(
            static.key, initiator=initiator, static_public=static.public_bytes
        )
        self._initiator = initiator
        self._expected_peer = expected_peer
        self._buffer = bytearray()
        self._messages_read = 0
        self._complete = False
        self._remote_key: PublicKey | None = None
        self.remote_static_key = b""  # the peer's Noise static key, once authenticated
        self.remote_muxers: tuple[str, ...] = ()  # what the peer offered in the handshake
        self.muxer: str | None = None  # chosen in the handshake; None: use multistream

    @property
    def complete(self) -> bool:
        """True once the handshake finished and the peer's identity was verified."""
        return self._complete

    @property
    def remote_public_key(self) -> PublicKey:
        if self._remote_key is None:
            raise HandshakeError("the peer has not been authenticated yet")
        return self._remote_key

    @property
    def remote_peer(self) -> PeerId:
        """The PeerId the peer proved in the handshake."""
        return self.remote_public_key.peer_id()

    def start(self) -> bytes:
        """First bytes to send: message 1 for the initiator, nothing for the responder."""
        if not self._initiator:
            return b""
        return self._frame(self._noise.write_message(b""))

    def receive_data(self, data: Buffer) -> bytes:
        """Feed received bytes; return handshake bytes to send (possibly b"")."""
        self._buffer += data
        out = b""
        while not self._complete and len(self._buffer) >= 2:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < 2 + size:
                break
            message = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            out += self._handle_message(message)
        return out

    def _handle_message(self, message: bytes) -> bytes:
        payload = self._noise.read_message(message)
        self._messages_read += 1
        if self._initiator:  # message 2: the responder's identity; answer with message 3
            self._authenticate(payload, self._noise.remote_static)
            self.muxer = choose_muxer(self._muxers, self.remote_muxers)
            # Send only the chosen muxer (the spec allows it): then even a responder that
            # would pick by its own order of preference cannot pick another one.
            offer = (self.muxer,) if self.muxer is not None else self._muxers
            message3 = self._identity_payload + encode_muxer_extensions(offer)
            reply = self._frame(self._noise.write_message(message3))
            self._complete = True
            return reply
        if self._messages_read == 1:  # message 1: only an ephemeral key
            message2 = self._identity_payload + encode_muxer_extensions(self._muxers)
            return self._frame(self._noise.write_message(message2))
        self._authenticate(payload, self._noise.remote_static)  # message 3
        self.muxer = choose_muxer(self.remote_muxers, self._muxers)
        self._complete = True
        return b""

    def _authenticate(self, payload: bytes, remote_static: bytes) -> None:
        decoded = decode_payload(payload)
        key_bytes, signature = decoded.identity_key, decoded.signature
        try:
            key = PublicKey.from_protobuf(key_bytes)
        except IdentityError as exc:
            raise HandshakeError(f"peer sent an unusable identity key: {exc}") from None
        if not key.verify(SIGNATURE_PREFIX + remote_static, signature):
            raise HandshakeError(
                "the peer's handshake signature is invalid: it does not prove that "
                "its identity key owns the Noise static key"
            )
        peer = key.peer_id()
        if self._expected_peer is not None and peer != self._expected_peer:
            raise PeerIdMismatchError(
                f"dialed {self._expected_peer} but the peer proved identity {peer}: "
                "check the /p2p part of the address"
            )
        self._remote_key = key
        self.remote_static_key = bytes(remote_static)
        self.remote_muxers = decoded.stream_muxers

    @staticmethod
    def _frame(message: bytes) -> bytes:
        return _LENGTH.pack(len(message)) + message

    def transport(self) -> NoiseTransport:
        """The encrypted channel; it starts with any bytes received after the handshake."""
        if not self._complete:
            raise HandshakeError("the Noise handshake is not complete")
        send_key, receive_key = self._noise.split()
        leftover = bytes(self._buffer)
        self._buffer.clear()
        return NoiseTransport(send_key, receive_key, leftover)


class NoiseTransport:
    """Encrypts and decrypts libp2p Noise transport messages.

    Hot path: ciphertext is written straight into one preallocated buffer per call
    (``encrypt_into``) and plaintext likewise (``decrypt_into``); only the tail of a
    message split across reads is kept between calls.
    """

    __slots__ = ("_aead_in", "_aead_out", "_partial", "_recv_nonce", "_send_nonce")

    def __init__(self, send_key: bytes, receive_key: bytes, initial: bytes = b"") -> None:
        self._aead_out = ChaCha20Poly1305(send_key)
        self._aead_in = ChaCha20Poly1305(receive_key)
        self._send_nonce = 0
        self._recv_nonce = 0
        self._partial = bytearray(initial)

    def encrypt(self, data: Buffer) -> bytes | bytearray:
        """Framed ciphertext for ``data``, split into messages of at most 65535 bytes."""
        size = len(data)
        if not size:
            return b""
        chunks = -(-size // MAX_PLAINTEXT)
        nonce = self._send_nonce
        if nonce + chunks >= _MAX_NONCE:
            raise HandshakeError("Noise send nonce exhausted: open a new connection")
        out = bytearray(size + chunks * (2 + TAG_SIZE))
        view, src = memoryview(out), memoryview(data).cast("B")
        encrypt_into = self._aead_out.encrypt_into
        pos = 0
        for offset in range(0, size, MAX_PLAINTEXT):
            chunk = src[offset : offset + MAX_PLAINTEXT]
            sealed = len(chunk) + TAG_SIZE
            _LENGTH.pack_into(out, pos, sealed)
            encrypt_into(_NONCE.pack(nonce), chunk, None, view[pos + 2 : pos + 2 + sealed])
            nonce += 1
            pos += 2 + sealed
        self._send_nonce = nonce
        return out

    def receive_data(self, data: Buffer) -> bytes | bytearray:
        """Plaintext of every complete message in ``data`` (and earlier leftovers)."""
        plaintext = self.receive_into(data, None)
        return plaintext if isinstance(plaintext, bytearray) else plaintext.tobytes()

    def receive_into(self, data: Buffer, scratch: bytearray | None) -> bytearray | memoryview:
        """Like :meth:`receive_data`, but decrypt into ``scratch`` when it is large enough.

        The result is then a view of ``scratch``, valid until ``scratch`` is reused: the
        hot path decrypts every read into one buffer instead of allocating per read.
        """
        view = memoryview(data).cast("B")
        partial = self._partial
        head: list[int] = []
        if len(partial) >= 2 and len(partial) >= 2 + _LENGTH.unpack_from(partial)[0]:
            # More than the start of one message: what was read with the handshake's last
            # message (whole messages, maybe the start of the next). Once per connection.
            view = memoryview(bytes(partial) + view.tobytes())
            partial.clear()
        if partial:
            # Complete the message split across reads with just the bytes it still needs.
            if len(partial) < 2:
                take = 2 - len(partial)
                partial += view[:take]
                view = view[take:]
                if len(partial) < 2:
                    return bytearray()
            missing = 2 + _LENGTH.unpack_from(partial)[0] - len(partial)
            partial += view[:missing]
            view = view[missing:]
            head, _ = self._scan(partial)
            if not head:
                return bytearray()
        body, end = self._scan(view)
        size = sum(head) + sum(body) - (len(head) + len(body)) * TAG_SIZE
        if scratch is not None and len(scratch) >= size:
            out, target = scratch, memoryview(scratch)[:size]
        else:
            out = bytearray(size)  # the caller owns it
            target = memoryview(out)
        written = self._open(partial, head, target, 0) if head else 0
        self._open(view, body, target, written)
        if head:
            partial.clear()
        if end < len(view):
            partial += view[end:]
        return target if out is scratch else out

    @staticmethod
    def _scan(view: Buffer) -> tuple[list[int], int]:
        """Sizes of the complete messages at the start of ``view``, and where they end."""
        sizes: list[int] = []
        pos, end = 0, len(view)
        unpack = _LENGTH.unpack_from
        while end - pos >= 2:
            size = unpack(view, pos)[0]
            if end - pos - 2 < size:
                break
            if size < TAG_SIZE:
                raise DecodeError(f"Noise message of {size} bytes is shorter than its tag")
            sizes.append(size)
            pos += 2 + size
        return sizes, pos

    def _open(self, source: Buffer, sizes: list[int], target: memoryview, written: int) -> int:
        """Decrypt the messages of ``sizes`` at the start of ``source`` into ``target``."""
        nonce = self._recv_nonce
        if nonce + len(sizes) >= _MAX_NONCE:
            raise DecodeError("Noise receive nonce exhausted")
        view = memoryview(source)
        decrypt_into = self._aead_in.decrypt_into
        pos = 0
        for size in sizes:
            plain = size - TAG_SIZE
            try:
                decrypt_into(
                    _NONCE.pack(nonce), view[pos + 2 : pos + 2 + size], None,
                    target[written : written + plain],
                )  # fmt: skip
            except InvalidTag:
                raise DecodeError(
                    "Noise message failed authentication (corrupt or forged)"
                ) from None
            nonce += 1
            pos += 2 + size
            written += plain
        self._recv_nonce = nonce
        return written
