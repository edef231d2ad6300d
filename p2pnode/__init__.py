"""p2pnode: a pure-asyncio, libp2p wire-compatible peer-to-peer task exchange.

The stack, bottom-up, one package a layer: :mod:`p2pnode.wire` (the sans-I/O
cores: keys, multiaddrs, multistream, Noise, yamux, mplex), :mod:`p2pnode.net`
(the asyncio edge: transport, :class:`Connection`, :class:`Stream`),
:mod:`p2pnode.routing` (peer store, address cache, mDNS), :mod:`p2pnode.protocols`
(ping, identify, tasks), and the :class:`Node` that composes them.
"""

from p2pnode.errors import (
    ConnectionClosedError,
    DecodeError,
    DialError,
    DiscoveryError,
    HandshakeError,
    IdentityError,
    LocalProtocolError,
    MultiaddrError,
    MuxerError,
    NegotiationError,
    P2PError,
    P2PTimeoutError,
    PeerIdMismatchError,
    ProtocolNotSupportedError,
    RemoteProtocolError,
    StreamClosedError,
    StreamResetError,
)
from p2pnode.net.connection import Connection
from p2pnode.net.stream import Stream
from p2pnode.node import AGENT_VERSION, ConnectionEvent, Node, NodeConfig
from p2pnode.wire.identity import Identity, PeerId, PublicKey
from p2pnode.wire.multiaddr import Multiaddr

__version__ = "0.1.0"

# The task protocol's names, imported on first use so that `import p2pnode` stays light.
_TASK_NAMES = frozenset(
    {
        "EchoHandler",
        "ExecHandler",
        "PythonHandler",
        "TaskError",
        "TaskFailedError",
        "TaskRefusedError",
        "TaskRequest",
        "TaskResult",
        "TaskServer",
        "TaskTimeoutError",
        "send_task",
    }
)


def __getattr__(name: str) -> object:
    if name not in _TASK_NAMES:
        raise AttributeError(f"module 'p2pnode' has no attribute {name!r}")
    from p2pnode.protocols import task

    return getattr(task, name)


__all__ = [
    "AGENT_VERSION",
    "Connection",
    "ConnectionClosedError",
    "ConnectionEvent",
    "DecodeError",
    "DialError",
    "DiscoveryError",
    "EchoHandler",
    "ExecHandler",
    "HandshakeError",
    "Identity",
    "IdentityError",
    "LocalProtocolError",
    "Multiaddr",
    "MultiaddrError",
    "MuxerError",
    "NegotiationError",
    "Node",
    "NodeConfig",
    "P2PError",
    "P2PTimeoutError",
    "PeerId",
    "PeerIdMismatchError",
    "ProtocolNotSupportedError",
    "PublicKey",
    "PythonHandler",
    "RemoteProtocolError",
    "Stream",
    "StreamClosedError",
    "StreamResetError",
    "TaskError",
    "TaskFailedError",
    "TaskRefusedError",
    "TaskRequest",
    "TaskResult",
    "TaskServer",
    "TaskTimeoutError",
    "send_task",
]
