"""The interface of a peer router: something that can find a peer's addresses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr


class PeerRouter(Protocol):
    """Finds addresses of a PeerId (the address cache, mDNS; the DHT next).

    ``find_peer`` returns what it found (empty when nothing) or raises a P2PError
    that says why; ``remember`` is told which addresses then worked.
    """

    name: str

    async def find_peer(self, peer_id: PeerId, timeout: float) -> Sequence[Multiaddr]:
        """Addresses of ``peer_id``, looking for at most ``timeout`` seconds."""
        ...

    def remember(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """``addrs`` of ``peer_id`` just worked."""


@dataclass(slots=True)
class ConnectTrace:
    """How :meth:`Node.connect` reached a peer: which source found it, and the time spent."""

    resolved_by: str | None = None  # "connected", "peerstore", or a router's name
    lookup_ms: float = 0.0
    connect_ms: float = 0.0
