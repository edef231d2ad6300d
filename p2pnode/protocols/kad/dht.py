"""The Kademlia DHT on a node: routing table upkeep, lookups, provider records, ``/pk/`` values.

The sans-I/O core (messages, routing table, lookup state machine, record store) is
:mod:`p2pnode.wire.kad`; this module runs it with asyncio: streams, timers, tasks.

Server mode serves the DHT protocol (so peers, seeing it in identify, add us to their
routing tables); client mode only asks. Peers enter our routing table only when their
identify lists our DHT protocol, i.e. when they are DHT servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from p2pnode.errors import DiscoveryError, IdentityError, LocalProtocolError, P2PError
from p2pnode.net.addresses import expand_wildcards
from p2pnode.net.host import Host
from p2pnode.net.stream import Stream
from p2pnode.protocols.identify import IdentifyInfo
from p2pnode.protocols.kad.protocol_ids import DEFAULT_PROTOCOL, LAN_PROTOCOL
from p2pnode.protocols.kad.rpc import send_request, serve_requests
from p2pnode.wire.identity import PeerId
from p2pnode.wire.kad import (
    AddStatus,
    Lookup,
    LookupResult,
    Message,
    MessageType,
    PeerInfo,
    ProviderStore,
    Record,
    RoutingTable,
    accept_provider,
    kad_key,
    pk_record_key,
    validate_pk_record,
)
from p2pnode.wire.multiaddr import Multiaddr

__all__ = ["DEFAULT_PROTOCOL", "LAN_PROTOCOL", "DhtConfig", "DhtMode", "KadDHT"]

log = logging.getLogger(__name__)

LOOKUP_ADDR_TTL = 600.0  # addresses learned from lookups stay in the peer store this long
REPUBLISH_INTERVAL = 22 * 3600.0  # provider records expire after 48 h on go and js nodes
MAX_VALUES = 10_000  # /pk/ records kept by a server


class DhtMode(StrEnum):
    """``auto``: client until a peer from another host has reached us, then server."""

    AUTO = "auto"
    SERVER = "server"
    CLIENT = "client"


@dataclass(slots=True)
class DhtConfig:
    """Tunables of the DHT; the defaults are the public DHT's."""

    protocol_id: str = DEFAULT_PROTOCOL
    mode: DhtMode = DhtMode.AUTO
    bootstrap: Sequence[Multiaddr] = ()
    k: int = 20
    alpha: int = 3
    request_timeout: float = 10.0
    lookup_timeout: float = 30.0
    refresh_interval: float = 600.0
    bootstrap_retry: float = 5.0  # first back-off while the table is nearly empty
    seed: int | None = None  # random refresh targets (tests pass one for determinism)
    maintain: bool = True  # bootstrap and refresh in the background (short CLI runs: False)


@dataclass(slots=True)
class LookupStats:
    """How a lookup went: for the CLI's timings and the closing figures."""

    hops: int = 0
    messages: int = 0
    seconds: float = 0.0
    closest: list[PeerId] = field(default_factory=list)


class KadDHT:
    """The DHT of one node; also a peer router (``name == "dht"``) for :meth:`Node.connect`."""

    name = "dht"

    def __init__(self, host: Host, public_key: bytes, config: DhtConfig | None = None) -> None:
        self._host = host
        self._public_key = public_key  # our libp2p PublicKey protobuf: the value of /pk/<us>
        self.config = config or DhtConfig()
        self.table = RoutingTable(host.peer_id, k=self.config.k)
        self.providers = ProviderStore()
        self._values: OrderedDict[bytes, bytes] = OrderedDict()
        self._provided: dict[bytes, float] = {}  # keys we provide -> when last published
        self._tasks: set[asyncio.Task[Any]] = set()
        self._random = random.Random(self.config.seed)
        self.server_mode = False
        self.last_lookup = LookupStats()
        self.ready = asyncio.Event()  # set when the routing table has its first peer
        self._started = False

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Join: serve (in server mode), learn DHT peers from identify, bootstrap, refresh."""
        if self._started:
            return
        self._started = True
        identify_service = getattr(self._host, "identify_service", None)
        if identify_service is not None:
            identify_service.on_connect = True
            identify_service.subscribe(self._identified)
        self._host.on_event(self._connection_event)
        if self.config.mode is DhtMode.SERVER:
            self.set_server_mode(True)
        if self.config.maintain:
            self._spawn(self._maintain())

    async def stop(self) -> None:
        """Stop serving and maintaining; records we provided expire on their own."""
        self._started = False
        self.set_server_mode(False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def set_server_mode(self, on: bool) -> None:
        """Serve the DHT protocol or stop; peers hear of it by identify push."""
        if on == self.server_mode:
            return
        self.server_mode = on
        if on:
            self._host.set_handler(self.config.protocol_id, self._serve)
        else:
            self._host.remove_handler(self.config.protocol_id)
        log.info("DHT now in %s mode", "server" if on else "client")

    # -- routing table upkeep ------------------------------------------------------------

    def _identified(self, peer: PeerId, info: IdentifyInfo) -> None:
        if self.config.protocol_id in info.protocols:
            self._consider(peer)
        else:
            self.table.remove(peer)

    def _connection_event(self, event: Any) -> None:
        if (
            self.config.mode is DhtMode.AUTO
            and not self.server_mode
            and event.kind == "connected"
            and event.direction == "inbound"
            and not _is_loopback(event.addr)
            and not event.addr.is_circuit  # through a relay: that says nothing of us
        ):
            self.set_server_mode(True)

    def _consider(self, peer: PeerId) -> None:
        result = self.table.add(peer, time.monotonic())
        if result.status is AddStatus.ADDED:
            self.ready.set()
        elif result.status is AddStatus.FULL and result.check is not None:
            self._spawn(self._check_then_replace(result.check, peer))

    async def _check_then_replace(self, oldest: PeerId, candidate: PeerId) -> None:
        """Kademlia's rule: a full bucket keeps its oldest peer while that one answers."""
        alive = self._host.connections(oldest) != [] or await self._reachable(oldest)
        if alive:
            self.table.keep(oldest, time.monotonic())
        else:
            self.table.evict(oldest, candidate)

    async def _reachable(self, peer: PeerId) -> bool:
        try:
            async with asyncio.timeout(self.config.request_timeout):
                await self._host.dial_first(peer, self._host.peer_store.addrs(peer))
        except (P2PError, TimeoutError, OSError):
            return False
        return True

    async def _maintain(self) -> None:
        """Bootstrap, then refresh stale buckets; retry with back-off while nearly empty."""
        delay = self.config.bootstrap_retry
        while True:
            with contextlib.suppress(P2PError, TimeoutError, OSError):
                await self.bootstrap()
            if len(self.table) >= min(self.config.k, 4):
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.refresh_interval)
        while True:
            await asyncio.sleep(self.config.refresh_interval / 10)
            now = time.monotonic()
            stale = self.table.buckets_needing_refresh(
                now, self._random, self.config.refresh_interval
            )
            for _, target in stale:
                with contextlib.suppress(P2PError, TimeoutError, OSError):
                    await self.closest_peers(target)
                self.table.mark_refreshed(kad_key(target), time.monotonic())
            self.providers.expire(now)
            for key, published in list(self._provided.items()):
                if now - published >= REPUBLISH_INTERVAL:
                    with contextlib.suppress(P2PError, TimeoutError, OSError):
                        await self.provide(key)
            if len(self.table) < 2:
                with contextlib.suppress(P2PError, TimeoutError, OSError):
                    await self.bootstrap()

    async def bootstrap(self) -> int:
        """Connect to the bootstrap peers, then look ourselves up; the table's size."""
        peers = []
        for addr in self.config.bootstrap:
            try:
                async with asyncio.timeout(self.config.request_timeout):
                    conn = await self._host.connect(addr)
                peers.append(conn.remote_peer)
            except (P2PError, TimeoutError, OSError) as exc:
                log.info("bootstrap peer %s unreachable: %s", addr, exc)
        for peer in peers:  # identify runs on connect; we need not wait for it
            if peer not in self.table:
                self._consider(peer)
        if len(self.table):
            await self.closest_peers(self._host.peer_id.to_bytes())
        return len(self.table)

    # -- asking peers --------------------------------------------------------------------

    async def _rpc(
        self,
        peer: PeerId,
        request: Message,
        expect_answer: bool = True,
        lookup: Lookup | None = None,
    ) -> Message | None:
        addrs = self._host.peer_store.addrs(peer)
        if not addrs and lookup is not None:
            info = lookup.peer_info(peer)
            addrs = list(info.addrs) if info is not None else []
        async with asyncio.timeout(self.config.request_timeout):
            conn = await self._host.dial_first(peer, addrs)
            stream = await conn.new_stream([self.config.protocol_id])
            return await send_request(stream, request, expect_answer=expect_answer)

    async def _lookup(
        self,
        key: bytes,
        kind: MessageType,
        *,
        max_providers: int | None = None,
        stop_at_target: bool = False,
        timeout: float | None = None,
    ) -> LookupResult:
        """Run an iterative lookup for ``key`` to its end (or ``timeout``)."""
        started = time.monotonic()
        lookup = Lookup(
            key,
            self.table.closest(kad_key(key), self.config.k),
            local_id=self._host.peer_id,
            kind=kind,
            k=self.config.k,
            alpha=self.config.alpha,
            request_timeout=self.config.request_timeout,
            max_providers=max_providers,
            stop_at_target=stop_at_target,
        )
        request = Message(kind, key=key)
        in_flight: dict[asyncio.Task[Message | None], PeerId] = {}
        try:
            async with asyncio.timeout(timeout or self.config.lookup_timeout):
                while not lookup.done:
                    for peer in lookup.next_requests(time.monotonic()):
                        task = asyncio.create_task(self._rpc(peer, request, lookup=lookup))
                        in_flight[task] = peer
                    if not in_flight:
                        break
                    finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        self._take_answer(lookup, in_flight.pop(task), task)
        except TimeoutError:
            log.debug("DHT lookup for %s timed out", key.hex())
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        result = lookup.result()
        self.last_lookup = LookupStats(
            result.hops,
            result.messages,
            time.monotonic() - started,
            [p.peer_id for p in result.closest],
        )
        return result

    def _take_answer(
        self, lookup: Lookup, peer: PeerId, task: asyncio.Task[Message | None]
    ) -> None:
        now = time.monotonic()
        exc = task.exception()
        answer = None if exc is not None else task.result()
        if answer is None:
            log.debug("DHT request to %s failed: %s", peer, exc)
            lookup.on_failure(peer, now)
            return
        self.table.mark_seen(peer, now)
        store = self._host.peer_store
        for info in (*answer.closer_peers, *answer.provider_peers):
            if info.peer_id != self._host.peer_id and info.addrs:
                store.add_addrs(info.peer_id, _dialable(info.addrs), "dht", LOOKUP_ADDR_TTL)
        record = answer.record
        if record is not None and lookup.kind is MessageType.GET_VALUE:
            try:
                validate_pk_record(lookup.target_key, record.value)
            except P2PError as bad:
                log.info("%s sent an invalid record: %s", peer, bad)
                record = None
        lookup.on_response(peer, answer.closer_peers, answer.provider_peers, record=record, now=now)

    # -- the API -----------------------------------------------------------------------

    async def closest_peers(self, key: bytes, timeout: float | None = None) -> list[PeerId]:
        """The k peers closest to ``key`` that answered a FIND_NODE lookup."""
        result = await self._lookup(key, MessageType.FIND_NODE, timeout=timeout)
        return [p.peer_id for p in result.closest]

    async def find_peer(self, peer_id: PeerId, timeout: float | None = None) -> list[Multiaddr]:
        """Addresses of ``peer_id``: connected, known, or found by a lookup (empty if none)."""
        if self._host.connections(peer_id):
            return self._host.peer_store.addrs(peer_id)
        result = await self._lookup(
            peer_id.to_bytes(), MessageType.FIND_NODE, stop_at_target=True, timeout=timeout
        )
        found = result.target
        addrs = _dialable(found.addrs) if found is not None else ()
        if not addrs:
            addrs = tuple(self._host.peer_store.addrs(peer_id)) if found is not None else ()
        if not addrs:
            if not self.table:
                raise DiscoveryError(
                    "the DHT knows no peers: start with --bootstrap MADDR of a DHT node"
                )
            return []
        return list(addrs)

    def remember(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Addresses that worked are in the peer store already; nothing more to keep."""

    def _self_record(self) -> PeerInfo:
        direct = [a for a in expand_wildcards(self._host.listen_addrs) if a.value_for("tcp")]
        relayed = [a for a in self._host.advertised_addrs if a.is_circuit]
        addrs = [*direct, *relayed]
        return PeerInfo(self._host.peer_id, tuple(addrs))

    async def provide(self, key: bytes) -> int:
        """Announce this node as a provider of ``key`` to the k closest peers; how many took it.

        The key is republished every 22 h while the node runs (records live 48 h).
        """
        me = self._self_record()
        if not me.addrs:
            raise LocalProtocolError("a provider needs a listen address: start with --listen")
        self._provided[key] = time.monotonic()
        if self.server_mode:
            self.providers.add(key, me.peer_id, me.addrs, time.monotonic())
        closest = await self.closest_peers(key)
        request = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))
        results = await asyncio.gather(
            *(self._rpc(peer, request, expect_answer=False) for peer in closest),
            return_exceptions=True,
        )
        return sum(1 for r in results if not isinstance(r, BaseException))

    def stop_providing(self, key: bytes) -> None:
        """Stop republishing ``key`` (the records others hold then expire)."""
        self._provided.pop(key, None)

    async def find_providers(
        self, key: bytes, limit: int = 20, timeout: float | None = None
    ) -> list[PeerInfo]:
        """Providers of ``key``, with addresses: ours first, then what a lookup finds."""
        found: dict[PeerId, PeerInfo] = {
            p.peer_id: p for p in self.providers.get(key, time.monotonic(), limit)
        }
        if len(found) < limit:
            result = await self._lookup(
                key, MessageType.GET_PROVIDERS, max_providers=limit - len(found), timeout=timeout
            )
            for provider in result.providers:
                if provider.addrs or self._host.peer_store.addrs(provider.peer_id):
                    found.setdefault(provider.peer_id, provider)
        return list(found.values())[:limit]

    async def put_value(self, key: bytes, value: bytes) -> int:
        """Store a ``/pk/`` record at the k closest peers; how many accepted it."""
        validate_pk_record(key, value)
        if self.server_mode:
            self._store_value(key, value)
        closest = await self.closest_peers(key)
        request = Message(MessageType.PUT_VALUE, key=key, record=Record(key, value))
        results = await asyncio.gather(
            *(self._rpc(peer, request) for peer in closest), return_exceptions=True
        )
        return sum(1 for r in results if not isinstance(r, BaseException))

    async def get_value(self, key: bytes, timeout: float | None = None) -> bytes:
        """The value of a ``/pk/`` key: ours, or the first valid one a lookup finds."""
        validate_pk_record(key, None)
        local = self._local_value(key)
        if local is not None:
            return local
        result = await self._lookup(key, MessageType.GET_VALUE, timeout=timeout)
        for _, record in result.records:
            return record.value
        raise DiscoveryError(f"no peer in the DHT has a value for {key!r}")

    # -- serving -----------------------------------------------------------------------

    async def _serve(self, stream: Stream) -> None:
        await serve_requests(stream, self._answer)

    def _peer_info(self, peer: PeerId) -> PeerInfo:
        addrs = self._host.peer_store.addrs(peer)
        return PeerInfo(peer, tuple(addrs))

    def _closer(self, key: bytes, sender: PeerId) -> tuple[PeerInfo, ...]:
        peers = self.table.closest(kad_key(key), self.config.k + 1)
        return tuple(self._peer_info(p) for p in peers if p != sender)[: self.config.k]

    def _connected_target(self, key: bytes, sender: PeerId) -> PeerInfo | None:
        """The peer a FIND_NODE names, when we are connected to it (a DHT client, say a
        private node reachable through its relay, is in no routing table)."""
        try:
            target = PeerId.from_bytes(key)
        except (IdentityError, ValueError):
            return None
        if target == sender or not any(c.is_usable for c in self._host.connections(target)):
            return None
        info = self._peer_info(target)
        return info if info.addrs else None

    def _answer(self, sender: PeerId, request: Message) -> Message | None:
        """The answer to one request (None: ADD_PROVIDER, which gets none)."""
        kind, key, now = request.type, request.key, time.monotonic()
        if kind is MessageType.FIND_NODE:
            closer = self._closer(key, sender)
            target = self._connected_target(key, sender)
            if target is not None and all(p.peer_id != target.peer_id for p in closer):
                closer = (*closer, target)  # as go does: a connected peer, table or not
            return Message(kind, key=key, closer_peers=closer)
        if kind is MessageType.GET_PROVIDERS:
            providers = tuple(self.providers.get(key, now, self.config.k))
            return Message(
                kind, key=key, closer_peers=self._closer(key, sender), provider_peers=providers
            )
        if kind is MessageType.ADD_PROVIDER:
            for provider in accept_provider(sender, request.provider_peers):
                self.providers.add(key, provider.peer_id, _dialable(provider.addrs), now)
            return None
        if kind is MessageType.GET_VALUE:
            validate_pk_record(key, None)  # other namespaces: refused (the stream is reset)
            value = self._local_value(key)
            record = Record(key, value) if value is not None else None
            return Message(kind, key=key, record=record, closer_peers=self._closer(key, sender))
        if kind is MessageType.PUT_VALUE:
            if request.record is None or request.record.key != key:
                raise LocalProtocolError("PUT_VALUE without a record for its key")
            validate_pk_record(key, request.record.value)
            self._store_value(key, request.record.value)
            return request
        return Message(MessageType.PING)  # PING (deprecated) is answered in kind

    def _store_value(self, key: bytes, value: bytes) -> None:
        self._values.pop(key, None)
        self._values[key] = value
        while len(self._values) > MAX_VALUES:
            self._values.popitem(last=False)

    def _local_value(self, key: bytes) -> bytes | None:
        if key == pk_record_key(self._host.peer_id):
            return self._public_key
        return self._values.get(key)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _dialable(addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
    return tuple(a for a in addrs if a.unsupported_part() is None)


def _is_loopback(addr: Multiaddr) -> bool:
    host = addr.value_for("ip4") or addr.value_for("ip6")
    try:
        return host is None or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
