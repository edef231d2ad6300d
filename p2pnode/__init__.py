"""p2pnode: a pure-asyncio, libp2p wire-compatible peer-to-peer task exchange.

The stack, bottom-up, one package a layer: :mod:`p2pnode.wire` (the sans-I/O
cores: keys, multiaddrs, multistream, Noise, yamux, mplex), :mod:`p2pnode.net`
(the asyncio edge: transport, :class:`Connection`, :class:`Stream`),
:mod:`p2pnode.routing` (peer store, address cache, mDNS), :mod:`p2pnode.protocols`
(ping, identify, tasks), and the :class:`Node` that composes them.
"""

from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Every name is imported on first use, so that `import p2pnode.cli` (and `p2pnode --help`)
# does not pay for asyncio, cryptography and the whole stack.
_ERRORS = (
    "ConnectionClosedError DecodeError DialError DiscoveryError HandshakeError IdentityError "
    "LocalProtocolError MultiaddrError MuxerError NegotiationError P2PError P2PTimeoutError "
    "PeerIdMismatchError ProtocolNotSupportedError RemoteProtocolError StreamClosedError "
    "StreamResetError"
)
_TASK = (
    "EchoHandler ExecHandler PythonHandler TaskError TaskFailedError TaskRefusedError "
    "TaskRequest TaskResult TaskServer TaskTimeoutError send_task"
)
_HOMES = {
    **dict.fromkeys(_ERRORS.split(), "p2pnode.errors"),
    **dict.fromkeys(_TASK.split(), "p2pnode.protocols.task"),
    "Connection": "p2pnode.net.connection",
    "Stream": "p2pnode.net.stream",
    **dict.fromkeys(("AGENT_VERSION", "ConnectionEvent", "Node", "NodeConfig"), "p2pnode.node"),
    **dict.fromkeys(("Identity", "PeerId", "PublicKey"), "p2pnode.wire.identity"),
    "Multiaddr": "p2pnode.wire.multiaddr",
    **dict.fromkeys(("Part", "TaskProgress"), "p2pnode.protocols.task.messages2"),
    **dict.fromkeys(("TaskOutput", "run_task", "stream_task"), "p2pnode.protocols.task.client2"),
    "Task": "p2pnode.protocols.task.handlers2",
    **dict.fromkeys(("AgentCard", "fetch_card"), "p2pnode.protocols.card"),
}

if TYPE_CHECKING:
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
    from p2pnode.protocols.card import AgentCard, fetch_card
    from p2pnode.protocols.task import (
        EchoHandler,
        ExecHandler,
        PythonHandler,
        TaskError,
        TaskFailedError,
        TaskRefusedError,
        TaskRequest,
        TaskResult,
        TaskServer,
        TaskTimeoutError,
        send_task,
    )
    from p2pnode.protocols.task.client2 import TaskOutput, run_task, stream_task
    from p2pnode.protocols.task.handlers2 import Task
    from p2pnode.protocols.task.messages2 import Part, TaskProgress
    from p2pnode.wire.identity import Identity, PeerId, PublicKey
    from p2pnode.wire.multiaddr import Multiaddr


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'p2pnode' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "AGENT_VERSION",
    "AgentCard",
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
    "Part",
    "PeerId",
    "PeerIdMismatchError",
    "ProtocolNotSupportedError",
    "PublicKey",
    "PythonHandler",
    "RemoteProtocolError",
    "Stream",
    "StreamClosedError",
    "StreamResetError",
    "Task",
    "TaskError",
    "TaskFailedError",
    "TaskOutput",
    "TaskProgress",
    "TaskRefusedError",
    "TaskRequest",
    "TaskResult",
    "TaskServer",
    "TaskTimeoutError",
    "fetch_card",
    "run_task",
    "send_task",
    "stream_task",
]
