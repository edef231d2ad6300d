"""The Kademlia routing table: 256 k-buckets indexed by common prefix length with us.

Bucket ``i`` holds up to ``k`` peers whose key shares exactly ``i`` leading bits with
ours, least recently seen first. A full bucket does not drop anyone by itself: ``add``
names its least recently seen peer for the driver to check (ping); the driver then
calls ``evict(old, new)`` when it failed or ``keep(old)`` when it answered, as in the
Kademlia paper. Newcomers that found their bucket full wait in a small replacement
cache and take the place of a peer that is removed.

Only peers in DHT server mode belong here (they answer ``/ipfs/kad/1.0.0``); deciding
that is the driver's job (identify's protocol list), not the table's.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import Enum
from heapq import nsmallest

from p2pnode.wire.identity import PeerId
from p2pnode.wire.kad.keys import KEY_BITS, Key, common_prefix_length, kad_key, kad_key_for_peer

DEFAULT_K = 20
REFRESH_INTERVAL = 600.0
REPLACEMENTS_PER_BUCKET = 5
# Random targets for a bucket are found by hashing random ids until one lands in it,
# about 2**(i+1) tries for bucket i; deeper buckets are reached by the self-lookup
# (go-libp2p-kbucket stops at the same depth, 15, for the same reason).
MAX_REFRESH_CPL = 15


class AddStatus(Enum):
    """What ``RoutingTable.add`` did."""

    ADDED = "added"
    UPDATED = "updated"  # already present: marked seen now
    FULL = "full"  # the bucket is full: check ``AddResult.check``, the newcomer waits
    REJECTED = "rejected"  # our own id


@dataclass(frozen=True, slots=True)
class AddResult:
    status: AddStatus
    check: PeerId | None = None  # FULL: the least recently seen peer to ping, if not already


@dataclass(slots=True)
class _Entry:
    peer_id: PeerId
    key: Key
    last_seen: float


class _Bucket:
    __slots__ = ("checking", "entries", "last_refreshed", "replacements")

    def __init__(self, now: float) -> None:
        self.entries: OrderedDict[PeerId, _Entry] = OrderedDict()  # least recently seen first
        self.replacements: OrderedDict[PeerId, _Entry] = OrderedDict()
        self.checking: set[PeerId] = set()
        self.last_refreshed = now


class RoutingTable:
    """k-buckets around ``local_id``; all times are the caller's clock, in seconds."""

    def __init__(self, local_id: PeerId, k: int = DEFAULT_K, now: float = 0.0) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.local_id = local_id
        self.local_key = kad_key_for_peer(local_id)
        self.k = k
        self._buckets = [_Bucket(now) for _ in range(KEY_BITS)]
        self._size = 0

    def bucket_for(self, peer_id: PeerId) -> int:
        """Index of the bucket ``peer_id`` belongs in (256 for our own id)."""
        return common_prefix_length(self.local_key, kad_key_for_peer(peer_id))

    def add(self, peer_id: PeerId, now: float) -> AddResult:
        """Add or refresh a peer we heard from (a DHT server)."""
        if peer_id == self.local_id:
            return AddResult(AddStatus.REJECTED)
        key = kad_key_for_peer(peer_id)
        bucket = self._buckets[common_prefix_length(self.local_key, key)]
        entry = bucket.entries.get(peer_id)
        if entry is not None:
            entry.last_seen = now
            bucket.entries.move_to_end(peer_id)
            return AddResult(AddStatus.UPDATED)
        if len(bucket.entries) < self.k:
            bucket.entries[peer_id] = _Entry(peer_id, key, now)
            bucket.replacements.pop(peer_id, None)
            self._size += 1
            return AddResult(AddStatus.ADDED)
        bucket.replacements.pop(peer_id, None)
        bucket.replacements[peer_id] = _Entry(peer_id, key, now)
        while len(bucket.replacements) > REPLACEMENTS_PER_BUCKET:
            bucket.replacements.popitem(last=False)
        for old in bucket.entries:
            if old not in bucket.checking:
                bucket.checking.add(old)
                return AddResult(AddStatus.FULL, old)
        return AddResult(AddStatus.FULL)

    def evict(self, old: PeerId, new: PeerId) -> bool:
        """``old`` failed its check: remove it and put ``new`` in its place.

        True when ``new`` is now in the table (it must still be waiting in the
        replacement cache; otherwise the freed place goes to the freshest one waiting).
        """
        bucket = self._buckets[self.bucket_for(old)]
        if old not in bucket.entries:
            bucket.checking.discard(old)
            return new in bucket.entries
        waiting = bucket.replacements.pop(new, None)
        if waiting is not None:
            self._remove_from(bucket, old, promote=False)
            bucket.entries[new] = waiting
            self._size += 1
            return True
        self._remove_from(bucket, old, promote=True)
        return new in bucket.entries

    def keep(self, old: PeerId, now: float | None = None) -> None:
        """``old`` answered its check: it stays, as the most recently seen."""
        bucket = self._buckets[self.bucket_for(old)]
        bucket.checking.discard(old)
        entry = bucket.entries.get(old)
        if entry is not None:
            if now is not None:
                entry.last_seen = now
            bucket.entries.move_to_end(old)

    def mark_seen(self, peer_id: PeerId, now: float) -> bool:
        """Note that ``peer_id`` answered us; False when it is not in the table."""
        bucket = self._buckets[self.bucket_for(peer_id)]
        entry = bucket.entries.get(peer_id)
        if entry is None:
            return False
        entry.last_seen = now
        bucket.entries.move_to_end(peer_id)
        return True

    def remove(self, peer_id: PeerId) -> bool:
        """Drop a peer (gone, or no longer a DHT server); a waiting peer takes its place."""
        if peer_id == self.local_id:
            return False
        bucket = self._buckets[self.bucket_for(peer_id)]
        bucket.replacements.pop(peer_id, None)
        if peer_id not in bucket.entries:
            return False
        self._remove_from(bucket, peer_id, promote=True)
        return True

    def _remove_from(self, bucket: _Bucket, peer_id: PeerId, *, promote: bool) -> None:
        del bucket.entries[peer_id]
        bucket.checking.discard(peer_id)
        self._size -= 1
        if promote and bucket.replacements:
            newest, entry = bucket.replacements.popitem(last=True)
            bucket.entries[newest] = entry
            self._size += 1

    def closest(self, key: Key, count: int, exclude: Collection[PeerId] = ()) -> list[PeerId]:
        """Up to ``count`` peers nearest to ``key`` by XOR distance, nearest first."""
        entries = (e for b in self._buckets for e in b.entries.values() if e.peer_id not in exclude)
        return [e.peer_id for e in nsmallest(count, entries, key=lambda e: e.key ^ key)]

    def __len__(self) -> int:
        return self._size

    def __contains__(self, peer_id: object) -> bool:
        if not isinstance(peer_id, PeerId) or peer_id == self.local_id:
            return False
        return peer_id in self._buckets[self.bucket_for(peer_id)].entries

    def __iter__(self) -> Iterator[PeerId]:
        for bucket in self._buckets:
            yield from bucket.entries

    def peers(self) -> list[PeerId]:
        """Every peer in the table, bucket by bucket."""
        return list(self)

    def bucket(self, index: int) -> list[PeerId]:
        """The peers of bucket ``index``, least recently seen first."""
        return list(self._buckets[index].entries)

    def last_seen(self, peer_id: PeerId) -> float | None:
        """When ``peer_id`` was last seen, or None when it is not in the table."""
        entry = self._buckets[self.bucket_for(peer_id)].entries.get(peer_id)
        return None if entry is None else entry.last_seen

    def mark_refreshed(self, target: Key, now: float) -> None:
        """A lookup for ``target`` completed: its bucket counts as refreshed at ``now``."""
        cpl = common_prefix_length(self.local_key, target)
        if cpl < KEY_BITS:
            self._buckets[cpl].last_refreshed = now

    def buckets_needing_refresh(
        self, now: float, rng: random.Random, interval: float = REFRESH_INTERVAL
    ) -> list[tuple[int, bytes]]:
        """``(bucket, target)`` for each bucket not refreshed for ``interval`` seconds.

        ``target`` is a random binary PeerId (sha2-256 form) whose key falls in that
        bucket: look it up with FIND_NODE, then call ``mark_refreshed``. Buckets up to
        the deepest non-empty one (at most MAX_REFRESH_CPL) are considered.
        """
        deepest = max((i for i, b in enumerate(self._buckets) if b.entries), default=0)
        stale: list[tuple[int, bytes]] = []
        for cpl in range(min(deepest, MAX_REFRESH_CPL) + 1):
            if now - self._buckets[cpl].last_refreshed >= interval:
                stale.append((cpl, self._random_target(cpl, rng)))
        return stale

    def _random_target(self, cpl: int, rng: random.Random) -> bytes:
        while True:
            candidate = b"\x12\x20" + rng.randbytes(32)
            if common_prefix_length(self.local_key, kad_key(candidate)) == cpl:
                return candidate
