"""Which addresses peers see us at (identify's observed address), and which of them to trust.

Behind a NAT, a node knows only its LAN address; peers tell it (in identify) the
address its connection came from. One peer's word proves little (it may lie, or sit in
the same LAN), so an observed address counts only once ``threshold`` peers at
distinct IP addresses reported it (go-libp2p asks for 4), and only when it was seen on
a connection from or to one of our listen ports: the port a NAT mapped for an
outgoing connection from another port leads nowhere. No I/O: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from p2pnode.wire.multiaddr import Multiaddr

OBSERVATION_TTL = 40 * 60.0  # seconds an observation counts (go keeps them about as long)
DEFAULT_THRESHOLD = 4
MAX_TRACKED = 256  # distinct observed addresses kept; older ones are forgotten first


@dataclass(slots=True)
class _Seen:
    observers: dict[str, float] = field(default_factory=dict)  # observer IP -> last time


class ObservedAddrs:
    """Observed addresses and their observers."""

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.threshold = max(1, threshold)
        self._seen: dict[Multiaddr, _Seen] = {}

    def record(
        self,
        observed: Multiaddr,
        observer_ip: str | None,
        local_port: int | None,
        listen_ports: Sequence[int],
        now: float,
    ) -> bool:
        """Note that a peer at ``observer_ip`` saw us at ``observed`` on a connection whose
        local port is ``local_port``; True when that made the address confirmed."""
        if observer_ip is None or local_port not in listen_ports or observed.is_circuit:
            return False
        try:
            host, port = observed.tcp_host_port()
        except ValueError:
            return False
        if observed.value_for("ip4") is None and observed.value_for("ip6") is None:
            return False
        # the address that reaches our listener is the observed IP at the observed port
        key = Multiaddr.from_string(f"/{observed.components()[0][0]}/{host}/tcp/{port}")
        was = key in self.confirmed(now)
        seen = self._seen.pop(key, None) or _Seen()
        seen.observers[observer_ip] = now
        self._seen[key] = seen  # most recent last
        while len(self._seen) > MAX_TRACKED:
            del self._seen[next(iter(self._seen))]
        return not was and key in self.confirmed(now)

    def confirmed(self, now: float) -> list[Multiaddr]:
        """Addresses that enough distinct observers reported recently, most observed first."""
        counted = []
        for addr, seen in self._seen.items():
            fresh = sum(1 for when in seen.observers.values() if now - when < OBSERVATION_TTL)
            if fresh >= self.threshold:
                counted.append((fresh, addr))
        counted.sort(key=lambda pair: -pair[0])
        return [addr for _, addr in counted]

    def all(self) -> list[Multiaddr]:
        """Every address some peer reported (confirmed or not)."""
        return list(self._seen)
