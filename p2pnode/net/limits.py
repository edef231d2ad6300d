"""Limits on what peers can make a node hold: one object, documented defaults.

A limit that is hit refuses only what it must (a socket, a connection, a stream), is
counted in :class:`Refusals`, and is logged at most once per peer (or address) per
``LOG_INTERVAL`` seconds, so a flood cannot flood the log either.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0


@dataclass(slots=True, frozen=True)
class Limits:
    """Defaults suit a small agent; raise them for a busy relay or server."""

    max_inbound_handshakes: int = 64  # inbound connections still in the Noise handshake
    max_inbound_handshakes_per_ip: int = 8
    max_inbound_connections_per_ip: int = 64  # established, from one IP address
    max_connections_per_peer: int = 8  # established, with one PeerId (both directions)
    max_inbound_streams: int = 256  # per connection, open at once
    max_negotiating_streams: int = 128  # per connection, inbound streams not yet on a protocol
    max_inbound_streams_per_protocol: int = 256  # per peer (all its connections), per protocol
    # receive windows (yamux) and unread data (mplex) one peer may make us hold, over all
    # its connections, and all peers together; a stream that does not fit is refused
    peer_receive_memory: int = 64 * 1024 * 1024
    node_receive_memory: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


def limits_with(base: Limits, settings: Iterable[str]) -> Limits:
    """``base`` with ``NAME=VALUE`` settings applied; ValueError naming what is wrong."""
    names = [f.name for f in fields(Limits)]
    changes: dict[str, int] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise ValueError(
                f"unknown limit {setting!r}: use NAME=VALUE, NAME one of {', '.join(names)}"
            )
        try:
            changes[name] = int(value)
        except ValueError:
            raise ValueError(f"limit {name} needs a whole number, not {value!r}") from None
    return replace(base, **changes)


class Refusals:
    """Counts of refusals by limit, and a log line per source at most every LOG_INTERVAL."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: Counter[tuple[str, str]] = Counter()

    def refuse(
        self, limit: str, source: str, detail: str | Callable[[], str], count: int = 1
    ) -> None:
        """Count ``count`` refusals of ``source`` (a peer or address) by ``limit``; log them
        if due. ``detail`` may be a function: it is called only when the line is logged."""
        self.counts[limit] += count
        key = (limit, source)
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            self._unlogged[key] += count
            return
        if len(self._last_logged) > 4096:  # bounded: forget the oldest half
            for old in list(self._last_logged)[:2048]:
                del self._last_logged[old]
                self._unlogged.pop(old, None)
        self._last_logged[key] = now
        more = self._unlogged.pop(key, 0) + count - 1
        if not isinstance(detail, str):
            detail = detail()
        suffix = f" ({more} more since the last report)" if more else ""
        log.warning("limit %s: refused %s: %s%s", limit, source, detail, suffix)


class MemoryBudget:
    """Bytes that may be held at once, optionally inside a parent's budget.

    A reservation succeeds only when it fits here and in every ancestor; what is
    reserved must be released exactly once.
    """

    __slots__ = ("limit", "parent", "used")

    def __init__(self, limit: int, parent: MemoryBudget | None = None) -> None:
        self.limit = limit
        self.parent = parent
        self.used = 0

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit here and above; False (nothing taken) if not."""
        budget: MemoryBudget | None = self
        while budget is not None:
            if budget.used + size > budget.limit:
                return False
            budget = budget.parent
        budget = self
        while budget is not None:
            budget.used += size
            budget = budget.parent
        return True

    def force(self, size: int) -> None:
        """Take ``size`` bytes here and above even past a limit (what we chose to hold)."""
        self.used += size
        budget = self.parent
        while budget is not None:
            budget.used += size
            budget = budget.parent

    def release(self, size: int) -> None:
        self.used -= size
        budget = self.parent
        while budget is not None:
            budget.used -= size
            budget = budget.parent

    def room(self) -> int:
        """What :meth:`reserve` would take now: the least room here or above."""
        room = self.limit - self.used
        budget = self.parent
        while budget is not None:
            above = budget.limit - budget.used
            if above < room:
                room = above
            budget = budget.parent
        return room if room > 0 else 0


class PeerBudgets:
    """One :class:`MemoryBudget` per peer under a node-wide one.

    A peer's budget is kept while it is idle (a task per stream would otherwise make and
    drop one each time); idle ones are forgotten once more than ``MAX_IDLE_PEERS`` pile up,
    except those a connection still holds (see :meth:`acquire`).
    """

    MAX_IDLE_PEERS = 1024

    def __init__(self, node_limit: int, peer_limit: int) -> None:
        self.node = MemoryBudget(node_limit)
        self.peer_limit = peer_limit
        self._peers: dict[object, MemoryBudget] = {}
        self._holders: Counter[object] = Counter()

    def reserve(self, peer: object, size: int) -> bool:
        return self._budget(peer).reserve(size)

    def acquire(self, peer: object) -> MemoryBudget:
        """The peer's budget, kept until :meth:`let_go` (a connection holds it meanwhile)."""
        self._holders[peer] += 1
        return self._budget(peer)

    def let_go(self, peer: object) -> None:
        self._holders[peer] -= 1
        if self._holders[peer] <= 0:
            del self._holders[peer]

    def _budget(self, peer: object) -> MemoryBudget:
        budget = self._peers.get(peer)
        if budget is None:
            if len(self._peers) >= self.MAX_IDLE_PEERS:
                self._forget_idle()
            budget = self._peers[peer] = MemoryBudget(self.peer_limit, self.node)
        return budget

    def release(self, peer: object, size: int) -> None:
        self._peers[peer].release(size)

    def _forget_idle(self) -> None:
        held = self._holders
        for peer in [p for p, b in self._peers.items() if b.used == 0 and p not in held]:
            del self._peers[peer]

    def used_by(self, peer: object) -> int:
        budget = self._peers.get(peer)
        return budget.used if budget is not None else 0
