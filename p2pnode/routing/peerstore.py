"""The peer store: what this node knows of other peers, and since when.

Addresses carry where they came from (``dialed``, ``identify``, ``mdns``, ``cache``,
a router's name) and an expiry; protocols and the agent version come from identify.
Plain bookkeeping with the time passed in, so it is tested without clocks; bounded in
peers and in addresses per peer (least recently touched go first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

CONNECTED_TTL = 3600.0  # an address we connected to stays dialable this long
IDENTIFY_TTL = 1800.0  # addresses a peer announced in identify
DEFAULT_TTL = 600.0


@dataclass(slots=True)
class AddressRecord:
    """One address of a peer: where it came from, when it was last confirmed, when it expires."""

    addr: Multiaddr
    source: str
    seen: float
    expires: float
    connected: float | None = None  # last successful connection through it


@dataclass(slots=True)
class PeerRecord:
    """Everything known of one peer."""

    peer_id: PeerId
    addrs: dict[Multiaddr, AddressRecord] = field(default_factory=dict)
    protocols: tuple[str, ...] = ()
    agent_version: str | None = None


class PeerStore:
    """Addresses, protocols and agents of peers, bounded in size."""

    def __init__(
        self,
        *,
        max_peers: int = 4096,
        max_addrs_per_peer: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_peers = max_peers
        self.max_addrs_per_peer = max_addrs_per_peer
        self._clock = clock
        self._peers: dict[PeerId, PeerRecord] = {}  # insertion order = least recently touched first

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def _touch(self, peer_id: PeerId) -> PeerRecord:
        record = self._peers.pop(peer_id, None)
        if record is None:
            record = PeerRecord(peer_id)
            while len(self._peers) >= self.max_peers:
                del self._peers[next(iter(self._peers))]
        self._peers[peer_id] = record
        return record

    def get(self, peer_id: PeerId) -> PeerRecord | None:
        """The record of ``peer_id``, if any (expired addresses dropped)."""
        record = self._peers.get(peer_id)
        if record is not None:
            now = self._clock()
            for addr in [a for a, r in record.addrs.items() if r.expires <= now]:
                del record.addrs[addr]
        return record

    def add_addrs(
        self, peer_id: PeerId, addrs: Iterable[Multiaddr], source: str, ttl: float = DEFAULT_TTL
    ) -> None:
        """Learn addresses of ``peer_id``; a known address gets the later expiry."""
        now = self._clock()
        record = self._touch(peer_id)
        for addr in addrs:
            addr = addr.without_peer_id()
            known = record.addrs.pop(addr, None)
            if known is None:
                known = AddressRecord(addr, source, now, now + ttl)
            else:
                known.seen = now
                known.expires = max(known.expires, now + ttl)
            record.addrs[addr] = known  # re-inserted: freshest last
        while len(record.addrs) > self.max_addrs_per_peer:
            stalest = min(record.addrs.values(), key=lambda r: (r.connected or 0.0, r.seen))
            del record.addrs[stalest.addr]

    def record_connected(self, peer_id: PeerId, addr: Multiaddr) -> None:
        """A connection to ``peer_id`` through ``addr`` worked."""
        self.add_addrs(peer_id, [addr], "dialed", CONNECTED_TTL)
        record = self._peers[peer_id]
        record.addrs[addr.without_peer_id()].connected = self._clock()

    def addrs(self, peer_id: PeerId) -> list[Multiaddr]:
        """Unexpired addresses of ``peer_id``, best first: those that connected most
        recently, then the most recently learned."""
        record = self.get(peer_id)
        if record is None:
            return []
        ordered = sorted(
            record.addrs.values(), key=lambda r: (r.connected or 0.0, r.seen), reverse=True
        )
        return [r.addr for r in ordered]

    def set_identify(
        self, peer_id: PeerId, protocols: Sequence[str], agent_version: str | None
    ) -> None:
        """What identify told us about ``peer_id``."""
        record = self._touch(peer_id)
        record.protocols = tuple(protocols)
        record.agent_version = agent_version

    def protocols_of(self, peer_id: PeerId) -> tuple[str, ...]:
        """Protocols ``peer_id`` said it serves (empty when not identified)."""
        record = self._peers.get(peer_id)
        return record.protocols if record is not None else ()

    def peers(self) -> list[PeerId]:
        """Every peer in the store."""
        return list(self._peers)

    def remove(self, peer_id: PeerId) -> None:
        """Forget ``peer_id``."""
        self._peers.pop(peer_id, None)
