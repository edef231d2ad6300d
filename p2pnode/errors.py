"""The p2pnode exception hierarchy.

Every error raised by p2pnode derives from :class:`P2PError`. Like h11, we
separate errors where *we* misused an API (:class:`LocalProtocolError`) from
errors where *the peer* broke a protocol (:class:`RemoteProtocolError`): the
latter closes the offending connection or stream, never the node.
Messages say what happened and, where it helps, what to do about it.
"""

from __future__ import annotations


class P2PError(Exception):
    """Base class of every error raised by p2pnode."""


class LocalProtocolError(P2PError):
    """This side used an API wrongly (e.g. wrote to a closed stream)."""


class RemoteProtocolError(P2PError):
    """The remote peer violated a wire protocol; its connection or stream is closed."""


class DecodeError(RemoteProtocolError):
    """Bytes received could not be decoded (malformed, truncated or oversized)."""


class MultiaddrError(P2PError, ValueError):
    """A multiaddr is malformed or uses an unsupported protocol."""


class IdentityError(P2PError):
    """A key, key file or PeerId is invalid, unsupported or unsafe to use."""


class HandshakeError(P2PError):
    """The security handshake (Noise) failed."""


class PeerIdMismatchError(HandshakeError):
    """The remote proved a different identity from the PeerId we dialed."""


class NegotiationError(P2PError):
    """multistream-select could not agree on a protocol."""


class ProtocolNotSupportedError(NegotiationError):
    """The peer does not support any of the protocols we offered."""


class MuxerError(P2PError):
    """A stream multiplexer (yamux, mplex) problem."""


class StreamResetError(MuxerError):
    """The stream was reset (by the peer, or locally after an error)."""


class StreamClosedError(MuxerError, LocalProtocolError):
    """The stream is closed for writing (or entirely) and cannot be used for this."""


class ConnectionClosedError(P2PError):
    """The connection is closed; open a new one to continue."""


class TooManyStreamsError(MuxerError):
    """A limit on concurrent streams was reached."""


class P2PTimeoutError(P2PError, TimeoutError):
    """An operation did not complete in time."""


class DialError(P2PError):
    """Could not reach the peer at any of its addresses."""


class DiscoveryError(P2PError):
    """A peer could not be found by discovery."""


class RecordError(P2PError, ValueError):
    """A DHT record is invalid, or in a namespace this node does not store."""
