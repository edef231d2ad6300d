"""Identify as a service: answer ``/ipfs/id/1.0.0``, identify new connections, push changes.

Peers learn what this node serves from identify; when that changes (a protocol is
served or stopped, as the DHT does when it switches between client and server mode)
the node tells every connected peer with ``/ipfs/id/push/1.0.0``: a stream carrying
one ``Identify`` message, then closed. What peers tell us (by answer or push) goes
into the peer store, and subscribers (the DHT's routing table) hear of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from p2pnode.errors import DecodeError, P2PError
from p2pnode.net.connection import Connection
from p2pnode.net.framed import read_frame
from p2pnode.net.host import Host
from p2pnode.net.stream import Stream
from p2pnode.protocols import identify
from p2pnode.protocols.identify import IdentifyInfo
from p2pnode.routing.peerstore import IDENTIFY_TTL
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

log = logging.getLogger(__name__)

PUSH_PROTOCOL_ID = "/ipfs/id/push/1.0.0"
IDENTIFY_TIMEOUT = 10.0  # seconds for one identify exchange or push

Identified = Callable[[PeerId, IdentifyInfo], None]


class IdentifyService:
    """Serves identify and identify push on ``host``; see the module docstring.

    ``on_connect``: identify every new connection's peer (in the background), so
    protocols that choose peers by what they serve (the DHT) learn of them.
    """

    def __init__(self, host: Host, describe: Callable[[Stream], IdentifyInfo]) -> None:
        self._host = host
        self._describe = describe
        self.on_connect = False
        self.on_outbound = False  # identify the peers of connections we dial
        # told what each identified peer says it sees us at, with the connection it used
        self.on_observed: Callable[[Connection, Multiaddr], None] | None = None
        self._subscribers: list[Identified] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._identifying: set[PeerId] = set()
        self._push_scheduled = False
        self._closed = False

    def register(self) -> None:
        """Serve identify and identify push on the host."""
        self._host.set_handler(identify.PROTOCOL_ID, self._answer)
        self._host.set_handler(PUSH_PROTOCOL_ID, self._receive_push)

    def subscribe(self, callback: Identified) -> None:
        """Call ``callback(peer_id, info)`` whenever a peer tells us about itself."""
        self._subscribers.append(callback)

    async def identify(self, peer: PeerId, conn: Connection | None = None) -> IdentifyInfo:
        """Ask ``peer`` (over ``conn``, if given) to describe itself; remember and announce
        what it says."""
        if conn is not None:
            stream = await conn.new_stream([identify.PROTOCOL_ID])
        else:
            stream = await self._host.new_stream(peer, [identify.PROTOCOL_ID])
        try:
            async with asyncio.timeout(IDENTIFY_TIMEOUT):
                info = await identify.receive_identify(stream)
        except BaseException:
            stream.reset()
            raise
        if info.observed_addr is not None and self.on_observed is not None:
            connection = stream.connection
            assert isinstance(connection, Connection)
            self.on_observed(connection, info.observed_addr)
        self._learn(stream.remote_peer, info)
        return info

    def connected(self, conn: Connection) -> None:
        """A new connection: identify its peer in the background when ``on_connect`` (or
        ``on_outbound``, for a connection we dialed)."""
        peer = conn.remote_peer
        wanted = self.on_connect or (self.on_outbound and conn.is_initiator)
        if not wanted or self._closed or peer in self._identifying:
            return
        self._identifying.add(peer)
        self._spawn(self._identify_quietly(peer, conn))

    def changed(self) -> None:
        """What this node serves changed: push the news to connected peers (coalesced)."""
        if self._push_scheduled or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not running yet: peers will ask when they connect
        self._push_scheduled = True
        loop.call_soon(self._push_now)

    async def close(self) -> None:
        """End background identifies and pushes."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals -----------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _identify_quietly(self, peer: PeerId, conn: Connection) -> None:
        # over the new connection itself: an older one to the same PeerId may lead to a
        # previous run of that peer (restarted elsewhere, its old connection not yet seen
        # to be dead), whose answer would keep its stale addresses in the peer store
        try:
            await self.identify(peer, conn)
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("identify of %s failed: %s", peer, exc)
        finally:
            self._identifying.discard(peer)

    def _learn(self, peer: PeerId, info: IdentifyInfo) -> None:
        store = self._host.peer_store
        usable = [a for a in info.listen_addrs if a.unsupported_part() is None]
        store.add_addrs(peer, usable, "identify", IDENTIFY_TTL)
        store.set_identify(peer, info.protocols, info.agent_version)
        for callback in self._subscribers:
            try:
                callback(peer, info)
            except Exception:
                log.exception("identify subscriber failed")

    async def _answer(self, stream: Stream) -> None:
        await identify.send_identify(stream, self._describe(stream))

    async def _receive_push(self, stream: Stream) -> None:
        try:
            async with asyncio.timeout(IDENTIFY_TIMEOUT):
                message = await read_frame(stream, identify.MAX_MESSAGE_SIZE)
            if message is None:
                raise DecodeError("identify push stream closed without a message")
            info = identify.decode_identify(message)
            if info.peer_id is not None and info.peer_id != stream.remote_peer:
                raise DecodeError(f"identify push key belongs to {info.peer_id}")
        except (P2PError, TimeoutError) as exc:
            log.info("bad identify push from %s: %s", stream.remote_peer, exc)
            stream.reset()
            return
        await stream.close()
        self._learn(stream.remote_peer, info)

    def _push_now(self) -> None:
        self._push_scheduled = False
        if self._closed:
            return
        for peer in {c.remote_peer for c in self._host.connections()}:
            known = self._host.peer_store.protocols_of(peer)
            if not known or PUSH_PROTOCOL_ID in known:  # unknown: try; `na` costs one stream
                self._spawn(self._push(peer))

    async def _push(self, peer: PeerId) -> None:
        with contextlib.suppress(P2PError, TimeoutError, OSError):
            stream = await self._host.new_stream(peer, [PUSH_PROTOCOL_ID])
            try:
                async with asyncio.timeout(IDENTIFY_TIMEOUT):
                    info = self._describe(stream)
                    await stream.write(encode_frame(identify.encode_identify(info)))
                    await stream.close()
            except BaseException:
                stream.reset()
                raise
