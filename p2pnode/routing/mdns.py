"""libp2p mDNS discovery (specs: ``discovery/mdns.md``) on top of ``zeroconf``.

Each node answers for ``<random name>._p2p._udp.local.`` with one TXT string
``dnsaddr=<multiaddr>/p2p/<peer id>`` per address. Peers are learnt from PTR + TXT
records alone (rust-libp2p sends no SRV or A records), read from every DNS record
zeroconf receives, so announcements and answers to anyone's query both count.
Turning records into peers (:func:`parse_txt`, :func:`peer_from_txt`,
:class:`PeerTable`) is plain code with no sockets; :class:`MdnsDiscovery` is the
asyncio edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pnode.errors import DiscoveryError, P2PError
from p2pnode.net.addresses import expand_wildcards
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

if TYPE_CHECKING:  # zeroconf is imported when discovery starts, not with this module
    from zeroconf import ServiceInfo
    from zeroconf._protocol.outgoing import DNSOutgoing

log = logging.getLogger(__name__)

SERVICE_TYPE = "_p2p._udp.local."
DNSADDR_PREFIX = "dnsaddr="
DEFAULT_TTL = 120
MAX_TXT_STRINGS = 64
MAX_ADVERTISED = 16  # addresses in our TXT record (a peer keeps at most 16 of a record)


@dataclass(slots=True)
class DiscoveredPeer:
    """A peer seen on the LAN: its addresses and when its record expires (monotonic time)."""

    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    last_seen: float
    expires: float


@dataclass(slots=True, frozen=True)
class PeerDiscovered:
    """A new peer, or new addresses for a known one."""

    peer: DiscoveredPeer


@dataclass(slots=True, frozen=True)
class PeerExpired:
    """A peer's record expired or it said goodbye."""

    peer_id: PeerId


DiscoveryEvent = PeerDiscovered | PeerExpired


# -- records <-> peers (no I/O) -------------------------------------------------------


def parse_txt(rdata: bytes) -> list[str]:
    """The strings of TXT record data (each one length-prefixed); undecodable ones are skipped."""
    strings: list[str] = []
    pos = 0
    while pos < len(rdata) and len(strings) < MAX_TXT_STRINGS:
        size = rdata[pos]
        chunk = rdata[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if len(chunk) < size:
            break
        with contextlib.suppress(UnicodeDecodeError):
            strings.append(chunk.decode())
    return strings


def encode_txt(strings: Sequence[str]) -> bytes:
    """TXT record data for ``strings`` (each at most 255 bytes)."""
    out = bytearray()
    for text in strings:
        raw = text.encode()
        if len(raw) > 255:
            raise ValueError(f"TXT string longer than 255 bytes: {text[:40]}...")
        out += bytes((len(raw),)) + raw
    return bytes(out)


def peer_from_txt(
    strings: Sequence[str], own_peer: PeerId | None, max_addrs: int = 16
) -> tuple[PeerId, list[Multiaddr]] | None:
    """The peer a TXT record describes, or None (with a debug log) when it is not usable."""
    peer: PeerId | None = None
    addrs: list[Multiaddr] = []
    for text in strings:
        if not text.startswith(DNSADDR_PREFIX):
            continue
        try:
            addr = Multiaddr.from_string(text[len(DNSADDR_PREFIX) :])
            addr_peer = addr.peer_id
        except P2PError as exc:
            log.debug("mDNS: ignoring unparsable dnsaddr %r: %s", text[:120], exc)
            continue
        if addr_peer is None:
            log.debug("mDNS: ignoring dnsaddr without /p2p: %s", addr)
            continue
        if peer is None:
            peer = addr_peer
        elif addr_peer != peer:
            log.debug("mDNS: ignoring a record that names two peers (%s, %s)", peer, addr_peer)
            return None
        if len(addrs) < max_addrs:
            addrs.append(addr.without_peer_id())
    if peer is None or not addrs:
        return None
    if peer == own_peer:
        return None
    return peer, addrs


class PeerTable:
    """Peers seen recently, bounded in size, expiring when their records' TTL runs out."""

    def __init__(
        self,
        max_peers: int = 1024,
        max_addrs: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_peers = max_peers
        self.max_addrs = max_addrs
        self._clock = clock
        self._peers: dict[PeerId, DiscoveredPeer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: PeerId) -> DiscoveredPeer | None:
        """The unexpired entry for ``peer_id``."""
        entry = self._peers.get(peer_id)
        if entry is not None and entry.expires <= self._clock():
            return None
        return entry

    def update(
        self, peer_id: PeerId, addrs: Sequence[Multiaddr], ttl: float
    ) -> PeerDiscovered | None:
        """Record an answer; return an event when the peer or its addresses are new."""
        now = self._clock()
        entry = self._peers.get(peer_id)
        addrs = tuple(addrs[: self.max_addrs])
        if entry is None:
            if len(self._peers) >= self.max_peers:
                self.expire()
                if len(self._peers) >= self.max_peers:
                    log.debug("mDNS: peer table full (%d), ignoring %s", self.max_peers, peer_id)
                    return None
            entry = DiscoveredPeer(peer_id, addrs, now, now + ttl)
            self._peers[peer_id] = entry
            return PeerDiscovered(entry)
        changed = set(addrs) != set(entry.addrs) or entry.expires <= now
        entry.addrs, entry.last_seen, entry.expires = addrs, now, now + ttl
        return PeerDiscovered(entry) if changed else None

    def remove(self, peer_id: PeerId) -> PeerExpired | None:
        """Forget a peer (it said goodbye)."""
        return PeerExpired(peer_id) if self._peers.pop(peer_id, None) is not None else None

    def expire(self) -> list[PeerExpired]:
        """Drop every entry whose TTL ran out."""
        now = self._clock()
        gone = [p for p, e in self._peers.items() if e.expires <= now]
        for peer_id in gone:
            del self._peers[peer_id]
        return [PeerExpired(p) for p in gone]

    def peers(self) -> list[DiscoveredPeer]:
        """Unexpired peers."""
        now = self._clock()
        return [e for e in self._peers.values() if e.expires > now]


def random_peer_name() -> str:
    """A random DNS label for our service instance, as the spec asks."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


# -- the asyncio edge ----------------------------------------------------------------------


class MdnsDiscovery:
    """Advertises this node and discovers others with mDNS (zeroconf's asyncio API)."""

    def __init__(
        self,
        peer_id: PeerId,
        listen_addrs: Sequence[Multiaddr],
        *,
        extra_addrs: Sequence[Multiaddr] = (),
        query_interval: float = 10.0,
        ttl: int = DEFAULT_TTL,
        max_peers: int = 1024,
    ) -> None:
        self.peer_id = peer_id
        self.query_interval = query_interval
        self.ttl = ttl
        self.table = PeerTable(max_peers)
        self._listen_addrs = list(listen_addrs)
        self._extra_addrs = list(extra_addrs)
        self._instance = f"{random_peer_name()}.{SERVICE_TYPE}"
        self._instances: dict[str, PeerId] = {}
        self._subscribers: list[asyncio.Queue[DiscoveryEvent]] = []
        self._changed = asyncio.Event()
        self._zeroconf: object | None = None
        self._info: ServiceInfo | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def advertised_addrs(self) -> list[Multiaddr]:
        """What we announce, with /p2p: the real interface addresses reachable on the
        link, then the extra ones (public and relayed addresses); at most 16."""
        addrs = expand_wildcards(self._listen_addrs, for_link=True)
        addrs += [a for a in self._extra_addrs if a not in addrs]
        return [a.with_peer_id(self.peer_id) for a in addrs[:MAX_ADVERTISED]]

    async def start(self) -> None:
        """Join the multicast group, announce ourselves (if listening) and query at once."""
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._zeroconf = azc
        zc = azc.zeroconf
        # Answer queries at once, as rust-libp2p and js-libp2p do, instead of after the
        # 20-120 ms random delay RFC 6762 suggests for shared records (zeroconf's default).
        queue = getattr(zc, "out_queue", None)
        if queue is not None and hasattr(queue, "_multicast_delay_random_max"):
            queue._multicast_delay_random_min = 0
            queue._multicast_delay_random_max = 1
        zc.async_add_listener(_record_listener(self), None)  # type: ignore[arg-type]
        await zc.async_wait_for_start()
        self._query()
        await self._announce()
        self._tasks.append(asyncio.create_task(self._maintain()))

    async def set_extra_addrs(self, addrs: Sequence[Multiaddr]) -> None:
        """Announce ``addrs`` (relayed ``/p2p-circuit`` or public addresses) besides the
        link ones from now on; peers hear the new record at once."""
        if list(addrs) == self._extra_addrs:
            return
        self._extra_addrs = list(addrs)
        if self._zeroconf is not None:
            await self._announce()

    async def _announce(self) -> None:
        """Register our record, or update it when it is already registered."""
        from zeroconf.asyncio import AsyncZeroconf

        azc = self._zeroconf
        info = self.service_info()
        if not isinstance(azc, AsyncZeroconf) or info is None:
            return
        if self._info is None:
            # Our name is random, so skip the ~1 s uniqueness probe and announce at once.
            await azc.async_register_service(info, cooperating_responders=True)
        else:
            await azc.async_update_service(info)
        self._info = info

    def service_info(self) -> ServiceInfo | None:
        """Our record as zeroconf announces it (None: no address to announce)."""
        from zeroconf import ServiceInfo

        addrs = self.advertised_addrs()
        if not addrs:
            return None
        ips = [
            ipaddress.ip_address(a.value_for("ip4") or "").packed
            for a in addrs
            if a.value_for("ip4") and not a.is_circuit
        ]
        return ServiceInfo(
            SERVICE_TYPE,
            self._instance,
            port=_first_port(addrs),
            properties=encode_txt([f"{DNSADDR_PREFIX}{a}" for a in addrs]),
            addresses=ips or None,
            server=self._instance,  # what registering would fill in; updating needs it
            host_ttl=self.ttl,
            other_ttl=self.ttl,
        )

    async def stop(self) -> None:
        """Say goodbye (TTL 0) and leave; idempotent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        azc, self._zeroconf = self._zeroconf, None
        if azc is None:
            return
        from zeroconf.asyncio import AsyncZeroconf

        assert isinstance(azc, AsyncZeroconf)
        if self._info is not None:
            with contextlib.suppress(Exception):
                await azc.async_unregister_all_services()
        await azc.async_close()

    def peers(self) -> list[DiscoveredPeer]:
        """Peers currently known."""
        return self.table.peers()

    async def events(self) -> AsyncIterator[DiscoveryEvent]:
        """Discovery events from now on (each call is its own subscription)."""
        queue: asyncio.Queue[DiscoveryEvent] = asyncio.Queue(maxsize=1024)
        self._subscribers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    async def find(self, peer_id: PeerId, timeout: float) -> DiscoveredPeer:
        """Wait (querying now) until ``peer_id`` is seen; DiscoveryError after ``timeout``."""
        deadline = time.monotonic() + timeout
        self._query()
        while (entry := self.table.get(peer_id)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DiscoveryError(
                    f"peer {peer_id} not found with mDNS within {timeout}s: is it running with "
                    "mDNS on this network? Or pass its full multiaddr."
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self._changed.wait()
            if self.table.get(peer_id) is None and remaining > 1.0:
                self._query()
        return entry

    # -- internals --------------------------------------------------------------------

    def _query(self) -> None:
        from zeroconf.asyncio import AsyncZeroconf

        azc = self._zeroconf
        if isinstance(azc, AsyncZeroconf):
            azc.zeroconf.async_send(self.query_packet())

    def query_packet(self) -> DNSOutgoing:
        """A query for every peer's record, listing ours as a known answer when we announce
        one (RFC 6762 s7.1): else our own responder answers it, and having multicast our
        record it then stays silent to everyone else's queries for a second (s6)."""
        from zeroconf._dns import DNSQuestion
        from zeroconf._protocol.outgoing import DNSOutgoing
        from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        if self._info is not None:
            out.add_answer_at_time(self._info.dns_pointer(), 0)
        return out

    async def _maintain(self) -> None:
        """Query again 1 s and 3 s after starting, then every ``query_interval`` seconds;
        expire stale peers. (A responder stays silent when it multicast its record less
        than 1 s ago, RFC 6762 section 6, so a node that has just announced itself does
        not answer our first query; continuous querying is section 5.2.)"""
        for delay in (1.0, 2.0):
            await asyncio.sleep(delay)
            self._query()
        next_query = time.monotonic() + self.query_interval
        while True:
            await asyncio.sleep(min(self.query_interval, 5.0))
            for event in self.table.expire():
                self._publish(event)
            if time.monotonic() >= next_query:
                self._query()
                next_query += self.query_interval

    def _publish(self, event: DiscoveryEvent) -> None:
        self._changed.set()
        for queue in self._subscribers:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.debug("mDNS: a slow event subscriber missed %r", event)

    def _on_txt(self, name: str, rdata: bytes, ttl: float) -> None:
        parsed = peer_from_txt(parse_txt(rdata), self.peer_id)
        if parsed is None:
            return
        peer_id, addrs = parsed
        if ttl <= 1:  # a goodbye
            self._on_goodbye(name)
            return
        if len(self._instances) < 4 * self.table.max_peers:
            self._instances[name] = peer_id
        event = self.table.update(peer_id, addrs, ttl)
        if event is not None:
            self._publish(event)

    def _on_goodbye(self, name: str) -> None:
        peer_id = self._instances.pop(name, None)
        if peer_id is not None and (event := self.table.remove(peer_id)) is not None:
            self._publish(event)


def _first_port(addrs: Sequence[Multiaddr]) -> int:
    """The TCP port of the first direct address (the SRV record wants one), else 0."""
    for addr in addrs:
        if not addr.is_circuit:
            with contextlib.suppress(P2PError):
                return addr.without_peer_id().tcp_host_port()[1]
    return 0


def _record_listener(discovery: MdnsDiscovery) -> object:
    from zeroconf import RecordUpdateListener

    class RecordListener(_RecordHandling, RecordUpdateListener):
        pass

    return RecordListener(discovery)


class _RecordHandling:
    """Feeds every PTR/TXT record zeroconf receives for ``_p2p._udp.local.`` to the discovery."""

    def __init__(self, discovery: MdnsDiscovery) -> None:
        self.discovery = discovery

    def async_update_records(self, zc: Any, now: float, records: list[Any]) -> None:
        from zeroconf._dns import DNSPointer, DNSText

        suffix = "." + SERVICE_TYPE
        for update in records:
            record = getattr(update, "new", None)
            try:
                if isinstance(record, DNSText) and record.name.lower().endswith(suffix):
                    self.discovery._on_txt(record.name.lower(), record.text, record.ttl)
                elif (
                    isinstance(record, DNSPointer)
                    and record.name.lower() == SERVICE_TYPE
                    and record.ttl <= 1
                ):
                    self.discovery._on_goodbye(record.alias.lower())
            except Exception as exc:  # a bad record must never break discovery
                log.debug("mDNS: ignoring a record we cannot use: %s", exc)

    def async_update_records_complete(self) -> None:
        """Nothing to do after a batch."""


class MdnsRouter:
    """mDNS as a router: asks the node's running discovery, or runs a short-lived one."""

    name = "mdns"

    def __init__(self, local_peer: PeerId, discovery: MdnsDiscovery | None = None) -> None:
        self._local_peer = local_peer
        self.discovery = discovery

    async def find_peer(self, peer_id: PeerId, timeout: float) -> Sequence[Multiaddr]:
        """Query the LAN for ``peer_id``; DiscoveryError when it does not answer in time."""
        if self.discovery is not None:
            return (await self.discovery.find(peer_id, timeout)).addrs
        discovery = MdnsDiscovery(self._local_peer, [])
        await discovery.start()
        try:
            return (await discovery.find(peer_id, timeout)).addrs
        finally:
            await discovery.stop()

    def remember(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """mDNS keeps nothing: peers announce themselves."""
