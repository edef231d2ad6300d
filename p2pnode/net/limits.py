"""Limits on what peers can make a node hold: one object, documented defaults.

A limit that is hit refuses only what it must (a socket, a connection, a stream), is
counted in :class:`Refusals`, and is logged at most once per peer (or address) per
``LOG_INTERVAL`` seconds, so a flood cannot flood the log either.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

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
    max_negotiating_streams: int = 32  # per connection, inbound streams not yet on a protocol

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


class Refusals:
    """Counts of refusals by limit, and a log line per source at most every LOG_INTERVAL."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._last_logged: dict[tuple[str, str], float] = {}
        self._unlogged: Counter[tuple[str, str]] = Counter()

    def refuse(self, limit: str, source: str, detail: str) -> None:
        """Count a refusal of ``source`` (a peer or address) by ``limit``; log it if due."""
        self.counts[limit] += 1
        key = (limit, source)
        now = time.monotonic()
        last = self._last_logged.get(key)
        if last is not None and now - last < LOG_INTERVAL:
            self._unlogged[key] += 1
            return
        if len(self._last_logged) > 4096:  # bounded: forget the oldest half
            for old in list(self._last_logged)[:2048]:
                del self._last_logged[old]
                self._unlogged.pop(old, None)
        self._last_logged[key] = now
        more = self._unlogged.pop(key, 0)
        suffix = f" ({more} more since the last report)" if more else ""
        log.warning("limit %s: refused %s: %s%s", limit, source, detail, suffix)
