"""What a protocol needs from a node: :class:`Host`, which :class:`~p2pnode.node.Node` is.

Protocols (ping, identify, tasks, ...) are written against this interface, so they
sit below the node that composes them and never import it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from p2pnode.net.connection import Connection
from p2pnode.net.stream import Stream
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

StreamHandler = Callable[[Stream], Awaitable[None]]
PeerLike = PeerId | Multiaddr | str  # a PeerId, or a multiaddr (object or text) or PeerId text


class Host(Protocol):
    """A node as protocols see it: its identity, its handlers, its connections."""

    @property
    def peer_id(self) -> PeerId:
        """This node's PeerId."""
        ...

    def set_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id`` with ``handler(stream)``."""

    def remove_handler(self, protocol_id: str) -> None:
        """Stop serving ``protocol_id``."""

    async def connect(self, peer: PeerLike) -> Connection:
        """A usable connection to ``peer``, finding and dialing it if needed."""
        ...

    async def new_stream(
        self, peer: PeerLike, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream:
        """A stream to ``peer`` speaking the first of ``protocols`` it supports."""
        ...
