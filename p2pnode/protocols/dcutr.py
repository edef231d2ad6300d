"""DCUtR over asyncio: turn a relayed connection into a direct one by hole punching.

The protocol itself is :mod:`p2pnode.wire.dcutr`; this module opens and reads the
streams, keeps the clock and sleeps until each dial is due. Dialing is injected
(``dial_direct``): the node dials from its listen port, so the two sides' SYNs
meet in a TCP simultaneous open, and registers the connection it gets.

- :class:`DcutrService` serves ``/libp2p/dcutr`` for the peer that dialed through
  the relay: it answers CONNECT and dials when SYNC arrives.
- :func:`hole_punch` is run by the peer that *received* the relayed connection
  (after identify told it the peer's addresses): up to three attempts, each with its
  own exchange, returning the direct connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from p2pnode.errors import DialError, LocalProtocolError, P2PError, P2PTimeoutError
from p2pnode.net.connection import Connection
from p2pnode.net.host import Host
from p2pnode.net.stream import Stream
from p2pnode.wire.dcutr import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_ID,
    Action,
    CloseStream,
    DialAt,
    GiveUp,
    HolePunchInitiator,
    HolePunchResponder,
    OpenStream,
    Send,
    is_relayed,
)
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

log = logging.getLogger(__name__)

__all__ = ["PROTOCOL_ID", "DcutrService", "DialDirect", "HolePunchFailedError", "hole_punch"]

# go-libp2p's values: a minute for one exchange on the stream, ten seconds per dial
STREAM_TIMEOUT = 60.0
DIAL_TIMEOUT = 10.0

# (peer, addresses, whether we are the security initiator) -> the direct connection
DialDirect = Callable[[PeerId, Sequence[Multiaddr], bool], Awaitable[Connection]]
OwnAddrs = Sequence[Multiaddr] | Callable[[], Sequence[Multiaddr]]


class HolePunchFailedError(DialError):
    """Every hole-punching attempt failed; the relayed connection is still there."""


def _direct_connection(host: Host, peer: PeerId, relayed: Connection) -> Connection | None:
    for conn in host.connections(peer):
        if conn is not relayed and conn.is_usable and not is_relayed(conn.remote_addr):
            return conn
    return None


async def _wait_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _dial(
    dial_direct: DialDirect, peer: PeerId, action: DialAt
) -> tuple[Connection | None, str]:
    """One attempt's dial: the connection, or None and why not."""
    try:
        async with asyncio.timeout(DIAL_TIMEOUT):
            return await dial_direct(peer, action.addrs, action.as_initiator), ""
    except (P2PError, OSError, TimeoutError) as exc:
        return None, str(exc) or type(exc).__name__


async def hole_punch(
    host: Host,
    relayed_conn: Connection,
    own_addrs: Sequence[Multiaddr],
    dial_direct: DialDirect,
) -> Connection:
    """Upgrade ``relayed_conn`` (which the peer dialed to us) to a direct connection.

    ``own_addrs``: our directly dialable (observed, public) addresses, sent in CONNECT.
    Returns at once with an existing direct connection to the peer. Raises
    HolePunchFailedError when all attempts fail, RemoteProtocolError when the peer
    breaks the protocol, LocalProtocolError when there is no address to offer.
    """
    peer = relayed_conn.remote_peer
    existing = _direct_connection(host, peer, relayed_conn)
    if existing is not None:
        return existing
    machine = HolePunchInitiator(own_addrs)
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    actions = machine.start()
    while True:
        action = actions.pop(0)
        if isinstance(action, OpenStream):
            actions = await _run_exchange(relayed_conn, machine, loop)
        elif isinstance(action, DialAt):
            await _wait_until(loop, action.when)
            log.debug(
                "hole punch to %s, attempt %d (rtt %.1f ms, %s)",
                peer,
                action.attempt,
                (machine.rtt or 0) * 1000,
                "client" if action.as_initiator else "server",
            )
            conn, why = await _dial(dial_direct, peer, action)
            if conn is not None:
                machine.dial_succeeded()
                return conn
            failures.append(f"attempt {action.attempt}: {why}")
            actions = machine.dial_failed()
        elif isinstance(action, GiveUp):
            raise HolePunchFailedError(
                f"hole punching to {peer} failed {action.attempts} times ("
                + "; ".join(failures)
                + "); the relayed connection stays in use"
            )
        else:  # pragma: no cover - the initiator asks for nothing else here
            raise LocalProtocolError(f"unexpected DCUtR action {action!r}")


async def _run_exchange(
    relayed_conn: Connection, machine: HolePunchInitiator, loop: asyncio.AbstractEventLoop
) -> list[Action]:
    """One attempt's stream: open it, CONNECT, CONNECT, SYNC; the dial that follows."""
    try:
        async with asyncio.timeout(STREAM_TIMEOUT):
            stream = await relayed_conn.new_stream([PROTOCOL_ID])
            try:
                return await _exchange(stream, machine, machine.stream_opened(loop.time()))
            except BaseException:
                stream.reset()
                raise
    except TimeoutError:
        raise P2PTimeoutError(
            f"the DCUtR exchange with {relayed_conn.remote_peer} took over {STREAM_TIMEOUT}s"
        ) from None


async def _exchange(
    stream: Stream, machine: HolePunchInitiator | HolePunchResponder, actions: list[Action]
) -> list[Action]:
    """Carry out the machine's stream actions until it hands out a dial; what is left."""
    loop = asyncio.get_running_loop()
    while True:
        while actions:
            action = actions[0]
            if isinstance(action, Send):
                await stream.write(action.data)
            elif isinstance(action, CloseStream):
                await stream.close()
            else:
                return actions
            actions.pop(0)
        chunk = await stream.read(MAX_MESSAGE_SIZE + 16)
        if not chunk:
            machine.stream_ended()  # raises: the machine hands out its dial before the end
            raise LocalProtocolError("the DCUtR stream ended without a dial")
        actions = list(machine.receive_data(chunk, loop.time()))


class DcutrService:
    """Serves ``/libp2p/dcutr`` on ``host``: the role of the peer that dialed the relay.

    ``own_addrs`` (a list, or a function giving the current one): our direct addresses
    for CONNECT. ``require_relayed``: refuse exchanges on direct connections, as the
    protocol is meant for relayed ones (off only for tests over loopback).
    """

    def __init__(
        self,
        host: Host,
        own_addrs: OwnAddrs,
        dial_direct: DialDirect,
        *,
        require_relayed: bool = True,
    ) -> None:
        self._host = host
        self._own_addrs = own_addrs
        self._dial_direct = dial_direct
        self.require_relayed = require_relayed
        self._tasks: set[asyncio.Task[None]] = set()
        self._exchanges: dict[Connection, int] = {}  # DCUtR streams seen per relayed connection
        self._closed = False
        # told of every hole punch this side finished: (peer, connection or None)
        self.on_result: Callable[[PeerId, Connection | None], None] | None = None

    def register(self) -> None:
        """Serve ``/libp2p/dcutr`` on the host."""
        self._host.set_handler(PROTOCOL_ID, self._handle)

    async def close(self) -> None:
        """Stop serving and end dials still under way."""
        self._closed = True
        self._host.remove_handler(PROTOCOL_ID)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _addrs(self) -> Sequence[Multiaddr]:
        own = self._own_addrs
        return own() if callable(own) else own

    async def _handle(self, stream: Stream) -> None:
        conn = stream.connection
        # We must have dialed this connection (through the relay): the peer that received
        # it is the one to start DCUtR. go-libp2p refuses the other direction too.
        if (
            self._closed
            or not isinstance(conn, Connection)
            or not conn.is_initiator
            or (self.require_relayed and not is_relayed(conn.remote_addr))
        ):
            log.info("refused a DCUtR stream from %s on %r", stream.remote_peer, conn)
            stream.reset()
            return
        self._exchanges[conn] = attempt = self._exchanges.get(conn, 0) + 1
        if attempt == 1:
            conn.on_close(self._forget)
        try:
            machine = HolePunchResponder(self._addrs(), attempt)
        except LocalProtocolError as exc:
            log.info("cannot hole punch with %s: %s", stream.remote_peer, exc)
            stream.reset()
            return
        try:
            async with asyncio.timeout(STREAM_TIMEOUT):
                actions = await _exchange(stream, machine, [])
        except (P2PError, TimeoutError) as exc:
            log.info("DCUtR exchange with %s failed: %s", stream.remote_peer, exc)
            stream.reset()
            return
        (dial,) = actions
        assert isinstance(dial, DialAt)
        # a task of our own: the relayed connection (and its handler tasks) may close as
        # soon as the peer has its direct connection
        task = asyncio.create_task(self._punch(stream.remote_peer, dial))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, conn: Connection) -> None:
        self._exchanges.pop(conn, None)

    async def _punch(self, peer: PeerId, dial: DialAt) -> None:
        await _wait_until(asyncio.get_running_loop(), dial.when)
        conn, why = await _dial(self._dial_direct, peer, dial)
        if conn is None:
            log.info("hole punch to %s failed: %s", peer, why)
        if self.on_result is not None:
            self.on_result(peer, conn)
