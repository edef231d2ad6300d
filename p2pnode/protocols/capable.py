"""Routing a task to a capable peer: read candidates' cards, rank them, run, retry, fan out.

Candidates come from the caller (connected peers, mDNS, the DHT's providers). Each
candidate's card (cached for a short TTL) tells whether it serves the kind and how
loaded it is; the least-loaded one with the lowest RTT goes first. On ``busy``,
``shutting_down`` or a lost connection the task moves to the next candidate, within the
deadline. ``fan_out`` runs on N capable peers at once (``first``: the first success
wins and the others are cancelled).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pnode.errors import DiscoveryError, P2PError
from p2pnode.protocols.card import AgentCard, CardCache
from p2pnode.protocols.task.client2 import InputLike, TaskOutput, run_task
from p2pnode.protocols.task.messages import TaskError, new_task_id
from p2pnode.wire.identity import PeerId

if TYPE_CHECKING:
    from p2pnode.net.host import Host, PeerLike

RETRY_ELSEWHERE = frozenset({"busy", "shutting_down"})
CARD_CONCURRENCY = 16


@dataclass(slots=True)
class Candidate:
    """A peer whose card lists the kind, with what ranks it."""

    peer: PeerId  # as the connection proved it
    card: AgentCard
    rtt_ms: float

    @property
    def load(self) -> float:
        load = self.card.load
        return load.running / load.max if load.max else 1.0


@dataclass(slots=True)
class PeerResult:
    """One peer's outcome in a fan-out: an output or the error."""

    peer_id: str
    output: TaskOutput | None = None
    error: P2PError | None = None


async def capable_peers(
    node: Host,
    peers: Iterable[PeerLike],
    kind: str,
    *,
    cards: CardCache | None = None,
    timeout: float = 5.0,
) -> list[Candidate]:
    """The peers among ``peers`` whose card serves ``kind``, best first."""
    cards = cards or CardCache()
    limit = asyncio.Semaphore(CARD_CONCURRENCY)

    async def examine(peer: PeerLike) -> Candidate | None:
        async with limit:
            started = time.perf_counter()
            try:
                conn = await asyncio.wait_for(node.connect(peer), timeout)
                card = await cards.card(node, conn.remote_peer, timeout)
            except (P2PError, TimeoutError, OSError):
                return None
            rtt_ms = (time.perf_counter() - started) * 1000
        if card.kind(kind) is None:
            return None
        return Candidate(conn.remote_peer, card, rtt_ms)  # the verified peer, not its address

    found = await asyncio.gather(*(examine(p) for p in dict.fromkeys(peers)))
    capable = [c for c in found if c is not None]
    capable.sort(key=lambda c: (round(c.load, 2), c.rtt_ms))
    return capable


async def run_on_any(
    node: Host,
    candidates: list[Candidate],
    input: InputLike = (),
    *,
    kind: str,
    timeout: float | None = None,
    **options: Any,
) -> TaskOutput:
    """Run on the best candidate; on busy, shutting down or a lost connection, the next."""
    if not candidates:
        raise DiscoveryError(f"no peer that serves kind {kind!r} was found")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    task_id = options.pop("task_id", None) or new_task_id()
    errors: list[str] = []
    for candidate in candidates:
        left = None if deadline is None else deadline - loop.time()
        if left is not None and left <= 0:
            break
        try:
            return await run_task(
                node, candidate.peer, input, kind=kind, timeout=left, task_id=task_id, **options
            )
        except TaskError as exc:
            if exc.code not in RETRY_ELSEWHERE:
                raise
            errors.append(f"{candidate.card.peer_id}: {exc.code}")
        except P2PError as exc:  # the connection was lost: try the next one
            errors.append(f"{candidate.card.peer_id}: {exc}")
    raise DiscoveryError(
        f"no capable peer ran the task ({len(candidates)} tried): " + "; ".join(errors)
    )


async def fan_out(
    node: Host,
    candidates: list[Candidate],
    input: InputLike = (),
    *,
    kind: str,
    count: int,
    first: bool = False,
    timeout: float | None = None,
    **options: Any,
) -> list[PeerResult]:
    """Run on ``count`` candidates at once; each one's result (``first``: the first success)."""
    chosen = candidates[:count]
    if not chosen:
        raise DiscoveryError(f"no peer that serves kind {kind!r} was found")

    async def one(candidate: Candidate) -> PeerResult:
        try:
            output = await run_task(
                node, candidate.peer, input, kind=kind, timeout=timeout, **options
            )
        except P2PError as exc:
            return PeerResult(candidate.card.peer_id, error=exc)
        return PeerResult(candidate.card.peer_id, output)

    running = [asyncio.ensure_future(one(c)) for c in chosen]
    if not first:
        return list(await asyncio.gather(*running))
    results: list[PeerResult] = []
    try:
        for next_done in asyncio.as_completed(running):
            result = await next_done
            results.append(result)
            if result.output is not None:
                return [result]
        return results  # nobody succeeded: every error
    finally:
        for task in running:
            task.cancel()  # leaving run_task cancels the task on its peer
        await asyncio.gather(*running, return_exceptions=True)
