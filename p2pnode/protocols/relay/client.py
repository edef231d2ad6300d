"""The client side of circuit relay v2: reservations, relayed dials, and the stop side.

- :meth:`RelayClient.reserve` asks a relay for a slot; the node then advertises
  ``<relay addr>/p2p/<relay>/p2p-circuit`` and :meth:`keep` renews the slot before it
  expires (or takes it again when the relay comes back).
- :meth:`RelayClient.dial` reaches a peer through its relay (CONNECT on the hop
  protocol); the stream the relay joins to that peer becomes a raw connection that both
  ends upgrade with Noise and a muxer, the dialer as initiator.
- :meth:`RelayClient.handle_stop` accepts such a circuit from a relay we hold a slot on.

Relayed connections are *limited*: :attr:`Connection.limited` is set, and the relay's
limits are named when it cuts one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from p2pnode.errors import (
    ConnectionClosedError,
    DecodeError,
    DialError,
    P2PError,
    ProtocolNotSupportedError,
    RecordError,
)
from p2pnode.net.connection import Connection
from p2pnode.net.framed import read_frame
from p2pnode.net.host import Host
from p2pnode.net.relayed import StreamTransport
from p2pnode.net.stream import Stream
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.relay import (
    HOP_PROTOCOL,
    MAX_MESSAGE_SIZE,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayPeer,
    Status,
    StopMessage,
    StopType,
    Voucher,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)

log = logging.getLogger(__name__)

EXCHANGE_TIMEOUT = 10.0
RENEW_MARGIN = 0.25  # renew when this share of a reservation's lifetime is left
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds between attempts to (re)reserve

# (stream transport, as initiator, expected peer, (remote, local) addresses) -> connection
Upgrade = Callable[
    [StreamTransport, bool, PeerId | None, tuple[Multiaddr, Multiaddr]], Awaitable[Connection]
]


class RelayRefusedError(DialError):
    """A relay answered a hop request with a status other than OK."""

    def __init__(self, relay: PeerId, what: str, status: Status | None) -> None:
        name = "no status" if status is None else status.name
        advice = {
            Status.NO_RESERVATION: "the peer holds no reservation there; it may have moved",
            Status.RESERVATION_REFUSED: "the relay is full or refuses this peer; try another",
            Status.RESOURCE_LIMIT_EXCEEDED: "the relay's circuit limit is reached; retry later",
            Status.PERMISSION_DENIED: "the relay does not relay for us",
            Status.CONNECTION_FAILED: "the relay could not reach the peer",
        }.get(status or Status.UNUSED, "try another relay")
        super().__init__(f"relay {relay} refused to {what}: {name} ({advice})")
        self.status = status


@dataclass(frozen=True, slots=True)
class RelayReservation:
    """A slot held on a relay."""

    relay: PeerId
    expire: float  # Unix seconds
    addrs: tuple[Multiaddr, ...]  # ours through the relay: .../p2p/<relay>/p2p-circuit
    limit: Limit | None


class RelayClient:
    """Reservations on relays and relayed connections for ``host``.

    ``upgrade`` runs the connection upgrade over a circuit; ``adopt`` registers an
    inbound relayed connection with the node; ``on_change`` is called when the set of
    relayed addresses changes (the node then pushes identify).
    """

    def __init__(
        self,
        host: Host,
        upgrade: Upgrade,
        adopt: Callable[[Connection], None],
        on_change: Callable[[], None] = lambda: None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._host = host
        self._upgrade = upgrade
        self._adopt = adopt
        self._on_change = on_change
        self._clock = clock
        self.reservations: dict[PeerId, RelayReservation] = {}
        self._keepers: dict[PeerId, asyncio.Task[None]] = {}
        self._stop_handlers: set[asyncio.Task[None]] = set()

    def register(self) -> None:
        self._host.set_handler(STOP_PROTOCOL, self.handle_stop)

    @property
    def kept(self) -> set[PeerId]:
        """Relays :meth:`keep` holds (or tries to hold) a slot on."""
        return set(self._keepers)

    @property
    def relayed_addrs(self) -> list[Multiaddr]:
        """Our addresses through every relay we hold a slot on."""
        now = self._clock()
        return [a for r in self.reservations.values() if r.expire > now for a in r.addrs]

    # -- reservations ----------------------------------------------------------------

    async def reserve(self, relay: Multiaddr | PeerId) -> RelayReservation:
        """Ask ``relay`` for a slot; RelayRefusedError or DialError when it says no."""
        conn = await self._host.connect(relay)
        relay_id = conn.remote_peer
        stream = await _open_hop(conn)
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await stream.write(encode_frame(encode_hop(HopMessage(HopType.RESERVE))))
                await stream.close_write()
                answer = await _read_hop(stream, relay_id)
        except TimeoutError:
            stream.reset()
            raise DialError(f"relay {relay_id} did not answer the reservation in time") from None
        except BaseException:
            stream.reset()
            raise
        await stream.close()
        if answer.type != HopType.STATUS or answer.status != Status.OK:
            raise RelayRefusedError(relay_id, "grant a reservation", answer.status)
        if answer.reservation is None:
            raise RelayRefusedError(relay_id, "grant a reservation (none in its answer)", None)
        granted = answer.reservation
        if granted.voucher is not None:
            self._check_voucher(granted.voucher, relay_id)
        relay_addrs = [a for a in granted.addrs if not a.is_circuit] or [conn.remote_addr]
        me = self._host.peer_id
        addrs = tuple(
            dict.fromkeys(
                a.without_peer_id().encapsulate(f"/p2p/{relay_id}/p2p-circuit/p2p/{me}")
                for a in relay_addrs
                if a.peer_id in (None, relay_id)
            )
        )
        reservation = RelayReservation(relay_id, float(granted.expire), addrs, answer.limit)
        previous = self.reservations.get(relay_id)
        self.reservations[relay_id] = reservation
        if previous is None or previous.addrs != addrs:
            self._on_change()
        return reservation

    def _check_voucher(self, raw: bytes, relay: PeerId) -> None:
        try:
            voucher = Voucher.open(raw)
        except (DecodeError, RecordError) as exc:
            raise DialError(f"relay {relay} sent an invalid reservation voucher: {exc}") from None
        if voucher.relay != relay or voucher.peer != self._host.peer_id:
            raise DialError(
                f"relay {relay} sent a voucher for relay {voucher.relay} and peer "
                f"{voucher.peer}, not for this node"
            )

    def keep(self, relay: Multiaddr) -> None:
        """Hold a slot on ``relay`` from now on: reserve, renew, and reserve again after a
        failure or when the relay comes back (with growing delays between attempts)."""
        peer = relay.peer_id
        if peer is None:
            raise DialError(f"a relay address must end in /p2p/<relay id>: {relay}")
        if peer not in self._keepers:
            self._keepers[peer] = asyncio.ensure_future(self._keep(relay, peer))

    async def _keep(self, relay: Multiaddr, peer: PeerId) -> None:
        failures = 0
        while True:
            try:
                reservation = await self.reserve(relay)
            except P2PError as exc:
                self._drop(peer)
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                log.info("relay %s: no reservation (%s); retrying in %.0f s", peer, exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                continue
            failures = 0
            lifetime = max(reservation.expire - self._clock(), 1.0)
            await self._until_renewal_or_loss(peer, lifetime * (1 - RENEW_MARGIN))

    async def _until_renewal_or_loss(self, peer: PeerId, seconds: float) -> None:
        """Return when it is time to renew, or at once when the relay connection is lost."""
        conns = [c for c in self._host.connections(peer) if c.is_usable and not c.limited]
        if not conns:
            return
        lost = asyncio.ensure_future(conns[0].wait_closed())
        try:
            await asyncio.wait([lost], timeout=seconds)
        finally:
            lost.cancel()
        if lost.done() and not lost.cancelled():
            log.info("relay %s: connection lost; reserving again", peer)
            self._drop(peer)

    def _drop(self, peer: PeerId) -> None:
        if self.reservations.pop(peer, None) is not None:
            self._on_change()

    async def close(self) -> None:
        tasks = [*self._keepers.values(), *self._stop_handlers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._keepers.clear()
        self._host.remove_handler(STOP_PROTOCOL)

    # -- relayed connections ---------------------------------------------------------

    async def dial(self, addr: Multiaddr) -> Connection:
        """A connection to the peer behind ``addr`` (``.../p2p/<relay>/p2p-circuit/p2p/<peer>``)."""
        relay_addr, relay = addr.relay()
        target = addr.peer_id
        if target is None:
            raise DialError(f"cannot dial {addr}: it names no peer after /p2p-circuit")
        if relay_addr.value_for("tcp") is not None:
            relay_conn = await self._host.dial_first(relay, [relay_addr])
        else:
            relay_conn = await self._host.connect(relay)
        if relay_conn.limited:
            raise DialError(f"cannot dial {addr}: the relay itself is reached only via a relay")
        stream = await _open_hop(relay_conn)
        try:
            request = HopMessage(HopType.CONNECT, peer=RelayPeer(target))
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                await stream.write(encode_frame(encode_hop(request)))
                answer = await _read_hop(stream, relay)
        except TimeoutError:
            stream.reset()
            raise DialError(f"relay {relay} did not answer CONNECT to {target} in time") from None
        except BaseException:
            stream.reset()
            raise
        if answer.type != HopType.STATUS or answer.status != Status.OK:
            stream.reset()
            raise RelayRefusedError(relay, f"connect us to {target}", answer.status)
        local = relay_conn.local_addr.encapsulate(f"/p2p/{relay}/p2p-circuit")
        return await self._upgrade_circuit(stream, relay, answer.limit, True, target, addr, local)

    async def handle_stop(self, stream: Stream) -> None:
        """A relay offers a circuit from another peer: accept it when we hold a slot there."""
        relay = stream.remote_peer
        try:
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                raw = await read_frame(stream, MAX_MESSAGE_SIZE)
            if raw is None:
                return
            message = decode_stop(raw)
        except (DecodeError, TimeoutError) as exc:
            log.info("relay %s: bad stop request: %s", relay, exc or "timed out")
            await _answer_stop(stream, Status.MALFORMED_MESSAGE)
            return
        if message.type != StopType.CONNECT or message.peer is None:
            await _answer_stop(stream, Status.UNEXPECTED_MESSAGE)
            return
        if relay not in self.reservations or stream.connection.limited:
            await _answer_stop(stream, Status.PERMISSION_DENIED)
            return
        source = message.peer.peer_id
        await stream.write(
            encode_frame(encode_stop(StopMessage(StopType.STATUS, status=Status.OK)))
        )
        remote = stream.connection.remote_addr.encapsulate(f"/p2p/{relay}/p2p-circuit/p2p/{source}")
        local = stream.connection.local_addr.encapsulate(f"/p2p/{relay}/p2p-circuit")
        try:
            conn = await self._upgrade_circuit(
                stream, relay, message.limit, False, source, remote, local
            )
        except P2PError as exc:
            log.info("relayed connection from %s via %s failed: %s", source, relay, exc)
            return
        if conn.remote_peer != source:
            log.info("relay %s announced %s, but %s answered", relay, source, conn.remote_peer)
            await conn.close()
            return
        self._adopt(conn)
        await conn.wait_closed()  # the stop stream carries the connection: hold it

    async def _upgrade_circuit(
        self,
        stream: Stream,
        relay: PeerId,
        limit: Limit | None,
        initiator: bool,
        peer: PeerId,
        remote: Multiaddr,
        local: Multiaddr,
    ) -> Connection:
        def explain(error: Exception | None) -> Exception | None:
            if error is None:
                return None
            cap = "" if limit is None else f"; the relay limits a circuit to {limit.describe()}"
            return ConnectionClosedError(f"relay {relay} ended the circuit to {peer}{cap}")

        transport = StreamTransport(stream, explain=explain)
        try:
            conn = await self._upgrade(transport, initiator, peer if initiator else None,
                                       (remote, local))  # fmt: skip
        except BaseException:
            with contextlib.suppress(P2PError):
                transport.abort()
            raise
        conn.limited = True
        conn.limit_bytes = None if limit is None else limit.data
        return conn


async def _open_hop(relay: Connection) -> Stream:
    try:
        return await relay.new_stream([HOP_PROTOCOL])
    except ProtocolNotSupportedError:
        raise DialError(
            f"{relay.remote_peer} is not a relay: it does not serve {HOP_PROTOCOL} "
            "(circuit relay v2); use a relay's address, e.g. of a node run with --relay-service"
        ) from None


async def _read_hop(stream: Stream, relay: PeerId) -> HopMessage:
    raw = await read_frame(stream, MAX_MESSAGE_SIZE)
    if raw is None:
        raise DialError(f"relay {relay} closed the hop stream without an answer")
    return decode_hop(raw)


async def _answer_stop(stream: Stream, status: Status) -> None:
    with contextlib.suppress(P2PError):
        await stream.write(encode_frame(encode_stop(StopMessage(StopType.STATUS, status=status))))
        await stream.close()
