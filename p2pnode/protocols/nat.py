"""NAT traversal for a node: reachability, observed addresses, relays, hole punching.

- **Reachability** (AutoNAT v1): connected peers are asked to dial us back;
  ``public | private | unknown`` drives the DHT mode (server only when public) and
  relay use (when private, slots are taken on connected relays).
- **Observed addresses**: what identify says peers see us at; trusted once enough
  distinct peers agree (:mod:`p2pnode.net.observed`), advertised once AutoNAT also says
  we are public.
- **Hole punching** (DCUtR): a relayed connection we receive is turned into a direct one
  (we run the initiating role); a peer that dialed us through a relay finds the DCUtR
  handler. Once a direct connection exists, the relayed one is closed when idle.
- While reachability checks are on, outgoing TCP connections leave from the listen port
  (SO_REUSEPORT): peers then observe an address that maps to our listener, and a NAT
  keeps one mapping for both directions. Hole-punch dials always do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from p2pnode.errors import DialError, LocalProtocolError, P2PError
from p2pnode.net.addresses import expand_wildcards
from p2pnode.net.connection import Connection
from p2pnode.net.host import Host
from p2pnode.net.observed import ObservedAddrs
from p2pnode.protocols.autonat import AutonatService, ReachabilityMonitor
from p2pnode.protocols.dcutr import DcutrService, hole_punch
from p2pnode.protocols.identify import IdentifyInfo
from p2pnode.protocols.identify_service import IdentifyService
from p2pnode.protocols.relay.client import RelayClient
from p2pnode.wire.autonat import DialBackPolicy, Reachability
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.relay import HOP_PROTOCOL

log = logging.getLogger(__name__)

RELAYED_GRACE = 5.0  # seconds a relayed connection stays after a direct one exists
AUTO_RELAYS = 2  # relays to hold slots on when private and none were configured
PUNCH_TIMEOUT = 30.0

# (address, local port or None, as security initiator) -> a connection, not registered
RawDial = Callable[[Multiaddr, int | None, bool], Awaitable[Connection]]
Adopt = Callable[[Connection, Multiaddr], None]


class NatTraversal:
    """What a node does about NATs; see the module docstring. ``options`` is the node's
    config (``hole_punching``, ``autonat_service``, ``reachability_checks``,
    ``private_network``, ``observed_threshold``, ``auto_relay``, ``relays``)."""

    def __init__(
        self,
        host: Host,
        options: Any,
        *,
        identify_service: IdentifyService,
        relay_client: RelayClient,
        raw_dial: RawDial,
        adopt: Adopt,
        set_dht_server: Callable[[bool], None] | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._host = host
        self._options = options
        self._identify = identify_service
        self._relays = relay_client
        self._raw_dial = raw_dial
        self._adopt = adopt
        self._set_dht_server = set_dht_server
        self._on_change = on_change
        self.observed = ObservedAddrs(options.observed_threshold)
        self.monitor: ReachabilityMonitor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.punches = {"succeeded": 0, "failed": 0}
        self.dcutr: DcutrService | None = None
        if options.hole_punching:
            self.dcutr = DcutrService(host, self.direct_addrs, self._dial_direct)
            self.dcutr.on_result = self._punched
            self.dcutr.register()
        if options.autonat_service:
            policy = DialBackPolicy(allow_private=options.private_network)
            AutonatService(
                host, self._dial_back, policy, dial_timeout=options.autonat_dial_timeout
            ).register()
        if options.reachability_checks:
            # what the peers we dial (from the listen port) see us at, and what they
            # serve (AutoNAT, relaying); inbound connections are not identified for it:
            # a short client (send-task) came for its task, and an attacker would get a
            # stream's receive window more from us
            identify_service.on_outbound = True
            identify_service.on_observed = self._observed

    def start(self) -> None:
        if self._options.reachability_checks and self.monitor is None:
            self.monitor = ReachabilityMonitor(
                self._host,
                addrs=self.direct_addrs,
                boot_delay=self._options.autonat_boot_delay,
                retry_interval=self._options.autonat_retry_interval,
                request_timeout=self._options.autonat_dial_timeout + 15.0,
            )
            self.monitor.on_change(self._reachability_changed)
            self._identify.subscribe(self._identified)
            self.monitor.start()

    async def close(self) -> None:
        if self.monitor is not None:
            await self.monitor.close()
        if self.dcutr is not None:
            await self.dcutr.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- addresses -------------------------------------------------------------------

    @property
    def reachability(self) -> str:
        return str(self.monitor.reachability) if self.monitor is not None else "unknown"

    def listen_ports(self) -> list[int]:
        return [int(a.value_for("tcp") or 0) for a in self._host.listen_addrs]

    def outgoing_port(self, addr: Multiaddr) -> int | None:
        """The port outgoing connections to ``addr`` leave from (None: any)."""
        if not self._options.reachability_checks:
            return None
        return self._listen_port_for(addr)

    def _listen_port_for(self, addr: Multiaddr) -> int | None:
        family = "ip6" if addr.value_for("ip6") is not None else "ip4"
        for listen in self._host.listen_addrs:
            if listen.value_for(family) is not None:
                return int(listen.value_for("tcp") or 0) or None
        return None

    def direct_addrs(self) -> list[Multiaddr]:
        """Addresses a peer may dial us at: confirmed observed ones, then listen ones."""
        now = time.time()
        found = [*self.observed.confirmed(now)]
        if self.monitor is not None and self.monitor.public_addr is not None:
            found.insert(0, self.monitor.public_addr.without_peer_id())
        found += expand_wildcards(self._host.listen_addrs, for_link=True)
        return list(dict.fromkeys(found))

    def public_addrs(self) -> list[Multiaddr]:
        """Observed addresses to advertise: only once AutoNAT says we are public."""
        if self.monitor is None or self.monitor.reachability != Reachability.PUBLIC:
            return []
        listen = set(self._host.listen_addrs)
        extra = [self.monitor.public_addr] if self.monitor.public_addr is not None else []
        found = [*extra, *self.observed.confirmed(time.time())]
        return [a for a in dict.fromkeys(a.without_peer_id() for a in found) if a not in listen]

    def _observed(self, conn: Connection, observed: Multiaddr) -> None:
        remote = conn.remote_addr
        if conn.limited:
            return
        observer_ip = remote.value_for("ip4") or remote.value_for("ip6")
        local_port = conn.local_addr.value_for("tcp")
        confirmed = self.observed.record(
            observed,
            observer_ip,
            int(local_port) if local_port else None,
            self.listen_ports(),
            time.time(),
        )
        if confirmed:
            log.info("observed address %s confirmed by %d peers", observed, self.observed.threshold)
            if self.monitor is not None:
                self.monitor.recheck()

    # -- reachability ----------------------------------------------------------------

    def _identified(self, peer: PeerId, info: IdentifyInfo) -> None:
        if self.monitor is not None and self.monitor.reachability == Reachability.UNKNOWN:
            self.monitor.recheck()
        if self.reachability == Reachability.PRIVATE and HOP_PROTOCOL in info.protocols:
            self._use_relays()

    def _reachability_changed(self, reachability: Reachability) -> None:
        log.info("reachability: %s", reachability)
        if self._set_dht_server is not None:
            self._set_dht_server(reachability == Reachability.PUBLIC)
        if reachability == Reachability.PRIVATE:
            self._use_relays()
        self._on_change()  # our advertised addresses may have changed: identify push

    def _use_relays(self) -> None:
        """Private and no relay configured: hold slots on connected peers that relay."""
        if not self._options.auto_relay or self._options.relays:
            return
        held = set(self._relays.reservations) | set(self._relays.kept)
        if len(held) >= AUTO_RELAYS:
            return
        store = self._host.peer_store
        for conn in self._host.connections():
            peer = conn.remote_peer
            if len(held) >= AUTO_RELAYS:
                break
            if peer in held or conn.limited or HOP_PROTOCOL not in store.protocols_of(peer):
                continue
            held.add(peer)
            log.info("private: holding a relay slot on %s", peer)
            self._relays.keep(conn.remote_addr.with_peer_id(peer))

    async def _dial_back(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> Multiaddr:
        """AutoNAT server: a new connection to ``peer`` at one of ``addrs``, then closed."""
        errors = []
        for addr in addrs:
            try:
                conn = await self._raw_dial(addr.with_peer_id(peer), None, True)
            except P2PError as exc:
                errors.append(f"{addr}: {exc}")
                continue
            await conn.close()
            return addr
        raise DialError(f"could not dial {peer} back: " + "; ".join(errors))

    # -- hole punching ---------------------------------------------------------------

    def relayed_inbound(self, conn: Connection) -> None:
        """A peer reached us through a relay: punch a hole to it (we initiate DCUtR)."""
        if self.dcutr is None or not conn.limited:
            return
        task = asyncio.ensure_future(self._punch(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _punch(self, relayed: Connection) -> None:
        peer = relayed.remote_peer
        try:
            async with asyncio.timeout(PUNCH_TIMEOUT):
                direct = await hole_punch(
                    self._host, relayed, self.direct_addrs(), self._dial_direct
                )
        except (P2PError, TimeoutError, LocalProtocolError) as exc:
            self.punches["failed"] += 1
            log.info("hole punch to %s failed: %s", peer, exc or "timed out")
            return
        self._punched(peer, direct)

    def _punched(self, peer: PeerId, direct: Connection | None) -> None:
        if direct is None:
            return
        self.punches["succeeded"] += 1
        log.info("hole punch to %s: direct connection at %s", peer, direct.remote_addr)
        for conn in self._host.connections(peer):
            if conn.limited:
                task = asyncio.ensure_future(_retire(conn))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _dial_direct(
        self, peer: PeerId, addrs: Sequence[Multiaddr], initiator: bool
    ) -> Connection:
        """One hole-punch dial: from the listen port, to each address at once."""
        port = self._listen_port_for(addrs[0]) if addrs else None
        dials = {
            asyncio.ensure_future(self._raw_dial(a.with_peer_id(peer), port, initiator))
            for a in addrs
        }
        # our SYN may meet the peer's listener instead of its SYN (no NAT in between, or
        # one that forwards): its own dial then reaches our listener, and that
        # connection, registered by the node, is the direct one
        accepted = asyncio.ensure_future(self._accepted_from(peer))
        pending: set[asyncio.Future[Connection]] = {*dials, accepted}
        winner: Connection | None = None
        errors: list[str] = []
        try:
            while winner is None and pending & dials:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if accepted in done:
                    return accepted.result()
                for dial in done:
                    if dial.exception() is None:
                        winner = winner or dial.result()
                    elif isinstance(dial.exception(), P2PError | OSError):
                        errors.append(str(dial.exception()))
                    else:
                        raise dial.exception()  # type: ignore[misc]
        finally:
            for task in pending:
                task.cancel()
            for dial in dials:
                with contextlib.suppress(BaseException):
                    extra = await dial
                    if extra is not winner:
                        await extra.close()
        if winner is None:
            raise DialError(f"no direct connection to {peer}: " + "; ".join(errors))
        self._adopt(winner, winner.remote_addr)
        return winner

    async def _accepted_from(self, peer: PeerId) -> Connection:
        """A direct connection from ``peer`` once the node has one (checked every 10 ms)."""
        while True:
            for conn in self._host.connections(peer):
                if conn.is_usable and not conn.limited:
                    return conn
            await asyncio.sleep(0.01)


async def _retire(conn: Connection) -> None:
    """Close a relayed connection once it has been idle (no streams) after the grace time."""
    await asyncio.sleep(RELAYED_GRACE)
    while conn.stream_count and not conn.is_closed:
        await asyncio.sleep(RELAYED_GRACE)
    await conn.close()
