"""What a DHT server stores for others: provider records, bounded, with expiry.

Caps (documented defaults): 50,000 records in all, 1,000 per providing peer, 64
providers per key, 8 addresses per provider; a record lives 48 hours unless its
provider republishes it (go and js republish every 22 h). A full store refuses new
records instead of dropping old ones, so a flood from one peer cannot push out others.

``/pk/`` values are checked by :func:`validate_pk_record`; no other namespace is kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pnode.errors import IdentityError, RecordError
from p2pnode.wire.identity import PeerId, PublicKey
from p2pnode.wire.kad.keys import PK_PREFIX, is_multihash
from p2pnode.wire.kad.messages import PeerInfo
from p2pnode.wire.multiaddr import Multiaddr

PROVIDER_TTL = 48 * 3600.0
MAX_RECORDS = 50_000
MAX_PER_PEER = 1_000
MAX_PROVIDERS_PER_KEY = 64
MAX_ADDRS_PER_PROVIDER = 8


@dataclass(slots=True)
class _Provider:
    addrs: tuple[Multiaddr, ...]
    expires: float


class ProviderStore:
    """Provider records by key; time is passed in."""

    def __init__(
        self,
        *,
        max_records: int = MAX_RECORDS,
        max_per_peer: int = MAX_PER_PEER,
        max_per_key: int = MAX_PROVIDERS_PER_KEY,
        ttl: float = PROVIDER_TTL,
    ) -> None:
        self.max_records = max_records
        self.max_per_peer = max_per_peer
        self.max_per_key = max_per_key
        self.ttl = ttl
        self._keys: dict[bytes, OrderedDict[PeerId, _Provider]] = {}
        self._per_peer: dict[PeerId, int] = {}
        self._size = 0
        self.refused = 0

    def __len__(self) -> int:
        return self._size

    def add(self, key: bytes, provider: PeerId, addrs: Sequence[Multiaddr], now: float) -> bool:
        """Store or refresh a record; False when a cap refuses it."""
        providers = self._keys.get(key)
        if providers is not None and provider in providers:
            providers[provider] = _Provider(tuple(addrs[:MAX_ADDRS_PER_PROVIDER]), now + self.ttl)
            providers.move_to_end(provider)
            return True
        if (
            self._size >= self.max_records
            or self._per_peer.get(provider, 0) >= self.max_per_peer
            or (providers is not None and len(providers) >= self.max_per_key)
        ):
            self.refused += 1
            return False
        if providers is None:
            providers = self._keys[key] = OrderedDict()
        providers[provider] = _Provider(tuple(addrs[:MAX_ADDRS_PER_PROVIDER]), now + self.ttl)
        self._per_peer[provider] = self._per_peer.get(provider, 0) + 1
        self._size += 1
        return True

    def get(self, key: bytes, now: float, limit: int = 20) -> list[PeerInfo]:
        """Unexpired providers of ``key``, most recently refreshed first."""
        providers = self._keys.get(key)
        if not providers:
            return []
        found = []
        for peer, record in reversed(providers.items()):
            if record.expires > now:
                found.append(PeerInfo(peer, record.addrs))
                if len(found) == limit:
                    break
        return found

    def expire(self, now: float) -> int:
        """Drop expired records; how many went."""
        dropped = 0
        for key in list(self._keys):
            providers = self._keys[key]
            for peer in [p for p, r in providers.items() if r.expires <= now]:
                del providers[peer]
                self._forget(peer)
                dropped += 1
            if not providers:
                del self._keys[key]
        return dropped

    def _forget(self, peer: PeerId) -> None:
        self._size -= 1
        left = self._per_peer[peer] - 1
        if left:
            self._per_peer[peer] = left
        else:
            del self._per_peer[peer]


def accept_provider(sender: PeerId, providers: Iterable[PeerInfo]) -> list[PeerInfo]:
    """The providers of an ADD_PROVIDER we may store: the sender itself, with addresses.

    A peer may only announce itself (the spec; go and js do the same), and a record
    without an address could never be dialed.
    """
    return [p for p in providers if p.peer_id == sender and p.addrs]


def check_provider_key(key: bytes) -> None:
    """Provider keys are multihashes (js parses them as CIDs); RecordError otherwise."""
    if not is_multihash(key):
        raise RecordError("a provider record key must be a multihash")


def validate_pk_record(key: bytes, value: bytes | None) -> PeerId:
    """Check a ``/pk/<peer id>`` key, and ``value`` (a PublicKey protobuf) when given.

    Returns the key's PeerId; RecordError for another namespace, a bad id, or a key
    that is not that peer's.
    """
    if not key.startswith(PK_PREFIX):
        shown = key[:32].decode(errors="replace")
        raise RecordError(f"only /pk/ records are stored here, not {shown!r}")
    try:
        peer = PeerId.from_bytes(key[len(PK_PREFIX) :])
    except IdentityError as exc:
        raise RecordError(f"a /pk/ key must end in a PeerId: {exc}") from None
    if value is not None:
        try:
            public = PublicKey.from_protobuf(value)
        except IdentityError as exc:
            raise RecordError(f"a /pk/ value must be a public key: {exc}") from None
        if public.peer_id() != peer:
            raise RecordError(f"the public key in the record is not {peer}'s")
    return peer
