"""The iterative Kademlia lookup as a sans-I/O state machine (like h11: no sockets, no clock).

The driver loops: send a request to each peer ``next_requests(now)`` names, feed each
answer to ``on_response`` and each error to ``on_failure``, call ``on_failure`` for the
peers ``expired(now)`` names (wake up at ``next_deadline()``), and stop when ``done``;
then read ``result()``.

Rules (libp2p spec, "Peer routing"): at most ``alpha`` requests in flight; a peer is
never queried twice; only the ``k`` closest peers not known to have failed are
queried, so the lookup ends when those have all answered (or there are fewer than
``k`` and all answered). GET_PROVIDERS may stop at ``max_providers`` providers,
GET_VALUE at ``quorum`` records, FIND_NODE when the target is learned
(``stop_at_target``).

Memory and work are bounded whatever peers send: at most ``max_candidates`` peers are
tracked (the closest; farther ones are forgotten, except requests in flight), at most
``2 * k`` closer peers are read from one answer, at most ``max_queries`` requests are
sent, at most ``max_providers`` (else MAX_PROVIDERS_KEPT) providers are kept.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from p2pnode.wire.identity import PeerId
from p2pnode.wire.kad.keys import kad_key, kad_key_for_peer
from p2pnode.wire.kad.messages import MessageType, PeerInfo, Record

DEFAULT_ALPHA = 3
DEFAULT_REQUEST_TIMEOUT = 10.0
MAX_PROVIDERS_KEPT = 256
MAX_RECORDS_KEPT = 64
_LOOKUP_KINDS = (MessageType.FIND_NODE, MessageType.GET_PROVIDERS, MessageType.GET_VALUE)


class _State(Enum):
    WAITING = 0
    IN_FLIGHT = 1
    ANSWERED = 2
    FAILED = 3


@dataclass(slots=True)
class _Candidate:
    info: PeerInfo
    distance: int
    hop: int
    state: _State = _State.WAITING
    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What a lookup found, and what it cost."""

    closest: tuple[PeerInfo, ...]  # the k closest peers that answered, nearest first
    providers: tuple[PeerInfo, ...] = ()
    records: tuple[tuple[PeerId, Record], ...] = ()  # GET_VALUE: (who, record), unvalidated
    target: PeerInfo | None = None  # FIND_NODE: the target as a peer described it
    hops: int = 0  # deepest query-tree level queried: seeds are 1, peers they named 2, ...
    messages: int = 0  # requests sent
    failures: int = 0  # requests that failed or timed out
    stop_reason: str = ""  # converged, exhausted, target, providers, quorum, max_queries
    ignored: dict[str, int] = field(default_factory=dict)  # peers or answers ignored, by reason


class Lookup:
    """One iterative lookup of ``target_key`` (the raw key bytes a request carries)."""

    def __init__(
        self,
        target_key: bytes,
        seeds: Iterable[PeerId | PeerInfo],
        *,
        local_id: PeerId,
        kind: MessageType = MessageType.FIND_NODE,
        k: int = 20,
        alpha: int = DEFAULT_ALPHA,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_candidates: int | None = None,
        max_queries: int | None = None,
        max_providers: int | None = None,
        quorum: int | None = None,
        stop_at_target: bool = False,
    ) -> None:
        if kind not in _LOOKUP_KINDS:
            raise ValueError(f"a lookup is FIND_NODE, GET_PROVIDERS or GET_VALUE, not {kind.name}")
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be at least 1")
        self.target_key = bytes(target_key)
        self.target = kad_key(self.target_key)
        self.kind = kind
        self.local_id = local_id
        self.k = k
        self.alpha = alpha
        self.request_timeout = request_timeout
        self.max_candidates = max(max_candidates or 5 * k, k)  # default 100 for k = 20
        self.max_queries = max_queries or 10 * k  # default 200 for k = 20
        self.max_providers = max_providers
        self.quorum = quorum
        self.stop_at_target = stop_at_target
        self._distances: list[int] = []  # sorted
        self._by_distance: dict[int, _Candidate] = {}
        self._by_peer: dict[PeerId, _Candidate] = {}
        self._queried: set[PeerId] = set()
        self._in_flight: dict[PeerId, _Candidate] = {}
        self._providers: dict[PeerId, PeerInfo] = {}
        self._records: list[tuple[PeerId, Record]] = []
        self._target_info: PeerInfo | None = None
        self._stop = ""
        self._hops = 0
        self._messages = 0
        self._failures = 0
        self._ignored: dict[str, int] = {}
        for seed in seeds:
            self._learn(seed if isinstance(seed, PeerInfo) else PeerInfo(seed), hop=1)

    def _ignore(self, reason: str) -> None:
        self._ignored[reason] = self._ignored.get(reason, 0) + 1

    def _learn(self, info: PeerInfo, hop: int) -> None:
        peer = info.peer_id
        if peer == self.local_id:
            self._ignore("self")
            return
        known = self._by_peer.get(peer)
        if known is not None:
            if known.state is _State.WAITING:
                known.hop = min(known.hop, hop)
                if not known.info.addrs and info.addrs:
                    known.info = info
            return
        if peer in self._queried:
            return
        distance = kad_key_for_peer(peer) ^ self.target
        if len(self._distances) >= self.max_candidates and (
            distance > self._distances[-1] or not self._forget_farthest()
        ):
            self._ignore("over_candidate_cap")
            return
        candidate = _Candidate(info, distance, hop)
        bisect.insort(self._distances, distance)
        self._by_distance[distance] = candidate
        self._by_peer[peer] = candidate

    def _forget_farthest(self) -> bool:
        for index in range(len(self._distances) - 1, -1, -1):
            candidate = self._by_distance[self._distances[index]]
            if candidate.state is not _State.IN_FLIGHT:
                del self._distances[index]
                del self._by_distance[candidate.distance]
                del self._by_peer[candidate.info.peer_id]
                return True
        return False

    def _window(self) -> Iterable[_Candidate]:
        """The k closest candidates not known to have failed, nearest first."""
        taken = 0
        for distance in self._distances:
            candidate = self._by_distance[distance]
            if candidate.state is _State.FAILED:
                continue
            yield candidate
            taken += 1
            if taken == self.k:
                return

    @property
    def done(self) -> bool:
        """True when the lookup has its answer (further answers change nothing)."""
        if self._stop:
            return True
        can_send = self._messages < self.max_queries
        for candidate in self._window():
            if candidate.state is _State.IN_FLIGHT:
                return False
            if candidate.state is _State.WAITING and can_send:
                return False
        return True

    def next_requests(self, now: float) -> list[PeerId]:
        """Peers to send a request to now; each is marked in flight."""
        if self.done:
            return []
        chosen: list[PeerId] = []
        for candidate in list(self._window()):
            if len(self._in_flight) >= self.alpha or self._messages >= self.max_queries:
                break
            if candidate.state is _State.WAITING:
                peer = candidate.info.peer_id
                candidate.state = _State.IN_FLIGHT
                candidate.sent_at = now
                self._in_flight[peer] = candidate
                self._queried.add(peer)
                self._messages += 1
                self._hops = max(self._hops, candidate.hop)
                chosen.append(peer)
        return chosen

    def on_response(
        self,
        peer: PeerId,
        closer: Sequence[PeerInfo],
        providers: Sequence[PeerInfo] = (),
        record: Record | None = None,
        now: float = 0.0,
    ) -> bool:
        """Feed ``peer``'s answer; False (and ignored) if no request to it is in flight."""
        candidate = self._in_flight.pop(peer, None)
        if candidate is None:
            self._ignore("unsolicited")
            return False
        candidate.state = _State.ANSWERED
        if self.kind is MessageType.FIND_NODE and peer.to_bytes() == self.target_key:
            self._found_target(candidate.info)
        hop = candidate.hop + 1
        for info in closer[: 2 * self.k]:
            if info.peer_id == peer:
                self._ignore("responder")
                continue
            if self.kind is MessageType.FIND_NODE and info.peer_id.to_bytes() == self.target_key:
                self._found_target(info)
            self._learn(info, hop)
        if len(closer) > 2 * self.k:
            self._ignore("over_closer_cap")
        if self.kind is MessageType.GET_PROVIDERS:
            self._add_providers(providers)
        if self.kind is MessageType.GET_VALUE and record is not None:
            if record.key != self.target_key:
                self._ignore("record_for_other_key")
            elif len(self._records) < MAX_RECORDS_KEPT:
                self._records.append((peer, record))
                if self.quorum is not None and len(self._records) >= self.quorum:
                    self._stop = self._stop or "quorum"
        return True

    def _found_target(self, info: PeerInfo) -> None:
        if self._target_info is None or (info.addrs and not self._target_info.addrs):
            self._target_info = info
        if self.stop_at_target:
            self._stop = self._stop or "target"

    def _add_providers(self, providers: Sequence[PeerInfo]) -> None:
        cap = self.max_providers or MAX_PROVIDERS_KEPT
        for info in providers:
            known = self._providers.get(info.peer_id)
            if known is not None:
                if not known.addrs and info.addrs:
                    self._providers[info.peer_id] = info
            elif len(self._providers) < cap:
                self._providers[info.peer_id] = info
        if self.max_providers is not None and len(self._providers) >= self.max_providers:
            self._stop = self._stop or "providers"

    def on_failure(self, peer: PeerId, now: float = 0.0) -> bool:
        """``peer``'s request failed or timed out; False if none to it was in flight."""
        candidate = self._in_flight.pop(peer, None)
        if candidate is None:
            return False
        candidate.state = _State.FAILED
        self._failures += 1
        return True

    def expired(self, now: float) -> list[PeerId]:
        """In-flight requests older than ``request_timeout`` at ``now`` (pass each to
        ``on_failure``)."""
        limit = now - self.request_timeout
        return [p for p, c in self._in_flight.items() if c.sent_at <= limit]

    def next_deadline(self) -> float | None:
        """When the oldest in-flight request times out, or None when none is in flight."""
        if not self._in_flight:
            return None
        return min(c.sent_at for c in self._in_flight.values()) + self.request_timeout

    @property
    def in_flight(self) -> list[PeerId]:
        """Peers with a request outstanding."""
        return list(self._in_flight)

    def peer_info(self, peer: PeerId) -> PeerInfo | None:
        """What the lookup learned about ``peer`` (its addresses, to dial it)."""
        candidate = self._by_peer.get(peer)
        return None if candidate is None else candidate.info

    def _stop_reason(self) -> str:
        if self._stop:
            return self._stop
        if not self.done:
            return ""
        window = list(self._window())
        if any(c.state is _State.WAITING for c in window):
            return "max_queries"
        return "converged" if len(window) == self.k else "exhausted"

    def result(self) -> LookupResult:
        """The answer so far (final once ``done``)."""
        answered = [
            self._by_distance[d].info
            for d in self._distances
            if self._by_distance[d].state is _State.ANSWERED
        ][: self.k]
        return LookupResult(
            closest=tuple(answered),
            providers=tuple(self._providers.values()),
            records=tuple(self._records),
            target=self._target_info,
            hops=self._hops,
            messages=self._messages,
            failures=self._failures,
            stop_reason=self._stop_reason(),
            ignored=dict(self._ignored),
        )
