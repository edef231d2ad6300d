"""The relay service (circuit relay v2, hop side): reservations, and circuits spliced
between two peers under the limits of :class:`~p2pnode.wire.relay.RelayLimits`.

A peer RESERVEs a slot and gets a signed voucher; another peer sends CONNECT naming it,
and the relay opens a stop stream to the reserved peer over its existing connection.
When that peer accepts, the two streams are joined: what one end writes the other
reads, until either end closes, or the circuit reaches its duration or its data limit
in either direction, when both are reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from p2pnode.errors import DecodeError, P2PError
from p2pnode.net.addresses import expand_wildcards
from p2pnode.net.connection import Connection
from p2pnode.net.framed import read_frame
from p2pnode.net.host import Host
from p2pnode.net.limits import Refusals
from p2pnode.net.stream import Stream
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.relay import (
    HOP_PROTOCOL,
    MAX_MESSAGE_SIZE,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    RelayBook,
    RelayLimits,
    RelayPeer,
    Reservation,
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

EXCHANGE_TIMEOUT = 10.0  # seconds for a request to arrive, or the stop side to answer


class RelayService:
    """Serves ``/libp2p/circuit/relay/0.2.0/hop`` on ``host``; see the module docstring."""

    def __init__(
        self,
        host: Host,
        identity: Identity,
        limits: RelayLimits | None = None,
        *,
        refusals: Refusals | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._host = host
        self._identity = identity
        self.book = RelayBook(limits)
        self._refusals = refusals or Refusals()
        self._clock = clock
        self._circuits: set[asyncio.Task[None]] = set()
        self.relayed_bytes = 0  # carried over every circuit, both directions
        self.circuits_cut = 0  # circuits reset at their duration or data limit

    @property
    def limits(self) -> RelayLimits:
        return self.book.limits

    def register(self) -> None:
        self._host.set_handler(HOP_PROTOCOL, self.handle_hop)

    async def close(self) -> None:
        """Stop serving; reset every open circuit."""
        self._host.remove_handler(HOP_PROTOCOL)
        for task in list(self._circuits):
            task.cancel()
        await asyncio.gather(*self._circuits, return_exceptions=True)

    async def handle_hop(self, stream: Stream) -> None:
        """One hop request: RESERVE or CONNECT."""
        peer = stream.remote_peer
        try:
            if stream.connection.limited:
                # relaying over a relay would let circuits chain without end
                self._refuse(peer, "relay_over_relay", "a hop request over a relayed connection")
                await _answer(stream, HopMessage(HopType.STATUS, status=Status.PERMISSION_DENIED))
                return
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                raw = await read_frame(stream, MAX_MESSAGE_SIZE)
            if raw is None:
                return
            message = decode_hop(raw)
        except (DecodeError, TimeoutError) as exc:
            log.info("relay: bad hop request from %s: %s", peer, exc or "timed out")
            with contextlib.suppress(P2PError):
                await _answer(stream, HopMessage(HopType.STATUS, status=Status.MALFORMED_MESSAGE))
            return
        except P2PError:
            return
        if message.type == HopType.RESERVE:
            await self._reserve(stream, peer)
        elif message.type == HopType.CONNECT:
            await self._connect(stream, peer, message)
        else:
            await _answer(stream, HopMessage(HopType.STATUS, status=Status.UNEXPECTED_MESSAGE))

    # -- reservations ----------------------------------------------------------------

    async def _reserve(self, stream: Stream, peer: PeerId) -> None:
        now = self._clock()
        conn = stream.connection
        ip = conn.remote_addr.value_for("ip4") or conn.remote_addr.value_for("ip6")
        renewal = self.book.expiry(peer) is not None
        status = self.book.reserve(peer, ip, now)
        if status != Status.OK:
            self._refuse(peer, "relay_reservations", f"{len(self.book.reservations(now))} held")
            await _answer(stream, HopMessage(HopType.STATUS, status=status))
            return
        if not renewal and isinstance(conn, Connection):
            conn.on_close(lambda closed: self._connection_closed(closed.remote_peer))
        expire = int(now) + self.limits.reservation_ttl
        me = self._host.peer_id
        addrs = tuple(a.with_peer_id(me) for a in expand_wildcards(self._host.listen_addrs))
        voucher = Voucher(me, peer, expire).seal(self._identity)
        answer = HopMessage(
            HopType.STATUS,
            reservation=Reservation(expire, addrs, voucher),
            limit=self.limits.circuit,
            status=Status.OK,
        )
        with contextlib.suppress(P2PError):
            await _answer(stream, answer)
            await stream.close()

    def _connection_closed(self, peer: PeerId) -> None:
        if not any(c.is_usable for c in self._host.connections(peer)):
            self.book.release(peer)

    # -- circuits --------------------------------------------------------------------

    async def _connect(self, stream: Stream, source: PeerId, message: HopMessage) -> None:
        if message.peer is None:
            await _answer(stream, HopMessage(HopType.STATUS, status=Status.MALFORMED_MESSAGE))
            return
        target = message.peer.peer_id
        status = self.book.open_circuit(source, target, self._clock())
        if status != Status.OK:
            self._refuse(source, f"relay_{status.name.lower()}", f"circuit to {target}")
            await _answer(stream, HopMessage(HopType.STATUS, status=status))
            return
        try:
            await self._open_circuit(stream, source, target)
        finally:
            self.book.close_circuit(source, target)

    async def _open_circuit(self, stream: Stream, source: PeerId, target: PeerId) -> None:
        limit = self.limits.circuit
        stop = await self._stop_stream(source, target, limit)
        if stop is None:
            await _answer(stream, HopMessage(HopType.STATUS, status=Status.CONNECTION_FAILED))
            return
        try:
            await _answer(stream, HopMessage(HopType.STATUS, limit=limit, status=Status.OK))
        except P2PError:
            stop.reset()
            return
        task = asyncio.current_task()
        assert task is not None
        self._circuits.add(task)
        try:
            await self._splice(stream, stop, limit)
        finally:
            self._circuits.discard(task)

    async def _stop_stream(self, source: PeerId, target: PeerId, limit: Limit) -> Stream | None:
        """The accepted stop stream to ``target``, or None (no connection, refused, silent)."""
        conns = [c for c in self._host.connections(target) if c.is_usable]
        if not conns:
            return None
        try:
            stop = await conns[0].new_stream([STOP_PROTOCOL])
        except P2PError as exc:
            log.info("relay: cannot open a stop stream to %s: %s", target, exc)
            return None
        try:
            request = StopMessage(StopType.CONNECT, peer=RelayPeer(source), limit=limit)
            await stop.write(encode_frame(encode_stop(request)))
            async with asyncio.timeout(EXCHANGE_TIMEOUT):
                raw = await read_frame(stop, MAX_MESSAGE_SIZE)
            reply = None if raw is None else decode_stop(raw)
        except (P2PError, TimeoutError) as exc:
            log.info("relay: stop exchange with %s failed: %s", target, exc or "timed out")
            stop.reset()
            return None
        if reply is None or reply.type != StopType.STATUS or reply.status != Status.OK:
            log.info("relay: %s refused a circuit from %s", target, source)
            stop.reset()
            return None
        return stop

    async def _splice(self, one: Stream, other: Stream, limit: Limit) -> None:
        """Join two streams until both ends close, or reset both at a limit."""
        pipes = {
            asyncio.ensure_future(self._pipe(one, other, limit.data)),
            asyncio.ensure_future(self._pipe(other, one, limit.data)),
        }
        cut = False
        try:
            async with asyncio.timeout(limit.duration):
                while pipes and not cut:
                    done, pipes = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                    cut = any(task.result() for task in done)
        except TimeoutError:
            cut = True
        finally:
            for task in pipes:
                task.cancel()
            if pipes:
                await asyncio.gather(*pipes, return_exceptions=True)
                one.reset()
                other.reset()
        if cut:
            self.circuits_cut += 1

    async def _pipe(self, source: Stream, sink: Stream, budget: int | None) -> bool:
        """Copy ``source`` to ``sink``; True when ``budget`` bytes ran out first."""
        size = self.limits.buffer_size
        left = budget
        try:
            while chunk := await source.read(size):
                if left is not None:
                    if len(chunk) > left:
                        await sink.write(chunk[:left])
                        self.relayed_bytes += left
                        return True
                    left -= len(chunk)
                await sink.write(chunk)
                self.relayed_bytes += len(chunk)
            await sink.close_write()
        except P2PError:
            source.reset()
            sink.reset()
        return False

    def _refuse(self, peer: PeerId, limit: str, detail: str) -> None:
        self._refusals.refuse(limit, str(peer), detail)


async def _answer(stream: Stream, message: HopMessage) -> None:
    await stream.write(encode_frame(encode_hop(message)))
    if message.status != Status.OK:
        await stream.close()
