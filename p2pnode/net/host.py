"""What a protocol needs from a node: :class:`Host`, which :class:`~p2pnode.node.Node` is.

Protocols (ping, identify, tasks, ...) are written against this interface, so they
sit below the node that composes them and never import it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from p2pnode.net.connection import Connection
from p2pnode.net.stream import Stream
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

StreamHandler = Callable[[Stream], Awaitable[None]]
PeerLike = PeerId | Multiaddr | str  # a PeerId, or a multiaddr (object or text) or PeerId text


class PeerBook(Protocol):
    """The part of the peer store (:mod:`p2pnode.routing.peerstore`) protocols use."""

    def add_addrs(
        self, peer_id: PeerId, addrs: Iterable[Multiaddr], source: str, ttl: float = ...
    ) -> None:
        """Learn addresses of ``peer_id`` (from ``source``), valid for ``ttl`` seconds."""

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]:
        """Unexpired addresses of ``peer_id``, best first."""
        ...

    def set_identify(
        self, peer_id: PeerId, protocols: Sequence[str], agent_version: str | None
    ) -> None:
        """What identify told us about ``peer_id``."""

    def protocols_of(self, peer_id: PeerId) -> tuple[str, ...]:
        """Protocols ``peer_id`` said it serves (empty when not identified)."""
        ...


class Host(Protocol):
    """A node as protocols see it: its identity, its handlers, its connections."""

    @property
    def peer_id(self) -> PeerId:
        """This node's PeerId."""
        ...

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """Bound listen addresses, without the /p2p suffix."""
        ...

    @property
    def advertised_addrs(self) -> list[Multiaddr]:
        """What peers are told to dial: the listen addresses, then relayed addresses."""
        ...

    @property
    def peer_store(self) -> PeerBook:
        """What this node knows of other peers."""
        ...

    def connections(self, peer: PeerId | None = None) -> list[Connection]:
        """Open connections, to ``peer`` or to everyone."""
        ...

    def set_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id`` with ``handler(stream)``."""

    def remove_handler(self, protocol_id: str) -> None:
        """Stop serving ``protocol_id``."""

    async def connect(self, peer: PeerLike) -> Connection:
        """A usable connection to ``peer``, finding and dialing it if needed."""
        ...

    async def dial_first(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> Connection:
        """A connection to ``peer``: the open one, or a dial to ``addrs`` (no peer routing)."""
        ...

    def on_event(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback`` with each connection event (``kind``, ``direction``, ``addr``)."""

    async def new_stream(
        self, peer: PeerLike, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream:
        """A stream to ``peer`` speaking the first of ``protocols`` it supports."""
        ...
