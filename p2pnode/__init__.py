"""p2pnode: a pure-asyncio, libp2p wire-compatible peer-to-peer task exchange.

The stack, bottom-up: :mod:`~p2pnode.transport` (TCP, the upgrade),
:mod:`~p2pnode.multistream`, :mod:`~p2pnode.noise`, :mod:`~p2pnode.yamux` /
:mod:`~p2pnode.mplex`, the :class:`Stream` and :class:`Connection` asyncio
edge, the built-in protocols (ping, identify, tasks), and the :class:`Node`
that composes them.
"""

from .connection import Connection
from .errors import (
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
from .identity import Identity, PeerId, PublicKey
from .multiaddr import Multiaddr
from .node import AGENT_VERSION, ConnectionEvent, Node, NodeConfig
from .stream import Stream

__version__ = "0.1.0"

# Task protocol names, imported on first use so that `import p2pnode` stays light.
_LAZY = {
    "TaskServer": "task_server",
    "EchoHandler": "task_handlers",
    "ExecHandler": "task_handlers",
    "PythonHandler": "task_handlers",
    "send_task": "task_client",
    "TaskResult": "task_client",
    "TaskRequest": "task",
    "TaskError": "task",
    "TaskRefusedError": "task",
    "TaskFailedError": "task",
    "TaskTimeoutError": "task",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pnode' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)


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
