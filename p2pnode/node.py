"""The Node: listeners, connections, protocol handlers, the built-in protocols, and peer
routing (the peer store, then each router in turn: :meth:`Node.connect`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from p2pnode.errors import (
    ConnectionClosedError,
    DialError,
    DiscoveryError,
    LocalProtocolError,
    MultiaddrError,
    P2PError,
    P2PTimeoutError,
    PeerIdMismatchError,
)
from p2pnode.net.connection import Connection
from p2pnode.net.host import PeerLike, StreamHandler
from p2pnode.net.limits import Limits, Refusals
from p2pnode.net.relayed import StreamTransport
from p2pnode.net.stream import Stream
from p2pnode.net.transport import Listener, TransportConfig, dial, listen, upgrade_transport
from p2pnode.protocols import identify, ping
from p2pnode.protocols.identify import IdentifyInfo
from p2pnode.protocols.identify_service import IdentifyService
from p2pnode.protocols.nat import NatTraversal
from p2pnode.protocols.relay.client import RelayClient
from p2pnode.routing.peerstore import PeerStore
from p2pnode.routing.router import ConnectTrace, PeerRouter
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.multistream import MultistreamListener
from p2pnode.wire.muxer import StreamRefused

if TYPE_CHECKING:
    from p2pnode.protocols.card import AgentCard, CardCache
    from p2pnode.protocols.kad.dht import DhtConfig, KadDHT
    from p2pnode.protocols.relay.service import RelayService
    from p2pnode.protocols.task.client2 import InputLike
    from p2pnode.routing.mdns import DiscoveredPeer, DiscoveryEvent, MdnsDiscovery
    from p2pnode.wire.relay import RelayLimits

log = logging.getLogger(__name__)

__version__ = "0.1.0"
AGENT_VERSION = f"p2pnode/{__version__}"

DIAL_STAGGER = 0.25  # seconds before the next address of a peer is tried in parallel


@dataclass(slots=True, frozen=True)
class ConnectionEvent:
    """A connection opened or closed, or an inbound handshake failed."""

    kind: str  # "connected" | "disconnected" | "handshake_failed"
    peer_id: PeerId | None
    addr: Multiaddr
    direction: str  # "inbound" | "outbound"
    muxer: str | None = None
    error: str | None = None


@dataclass(slots=True)
class NodeConfig:
    """Tunables of a node; the defaults suit most uses."""

    muxers: Sequence[str] = ("yamux", "mplex")
    # choose the muxer inside the Noise handshake when the peer offers it too (one round
    # trip less per connection); off: always multistream-select after the handshake
    inline_muxer_negotiation: bool = True
    handshake_timeout: float = 10.0
    negotiation_timeout: float = 10.0
    keepalive_interval: float | None = 30.0
    agent_version: str = AGENT_VERSION
    mdns: bool = False  # advertise and discover peers on the LAN (start() turns it on)
    # Routers that connect(peer_id) asks after the peer store, in order: "cache" (the
    # address cache on disk) and "mdns" (a LAN query). More can be added with add_router.
    peer_routing: Sequence[str] = ()
    lookup_timeout: float = 5.0  # seconds one router may take to find a peer
    limits: Limits = field(default_factory=Limits)  # what peers can make this node hold
    dht: DhtConfig | None = None  # join a Kademlia DHT (None: no DHT)
    # serve as a circuit relay (v2) with these limits (None: do not relay for others)
    relay_service: RelayLimits | None = None
    # relays to hold a reservation on, so peers that cannot dial us reach us through them
    relays: Sequence[Multiaddr | str] = ()
    # find relays among connected peers that serve hop when AutoNAT says we are private
    auto_relay: bool = True
    hole_punching: bool = True  # DCUtR: turn relayed connections into direct ones
    autonat_service: bool = False  # dial peers back when they ask (AutoNAT v1 server)
    # ask peers (AutoNAT) whether we are reachable; outgoing connections then leave from
    # the listen port, so that what peers observe is an address that reaches us
    reachability_checks: bool = False
    private_network: bool = False  # a LAN or lab: private IPs count as reachable
    observed_threshold: int = 4  # distinct peers that must see an address before we trust it
    # AutoNAT timing (go's): first check after boot_delay s, again every retry_interval s
    # until sure; a dial-back gets dial_timeout s (failures are answered only then)
    autonat_boot_delay: float = 15.0
    autonat_retry_interval: float = 90.0
    autonat_dial_timeout: float = 15.0


class Node:
    """A p2pnode peer: listens, dials, and serves protocols over secure multiplexed connections.

    Create one with :meth:`Node.start` and end it with :meth:`stop`.
    """

    def __init__(self, identity: Identity, config: NodeConfig | None = None) -> None:
        from p2pnode.net.transport import MUXERS

        self.identity = identity
        self.config = config or NodeConfig()
        unknown = [m for m in self.config.muxers if m not in MUXERS]
        if unknown or not self.config.muxers:
            raise LocalProtocolError(f"unknown muxer {unknown}; choose from {sorted(MUXERS)}")
        self._transport_config = TransportConfig(
            identity=identity,
            muxers=tuple(MUXERS[m] for m in self.config.muxers),
            inline_muxer_negotiation=self.config.inline_muxer_negotiation,
            handshake_timeout=self.config.handshake_timeout,
            keepalive_interval=self.config.keepalive_interval,
            limits=self.config.limits,
        )
        self.refusals: Refusals = self._transport_config.refusals
        self._serving: dict[tuple[bytes, str], int] = {}  # inbound streams in a handler
        self._closed_traffic = (0, 0)  # bytes sent and received by closed connections
        self._handlers: dict[str, StreamHandler] = {}
        self._serves = self._handlers.__contains__
        self._listeners: list[Listener] = []
        self._connections: dict[PeerId, list[Connection]] = {}
        # open inbound connections by remote IP address (the per-IP limit), kept as they
        # come and go: counting them on each accept would scan every connection
        self._inbound_per_ip: Counter[str | None] = Counter()
        self._dialing: dict[PeerId, asyncio.Future[Connection]] = {}
        self._event_callbacks: list[Callable[[ConnectionEvent], None]] = []
        self._address_callbacks: list[Callable[[list[Multiaddr]], None]] = []
        self.peer_store = PeerStore()
        self._routers: list[PeerRouter] = []
        self.discovery: MdnsDiscovery | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self._discovery_update: asyncio.Task[None] | None = None
        self._stopped = False
        self.set_handler(ping.PROTOCOL_ID, ping.handle_ping)
        self.identify_service = IdentifyService(self, self._describe)
        self.identify_service.register()
        for name in self.config.peer_routing:
            self.add_router(self._builtin_router(name))
        self.relay_client = RelayClient(
            self, self._upgrade_circuit, self._adopt_relayed, self._addresses_changed
        )
        self.relay_client.register()
        self.relay_service: RelayService | None = None
        if self.config.relay_service is not None:
            from p2pnode.protocols.relay.service import RelayService

            self.relay_service = RelayService(
                self, identity, self.config.relay_service, refusals=self.refusals
            )
            self.relay_service.register()
        self.dht: KadDHT | None = None
        self._cards: CardCache | None = None
        if self.config.dht is not None:
            from p2pnode.protocols.kad.dht import KadDHT  # only nodes in a DHT load it

            self.dht = KadDHT(self, identity.public_key.to_protobuf(), self.config.dht)
            self.add_router(self.dht)
        self.nat = NatTraversal(
            self,
            self.config,
            identify_service=self.identify_service,
            relay_client=self.relay_client,
            raw_dial=self._raw_dial,
            adopt=self.adopt_direct,
            set_dht_server=self._dht_follows_reachability if self.dht is not None else None,
            on_change=self._addresses_changed,
        )

    @classmethod
    async def start(
        cls,
        identity: Identity | None = None,
        listen_addrs: Sequence[Multiaddr | str] = (),
        config: NodeConfig | None = None,
    ) -> Node:
        """Create a node and start listening on ``listen_addrs`` (none: dial only)."""
        node = cls(identity or Identity.generate(), config)
        try:
            for addr in listen_addrs:
                await node.listen(addr)
            if node.config.mdns:
                await node.start_discovery()
            if node.dht is not None:
                await node.dht.start()
            for relay in node.config.relays:
                node.relay_client.keep(Multiaddr.from_string(str(relay)))
            node.nat.start()
        except BaseException:
            await node.stop()
            raise
        return node

    # -- properties ----------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        """This node's PeerId."""
        return self.identity.peer_id

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """Bound listen addresses, without the /p2p suffix."""
        return [addr for listener in self._listeners for addr in listener.addrs]

    @property
    def advertised_addrs(self) -> list[Multiaddr]:
        """What peers are told to dial: the listen addresses, then the relayed ones
        (``.../p2p/<relay>/p2p-circuit/p2p/<self>``) of every relay holding a slot for us."""
        return [*self.listen_addrs, *self._beyond_link_addrs()]

    @property
    def reachability(self) -> str:
        """``public``, ``private`` or ``unknown``: what AutoNAT found out about this node."""
        return self.nat.reachability

    def on_addresses_changed(self, callback: Callable[[list[Multiaddr]], None]) -> None:
        """Call ``callback(advertised_addrs)`` when a relay slot or a public address
        comes or goes, or reachability changes."""
        self._address_callbacks.append(callback)

    def _addresses_changed(self) -> None:
        if self._connections:
            self.identify_service.changed()
        running = self._discovery_update
        if self.discovery is not None and (running is None or running.done()):
            self._discovery_update = asyncio.create_task(self._update_discovery(self.discovery))
        addrs = self.advertised_addrs
        for callback in self._address_callbacks:
            try:
                callback(addrs)
            except Exception:
                log.exception("address callback failed")

    def _beyond_link_addrs(self) -> list[Multiaddr]:
        """The advertised addresses besides the listen ones: public, then relayed."""
        return [*self.nat.public_addrs(), *self.relay_client.relayed_addrs]

    async def _update_discovery(self, discovery: MdnsDiscovery) -> None:
        """Re-announce the mDNS record until it carries the current relayed/public addresses."""
        while True:
            addrs = self._beyond_link_addrs()
            try:
                await discovery.set_extra_addrs(addrs)
            except Exception as exc:  # zeroconf's errors are not ours to name
                log.warning("mDNS: could not announce the new addresses: %s", exc)
                return
            if addrs == self._beyond_link_addrs():
                return

    @property
    def protocols(self) -> list[str]:
        """Protocol ids this node has handlers for."""
        return sorted(self._handlers)

    def connections(self, peer: PeerId | None = None) -> list[Connection]:
        """Open connections, to ``peer`` or to everyone."""
        if peer is not None:
            return list(self._connections.get(peer, ()))
        return [c for conns in self._connections.values() for c in conns]

    def on_event(self, callback: Callable[[ConnectionEvent], None]) -> None:
        """Call ``callback`` for each connection event."""
        self._event_callbacks.append(callback)

    # -- handlers ------------------------------------------------------------------

    def set_handler(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id``: each inbound stream that selects it runs ``handler(stream)``.

        Connected peers hear of a new protocol by identify push.
        """
        known = protocol_id in self._handlers
        self._handlers[protocol_id] = handler
        if not known and self._connections:
            self.identify_service.changed()

    def remove_handler(self, protocol_id: str) -> None:
        """Stop serving ``protocol_id`` (connected peers hear of it by identify push)."""
        if self._handlers.pop(protocol_id, None) is not None and self._connections:
            self.identify_service.changed()

    async def _handle_inbound_stream(self, stream: Stream) -> None:
        """Negotiate the stream's protocol, within the limits, and run its handler.

        One coroutine per inbound stream (the hot path of every task): the count of
        streams still negotiating lives on the connection, and streams being served are
        counted per peer and protocol.
        """
        conn = stream.connection
        limits = self.config.limits
        if conn.negotiating_streams >= limits.max_negotiating_streams:
            self.refusals.refuse(
                "max_negotiating_streams",
                str(conn.remote_peer),
                f"{conn.negotiating_streams} on {conn!r}",
            )
            stream.reset()
            return
        conn.negotiating_streams += 1
        negotiating = True
        try:
            selector = MultistreamListener(self._serves)
            taken = 0
            stream.set_deadline(self.config.negotiation_timeout)
            try:
                while not selector.done:
                    chunk = await stream._read_raw()
                    if not chunk:
                        await stream.close()
                        return
                    taken += len(chunk)
                    reply = selector.receive_data(chunk)
                    if reply:
                        await stream.write(reply)
            except P2PTimeoutError:
                log.info("%r: protocol negotiation timed out", stream)
                stream.reset()
                return
            stream.set_deadline(None)
            conn.negotiating_streams -= 1
            negotiating = False
            protocol = selector.selected
            assert protocol is not None
            stream.protocol = protocol
            stream._return_unused(taken, selector.leftover())
            handler = self._handlers.get(protocol)
            if handler is None:  # removed meanwhile
                stream.reset()
                return
            # keyed by the PeerId's bytes: hashed in C, and cached, unlike a PeerId
            key = (conn.remote_peer.to_bytes(), protocol)
            serving = self._serving.get(key, 0)
            if serving >= limits.max_inbound_streams_per_protocol:
                self.refusals.refuse(
                    "max_inbound_streams_per_protocol",
                    str(conn.remote_peer),
                    f"{serving} {protocol} streams open",
                )
                stream.reset()
                return
            self._serving[key] = serving + 1
            try:
                await handler(stream)
            finally:
                left = self._serving[key] - 1
                if left:
                    self._serving[key] = left
                else:
                    del self._serving[key]
        except asyncio.CancelledError:
            stream.reset()
            raise
        except P2PError as exc:
            log.info("%r ended with an error: %s", stream, exc)
            stream.reset()
        except Exception:
            log.exception("handler for %s failed", stream.protocol)
            stream.reset()
        else:
            await stream.close()
        finally:
            if negotiating:
                conn.negotiating_streams -= 1

    # -- listening and dialing -----------------------------------------------------

    async def listen(self, addr: Multiaddr | str) -> list[Multiaddr]:
        """Listen on a TCP multiaddr; return the bound addresses."""
        if isinstance(addr, str):
            addr = Multiaddr.from_string(addr)
        if addr.peer_id is not None and addr.peer_id != self.peer_id:
            raise MultiaddrError(
                f"cannot listen on {addr}: it names peer {addr.peer_id}, and this node is "
                f"{self.peer_id}; drop the /p2p part"
            )
        listener = await listen(
            addr,
            self._transport_config,
            self._adopt_inbound,
            self._handle_inbound_stream,
            self._inbound_handshake_failed,
        )
        self._listeners.append(listener)
        return listener.addrs

    def _adopt_inbound(self, conn: Connection) -> None:
        if self._stopped:
            conn._abort(P2PTimeoutError("node is stopping"))
            return
        if not self._room_for_peer(conn):
            return
        ip = _ip_of(conn)
        from_ip = self._inbound_per_ip[ip]
        if from_ip >= self.config.limits.max_inbound_connections_per_ip:
            self.refusals.refuse("max_inbound_connections_per_ip", str(ip), f"{from_ip} open")
            conn._abort(ConnectionClosedError("too many connections from this address"))
            return
        self._register(conn)

    def _room_for_peer(self, conn: Connection) -> bool:
        """False (and ``conn`` aborted) when its peer has max_connections_per_peer open."""
        peer_conns = len(self._connections.get(conn.remote_peer, ()))
        if peer_conns < self.config.limits.max_connections_per_peer:
            return True
        self.refusals.refuse(
            "max_connections_per_peer", str(conn.remote_peer), f"{peer_conns} open already"
        )
        conn._abort(ConnectionClosedError("too many connections from this peer"))
        return False

    def _inbound_handshake_failed(self, exc: Exception, addr: Multiaddr) -> None:
        log.info("inbound handshake from %s failed: %s", addr, exc)
        self._emit(ConnectionEvent("handshake_failed", None, addr, "inbound", error=str(exc)))

    def _stream_refused(self, conn: Connection, refused: StreamRefused) -> None:
        def detail() -> str:  # formatted only when the refusal is logged
            if refused.reason == "max_inbound_streams":
                return f"{refused.limit} streams open on {conn!r}"
            return f"its receive memory over all its connections is used up ({conn!r})"

        peer = str(conn.remote_peer)
        self.refusals.refuse(refused.reason, peer, detail, refused.count)

    def _register(self, conn: Connection) -> None:
        conn.on_stream_refused = self._stream_refused
        siblings = self._connections.setdefault(conn.remote_peer, [])
        siblings.append(conn)
        conn.siblings = siblings
        if not conn.is_initiator:
            self._inbound_per_ip[_ip_of(conn)] += 1
        conn.on_close(self._unregister)
        direction = "outbound" if conn.is_initiator else "inbound"
        self._emit(
            ConnectionEvent(
                "connected", conn.remote_peer, conn.remote_addr, direction, conn.muxer_protocol
            )
        )
        self.identify_service.connected(conn)

    def traffic(self) -> tuple[int, int]:
        """Bytes sent and received on every connection so far (open and closed)."""
        sent, received = self._closed_traffic
        for conn in self.connections():
            sent += conn.bytes_sent
            received += conn.bytes_received
        return sent, received

    def _unregister(self, conn: Connection) -> None:
        sent, received = self._closed_traffic
        self._closed_traffic = (sent + conn.bytes_sent, received + conn.bytes_received)
        conns = self._connections.get(conn.remote_peer, [])
        if conn in conns:
            conns.remove(conn)
            if not conn.is_initiator:
                ip = _ip_of(conn)
                left = self._inbound_per_ip[ip] - 1
                if left > 0:
                    self._inbound_per_ip[ip] = left
                else:
                    del self._inbound_per_ip[ip]
        if not conns:
            self._connections.pop(conn.remote_peer, None)
        direction = "outbound" if conn.is_initiator else "inbound"
        violation = conn.protocol_error
        self._emit(
            ConnectionEvent(
                "disconnected",
                conn.remote_peer,
                conn.remote_addr,
                direction,
                conn.muxer_protocol,
                f"protocol violation: {violation}" if violation else None,
            )
        )

    def _emit(self, event: ConnectionEvent) -> None:
        for callback in self._event_callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("connection event callback failed")

    def _usable_connection(self, peer: PeerId) -> Connection | None:
        """An open connection to ``peer``, a direct one rather than a relayed one."""
        relayed = None
        for conn in self._connections.get(peer, ()):
            if conn.is_usable:
                if not conn.limited:
                    return conn
                relayed = relayed or conn
        return relayed

    async def dial(self, addr: Multiaddr | str) -> Connection:
        """Connect to ``addr``, reusing an open connection when it names a connected peer."""
        if self._stopped:
            raise LocalProtocolError("the node is stopped")
        if isinstance(addr, str):
            addr = Multiaddr.from_string(addr)
        unsupported = addr.unsupported_part()
        if unsupported is not None:
            raise MultiaddrError(f"cannot dial {addr}: {unsupported}")
        peer = addr.peer_id
        if peer is None:
            return await self._dial_addr(addr)
        if peer == self.peer_id and self._listeners:
            raise DialError(f"{addr} is this node itself")
        existing = self._usable_connection(peer)
        if existing is not None and (addr.is_circuit or not existing.limited):
            return existing  # (a direct address is dialed when only a relayed connection is open)
        return await self._dial_peer(peer, [addr.without_peer_id()])

    async def connect(
        self, peer: PeerLike, *, timeout: float | None = None, trace: ConnectTrace | None = None
    ) -> Connection:
        """A usable connection to ``peer``: an open one, or a dial to where it can be found.

        For a PeerId this is the routing chain: the connection already open, then the
        addresses in the peer store, then each router in order (address cache, mDNS, ...),
        dialing what each finds; what worked is recorded in the store and told to the
        routers. ``timeout`` bounds it all; ``trace`` is filled in with how it went.
        """
        if isinstance(peer, PeerId) and trace is None:  # the hot path: already connected
            existing = self._usable_connection(peer)
            if existing is not None:
                return existing
        if isinstance(peer, str):
            peer = Multiaddr.from_string(peer) if peer.startswith("/") else PeerId.from_string(peer)
        trace = trace if trace is not None else ConnectTrace()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if isinstance(peer, Multiaddr):
                    conn = await self.dial(peer)
                    trace.resolved_by = "address"
                else:
                    conn = await self._route(peer, trace, timeout)
        except TimeoutError:
            raise P2PTimeoutError(f"could not connect to {peer} within {timeout}s") from None
        trace.connect_ms = round((time.perf_counter() - started) * 1000 - trace.lookup_ms, 3)
        return conn

    async def _route(self, peer: PeerId, trace: ConnectTrace, timeout: float | None) -> Connection:
        existing = self._usable_connection(peer)
        if existing is not None:
            trace.resolved_by = "connected"
            return existing
        pending = self._dialing.get(peer)
        if pending is not None:
            trace.resolved_by = "connected"
            return await asyncio.shield(pending)
        errors: list[str] = []
        tried: set[Multiaddr] = set()
        known = self.peer_store.addrs(peer)
        if known:
            tried.update(known)
            try:
                conn = await self._dial_peer(peer, known)
            except PeerIdMismatchError:
                raise
            except P2PError as exc:
                errors.append(str(exc))
            else:
                trace.resolved_by = "peerstore"
                return conn
        for router in self._routers:
            started = time.perf_counter()
            lookup = self.config.lookup_timeout if timeout is None else timeout
            try:
                found = await router.find_peer(peer, lookup)
            except P2PError as exc:
                errors.append(f"{router.name}: {exc}")
                continue
            finally:
                trace.lookup_ms += round((time.perf_counter() - started) * 1000, 3)
            fresh = [a.without_peer_id() for a in found if a.without_peer_id() not in tried]
            if not fresh:
                continue
            tried.update(fresh)
            self.peer_store.add_addrs(peer, fresh, router.name)
            try:
                conn = await self._dial_peer(peer, fresh)
            except PeerIdMismatchError:
                raise
            except P2PError as exc:
                errors.append(str(exc))
            else:
                trace.resolved_by = router.name
                return conn
        if not errors:
            raise DialError(
                f"no known address for {peer}: give a full multiaddr ending in /p2p/{peer}"
            )
        if not tried:  # nobody found it: the routers' own words say best why
            raise DiscoveryError("; ".join(errors))
        raise DialError(f"could not reach {peer}: " + "; ".join(errors))

    async def dial_first(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> Connection:
        """Dial ``peer`` at ``addrs`` (best first, the next one starting after a short
        stagger or a failure); DialError naming each failure.

        A different identity at an address (PeerIdMismatchError) stops the search at once.
        """
        existing = self._usable_connection(peer)
        if existing is not None:
            return existing
        return await self._dial_peer(peer, [a.without_peer_id() for a in addrs])

    async def _dial_peer(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> Connection:
        """Dial ``peer`` once at a time: concurrent callers share the attempt."""
        pending = self._dialing.get(peer)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._dialing[peer] = future
        try:
            conn = await self._dial_candidates(peer, addrs)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            self._dialing.pop(peer, None)
        future.set_result(conn)
        return conn

    async def _dial_candidates(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> Connection:
        # direct addresses first: a relayed connection is limited
        usable = sorted((a for a in addrs if a.unsupported_part() is None), key=_is_circuit)
        if addrs and not usable:  # e.g. only /ws or relay addresses: say which
            reason = addrs[0].unsupported_part()
            raise DialError(f"no address of {peer} can be dialed: {addrs[0]}: {reason}")
        addrs = usable
        if not addrs:
            raise DialError(f"no address to dial for {peer}")
        if len(addrs) == 1:  # nothing to stagger: no task and no wait of our own
            return await self._dial_addr(addrs[0].with_peer_id(peer))
        errors: list[str] = []
        failures: list[BaseException] = []
        attempts: dict[asyncio.Task[Connection], Multiaddr] = {}
        waiting = list(addrs)
        winner: Connection | None = None
        try:
            while winner is None and (waiting or attempts):
                if waiting:
                    addr = waiting.pop(0)
                    attempt = asyncio.ensure_future(self._dial_addr(addr.with_peer_id(peer)))
                    attempts[attempt] = addr
                done, _ = await asyncio.wait(
                    attempts,
                    timeout=DIAL_STAGGER if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for attempt in done:
                    addr = attempts.pop(attempt)
                    exc = attempt.exception()
                    if isinstance(exc, PeerIdMismatchError):
                        raise exc
                    if exc is None:
                        if winner is None:
                            winner = attempt.result()
                        else:
                            await attempt.result().close()
                    elif isinstance(exc, P2PError | OSError):
                        errors.append(f"{addr}: {exc}")
                        failures.append(exc)
                    else:
                        raise exc
        finally:
            for attempt in attempts:
                attempt.cancel()
            for attempt in attempts:
                with contextlib.suppress(BaseException):
                    late = await attempt
                    await late.close()
        if winner is None:
            if len(failures) == 1:  # one address: its own error says it best
                raise failures[0]
            raise DialError(f"could not reach {peer}: " + "; ".join(errors))
        return winner

    async def _dial_addr(self, addr: Multiaddr) -> Connection:
        """One dial of one address (ending in /p2p/<id> to verify the peer)."""
        if addr.is_circuit:
            conn = await self.relay_client.dial(addr)
        else:
            conn = await dial(
                addr,
                self._transport_config,
                self._handle_inbound_stream,
                local_port=self.nat.outgoing_port(addr),
            )
        if self._stopped:
            await conn.close()
            raise LocalProtocolError("the node was stopped while dialing")
        self._register(conn)
        self.peer_store.record_connected(conn.remote_peer, addr)
        if addr.peer_id is not None:
            for router in self._routers:
                router.remember(conn.remote_peer, self.peer_store.addrs(conn.remote_peer))
        return conn

    async def _upgrade_circuit(
        self,
        transport: StreamTransport,
        initiator: bool,
        expected: PeerId | None,
        addrs: tuple[Multiaddr, Multiaddr],
    ) -> Connection:
        return await upgrade_transport(
            transport,
            self._transport_config,
            is_initiator=initiator,
            expected_peer=expected,
            on_inbound_stream=self._handle_inbound_stream,
            addrs=addrs,
        )

    def _adopt_relayed(self, conn: Connection) -> None:
        """Register an inbound relayed connection (not counted by IP: that is the relay's),
        then try to turn it into a direct one (DCUtR)."""
        if self._stopped:
            conn._abort(P2PTimeoutError("node is stopping"))
            return
        if not self._room_for_peer(conn):
            return
        self._register(conn)
        self.nat.relayed_inbound(conn)

    async def _raw_dial(self, addr: Multiaddr, port: int | None, initiator: bool) -> Connection:
        """A new TCP connection, not registered (AutoNAT dial-backs, hole punches)."""
        return await dial(
            addr,
            self._transport_config,
            self._handle_inbound_stream,
            local_port=port,
            as_initiator=initiator,
        )

    def _dht_follows_reachability(self, public: bool) -> None:
        from p2pnode.protocols.kad.dht import DhtMode

        if self.dht is not None and self.dht.config.mode is DhtMode.AUTO:
            self.dht.set_server_mode(public)

    def adopt_direct(self, conn: Connection, addr: Multiaddr) -> None:
        """Register a connection made outside the dialer (a hole punch)."""
        self._register(conn)
        self.peer_store.record_connected(conn.remote_peer, addr)

    # -- routers -------------------------------------------------------------------

    def add_router(self, router: PeerRouter) -> None:
        """Ask ``router`` (after the peer store and the routers added before) in connect()."""
        self._routers.append(router)

    @property
    def routers(self) -> list[PeerRouter]:
        """The routers connect() asks, in order."""
        return list(self._routers)

    def _builtin_router(self, name: str) -> PeerRouter:
        if name == "cache":
            from p2pnode.routing.cache import AddressCache

            return AddressCache()
        if name == "mdns":
            from p2pnode.routing.mdns import MdnsRouter

            return MdnsRouter(self.peer_id)
        raise LocalProtocolError(f"unknown peer router {name!r}; choose from cache, mdns")

    async def new_stream(
        self, peer: PeerLike, protocols: Sequence[str], *, optimistic: bool = False
    ) -> Stream:
        """Open a stream to ``peer`` speaking the first of ``protocols`` it supports."""
        conn = await self.connect(peer)
        return await conn.new_stream(list(protocols), optimistic=optimistic)

    # -- discovery -----------------------------------------------------------------------

    async def start_discovery(self) -> MdnsDiscovery:
        """Advertise this node and discover peers with mDNS; discovered addresses are dialable."""
        from p2pnode.routing.mdns import MdnsDiscovery, MdnsRouter, PeerDiscovered

        if self.discovery is None:
            discovery = MdnsDiscovery(
                self.peer_id, self.listen_addrs, extra_addrs=self._beyond_link_addrs()
            )
            await discovery.start()
            self.discovery = discovery

            async def learn_addresses() -> None:
                async for event in discovery.events():
                    if isinstance(event, PeerDiscovered):
                        peer = event.peer
                        ttl = max(1.0, peer.expires - time.monotonic())
                        self.peer_store.add_addrs(peer.peer_id, peer.addrs, "mdns", ttl)

            self._discovery_task = asyncio.create_task(learn_addresses())
            for router in self._routers:
                if isinstance(router, MdnsRouter):
                    router.discovery = discovery
        return self.discovery

    def peers(self) -> list[DiscoveredPeer]:
        """Peers currently known from mDNS (empty when discovery is off)."""
        return self.discovery.peers() if self.discovery is not None else []

    async def discovery_events(self) -> AsyncIterator[DiscoveryEvent]:
        """Discovered / expired events from mDNS, from now on."""
        if self.discovery is None:
            raise LocalProtocolError("discovery is off: start the node with NodeConfig(mdns=True)")
        async for event in self.discovery.events():
            yield event

    # -- tasks (protocol 2, falling back to 1) ---------------------------------------

    @property
    def cards(self) -> CardCache:
        """Agent cards fetched recently (for routing tasks to a capable peer)."""
        if self._cards is None:
            from p2pnode.protocols.card import CardCache

            self._cards = CardCache()
        return self._cards

    def stream_task(self, peer: PeerLike, input: InputLike = (), **options: Any) -> Any:
        """The events of a task on ``peer`` as they arrive (see ``client2.stream_task``)."""
        from p2pnode.protocols.task.client2 import stream_task

        return stream_task(self, peer, input, **options)

    async def run_task(
        self,
        peer: PeerLike | None = None,
        input: InputLike = (),
        *,
        kind: str = "default",
        any: bool = False,
        fanout: int | None = None,
        first: bool = False,
        candidates: Sequence[PeerLike] = (),
        **options: Any,
    ) -> Any:
        """Run a task on ``peer``, or (``any``) on the best peer that serves ``kind``.

        ``any`` gathers candidates (``candidates``, connected peers, mDNS, the DHT's
        providers of ``kind``), reads their cards and retries elsewhere on busy; with
        ``fanout`` N it runs on N of them and returns a list of PeerResult (``first``:
        only the first success).
        """
        from p2pnode.protocols import capable
        from p2pnode.protocols.task.client2 import run_task

        if not any and fanout is None:
            if peer is None:
                raise LocalProtocolError("run_task needs a peer, or any=True to pick one")
            return await run_task(self, peer, input, kind=kind, **options)
        found = await capable.capable_peers(
            self, await self.task_candidates(kind, candidates), kind, cards=self.cards
        )
        if fanout is not None:
            return await capable.fan_out(
                self, found, input, kind=kind, count=fanout, first=first, **options
            )
        return await capable.run_on_any(self, found, input, kind=kind, **options)

    async def task_candidates(
        self, kind: str, extra: Sequence[PeerLike] = (), timeout: float = 10.0
    ) -> list[PeerLike]:
        """Peers that may serve ``kind``: ``extra``, connected, mDNS, DHT providers."""
        found: list[PeerLike] = list(extra)
        found += [c.remote_peer for c in self.connections()]
        found += [p.peer_id for p in self.peers()]
        if self.dht is not None:
            from p2pnode.wire.kad import provider_key_for_kind

            providers = await self.dht.find_providers(provider_key_for_kind(kind), timeout=timeout)
            for provider in providers:
                self.peer_store.add_addrs(provider.peer_id, provider.addrs, "dht")
                found.append(provider.peer_id)
        return [p for p in dict.fromkeys(found) if p != self.peer_id]

    async def fetch_card(self, peer: PeerLike, timeout: float = 10.0) -> AgentCard:
        """``peer``'s agent card, verified (RecordError if forged or not its own)."""
        from p2pnode.protocols.card import fetch_card

        card = await fetch_card(self, peer, timeout)
        self.cards.put(PeerId.from_string(card.peer_id), card)
        return card

    # -- built-in protocols ----------------------------------------------------------

    async def ping(self, peer: PeerLike, count: int = 1) -> list[float]:
        """Ping ``peer`` with the libp2p ping protocol; RTTs in seconds."""
        stream = await self.new_stream(peer, [ping.PROTOCOL_ID])
        try:
            return await ping.ping_rtts(stream, count)
        except BaseException:
            stream.reset()
            raise

    async def identify(self, peer: PeerLike) -> IdentifyInfo:
        """Ask ``peer`` to describe itself (identify protocol); the peer store learns it."""
        conn = await self.connect(peer)
        return await self.identify_service.identify(conn.remote_peer)

    def identify_info(self, observed: Multiaddr | None) -> IdentifyInfo:
        """How this node describes itself to a peer that sees it at ``observed``."""
        return IdentifyInfo(
            public_key=self.identity.public_key,
            listen_addrs=self.advertised_addrs,
            observed_addr=observed,
            protocols=self.protocols,
            protocol_version=identify.PROTOCOL_VERSION,
            agent_version=self.config.agent_version,
        )

    def _describe(self, stream: Stream) -> IdentifyInfo:
        return self.identify_info(stream.connection.remote_addr)

    # -- shutting down -------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop listening, send GoAway on every connection, close them and end all handlers."""
        if self._stopped:
            return
        self._stopped = True
        if self.dht is not None:
            await self.dht.stop()
        await self.identify_service.close()
        await self.nat.close()
        await self.relay_client.close()
        if self.relay_service is not None:
            await self.relay_service.close()
        for task in (self._discovery_task, self._discovery_update):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.discovery is not None:
            await self.discovery.stop()
        for listener in self._listeners:
            await listener.close()
        self._listeners.clear()
        conns = self.connections()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def _is_circuit(addr: Multiaddr) -> bool:
    return addr.is_circuit


def _ip_of(conn: Connection) -> str | None:
    """The IP address a connection comes from (a relayed one: its relay's)."""
    addr = conn.remote_addr
    return addr.value_for("ip4") or addr.value_for("ip6")
