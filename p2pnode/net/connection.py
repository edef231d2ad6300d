"""An upgraded connection: asyncio drives the Noise transport and a muxer session.

This is the thin asyncio edge of the stack (compare aioquic's
``asyncio/protocol.py``): each read feeds the sans-I/O cores, events wake
:class:`~p2pnode.stream.Stream` objects, and everything the cores want to send
is flushed once per loop iteration.

Reads go into one receive buffer and one plaintext buffer shared by every
connection of a thread (``buffer_updated`` consumes them before the loop reads
again), so the receive path allocates only the payload each stream is handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from p2pnode.errors import (
    ConnectionClosedError,
    LocalProtocolError,
    MuxerError,
    P2PError,
    P2PTimeoutError,
    RemoteProtocolError,
    StreamResetError,
)
from p2pnode.net.stream import Stream
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.multistream import MultistreamDialer
from p2pnode.wire.muxer import (
    GoAwayReceived,
    MuxerEvent,
    MuxerSession,
    PongReceived,
    SendWindowOpened,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
)
from p2pnode.wire.noise import NoiseTransport

log = logging.getLogger(__name__)

InboundStreamHandler = Callable[[Stream], Coroutine[Any, Any, None]]

RECEIVE_BUFFER_SIZE = 256 * 1024  # what asyncio's selector loop reads at most per call
FLUSH_THRESHOLD = 64 * 1024  # queued payload that is encrypted and written at once
WRITE_BUFFER_HIGH = 1024 * 1024  # unsent bytes in the transport before writers wait
# A peer that keeps sending while it does not read makes us queue answers (pongs, ACKs,
# resets, inline answers). Past this many unsent bytes we stop reading from it until its
# socket drains, and a peer that stays so for STALL_TIMEOUT seconds is disconnected.
# (Our own writers stop at WRITE_BUFFER_HIGH plus one piece each, well below it.)
# The bound holds for the unsent bytes of all of a peer's connections together.
MAX_UNSENT = 5 * WRITE_BUFFER_HIGH
STALL_TIMEOUT = 30.0
# new inbound streams whose handlers start per read (one read per connection and loop
# iteration); a burst waits its turn
INBOUND_STARTS_PER_ITERATION = 16


class _ReadBuffers(threading.local):
    """One socket buffer and one plaintext buffer per thread, reused by every read."""

    def __init__(self) -> None:
        self.socket = bytearray(RECEIVE_BUFFER_SIZE)
        self.socket_view = memoryview(self.socket)
        # a read can also complete a message left over from the previous one
        self.plaintext = bytearray(RECEIVE_BUFFER_SIZE + 65536)


_buffers = _ReadBuffers()


class Connection(asyncio.BufferedProtocol):
    """A secure, multiplexed connection to one authenticated peer."""

    def __init__(
        self,
        transport: asyncio.Transport,
        secure: NoiseTransport,
        muxer: MuxerSession,
        *,
        remote_peer: PeerId,
        remote_addr: Multiaddr,
        local_addr: Multiaddr,
        is_initiator: bool,
        on_inbound_stream: InboundStreamHandler,
        keepalive_interval: float | None = 30.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._transport = transport
        self._secure = secure
        self._muxer = muxer
        self.remote_peer = remote_peer
        self.remote_addr = remote_addr
        self.local_addr = local_addr
        self.is_initiator = is_initiator
        self.muxer_protocol = muxer.protocol_id
        self.muxer_in_handshake = False  # chosen inside Noise, not by multistream-select
        # a relayed circuit: the relay caps its duration and data (see protocols.relay)
        self.limited = False
        self.limit_bytes: int | None = None  # what such a circuit carries per direction
        self.negotiating_streams = 0  # inbound streams still choosing a protocol (Node's count)
        # every open connection to the same peer, this one included (the Node keeps it)
        self.siblings: list[Connection] = [self]
        self.bytes_received = 0  # on the wire, after the handshake
        self.bytes_sent = 0
        self._slot_waiters: list[asyncio.Future[None]] = []  # open_stream calls queued
        self._inbound_started = 0  # handlers started by the current read
        self._inbound_queue: deque[Stream] = deque()  # new streams of a burst, waiting
        # told when the muxer refuses an inbound stream over its limit (Node counts it)
        self.on_stream_refused: Callable[[Connection, StreamRefused], None] | None = None
        self.opened_at = time.monotonic()
        self._on_inbound_stream = on_inbound_stream
        self._streams: dict[int, Stream] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._pings: dict[int, tuple[asyncio.Future[float], float]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._receiving = False  # in _receive_plaintext, which flushes when it is done
        self._unflushed = 0  # payload bytes queued in the muxer since the last flush
        self._unsent_handshake = b""  # the dialer's Noise message 3, sent by the first flush
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed = asyncio.Event()
        self._close_reason: P2PError | None = None
        self._remote_goaway = False
        self._close_callbacks: list[Callable[[Connection], None]] = []
        self._keepalive_interval = keepalive_interval
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._keepalive_pending: int | None = None
        self._stall_handle: asyncio.TimerHandle | None = None  # set while reading is paused

    def __repr__(self) -> str:
        direction = "to" if self.is_initiator else "from"
        return f"<Connection {direction} {self.remote_peer} at {self.remote_addr}>"

    # -- public API ----------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection is closed or closing."""
        return self._close_reason is not None

    @property
    def protocol_error(self) -> RemoteProtocolError | None:
        """The peer's protocol violation that closed this connection, if that is why."""
        reason = self._close_reason
        return reason if isinstance(reason, RemoteProtocolError) else None

    @property
    def is_usable(self) -> bool:
        """True while new streams may be opened on this connection."""
        return self._close_reason is None and not self._remote_goaway

    @property
    def stream_count(self) -> int:
        """Streams currently open on this connection."""
        return len(self._streams)

    def on_close(self, callback: Callable[[Connection], None]) -> None:
        """Call ``callback(connection)`` once the connection has closed."""
        self._close_callbacks.append(callback)

    async def open_stream(self) -> Stream:
        """Open a raw multiplexed stream (no protocol negotiation)."""
        if self._close_reason is not None:
            raise ConnectionClosedError(f"{self!r} is closed: {self._close_reason}")
        if self._remote_goaway:
            raise ConnectionClosedError(f"{self.remote_peer} sent GoAway: open a new connection")
        while not self._muxer.can_open_stream:
            await self._wait_for_stream_slot()
        stream_id = self._muxer.open_stream()
        stream = Stream(self, stream_id)
        self._streams[stream_id] = stream
        self._schedule_flush()
        return stream

    async def _wait_for_stream_slot(self) -> None:
        """Wait until the muxer may open another stream (the peer acknowledged some).

        Callers queue instead of failing; their own timeouts bound the wait.
        """
        waiter = self.loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._slot_waiters.remove(waiter)
        if self._close_reason is not None:
            raise ConnectionClosedError(f"{self!r} is closed: {self._close_reason}")

    def _wake_slot_waiters(self) -> None:
        if self._muxer.can_open_stream or self._close_reason is not None:
            for waiter in self._slot_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._slot_waiters.clear()

    async def new_stream(self, protocols: list[str], *, optimistic: bool = False) -> Stream:
        """Open a stream and agree on one of ``protocols`` with multistream-select.

        With ``optimistic`` and a single protocol, return at once: the caller may
        write right away, and the peer's answer is checked on the first read.
        This saves a round trip when the peer is known to speak the protocol.
        """
        stream = await self.open_stream()
        try:
            if optimistic and len(protocols) == 1:
                dialer = MultistreamDialer(protocols, optimistic=True)
                stream._negotiation = dialer
                stream.protocol = protocols[0]
                await stream.write(dialer.initial_bytes())
                return stream
            dialer = MultistreamDialer(protocols)
            await stream.write(dialer.initial_bytes())
            taken = 0
            while not dialer.done:
                chunk = await stream._read_raw()
                if not chunk:
                    raise RemoteProtocolError("peer closed the stream during protocol negotiation")
                taken += len(chunk)
                reply = dialer.receive_data(chunk)
                if reply:
                    await stream.write(reply)
            stream.protocol = dialer.selected
            stream._return_unused(taken, dialer.leftover())
            return stream
        except BaseException:
            stream.reset()
            raise

    async def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time in seconds of a muxer-level ping (yamux only)."""
        opaque = self._muxer.ping()
        if opaque is None:
            raise LocalProtocolError(f"{self.muxer_protocol} has no ping; use the ping protocol")
        future: asyncio.Future[float] = self.loop.create_future()
        self._pings[opaque] = (future, time.perf_counter())
        self._schedule_flush()
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise P2PTimeoutError(f"no muxer pong from {self.remote_peer} in {timeout}s") from None
        finally:
            self._pings.pop(opaque, None)

    async def close(self, code: int = 0) -> None:
        """Send GoAway, close the socket, reset open streams and end stream handlers."""
        if self._close_reason is None:
            with contextlib.suppress(P2PError):
                self._muxer.go_away(code)
            self._flush()
            self._shutdown(ConnectionClosedError(f"{self!r} was closed locally"))
            self._transport.close()
        tasks = [t for t in self._handler_tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until the connection has closed."""
        await self._closed.wait()

    # -- start-up --------------------------------------------------------------

    def start(self, initial_plaintext: bytes, unsent: bytes = b"") -> None:
        """Take over the transport; feed bytes that arrived during the upgrade.

        ``unsent`` (the handshake's last message) is sent first, in the next flush: with
        whatever the first streams write in this loop iteration.
        """
        self._transport.set_protocol(self)
        self._transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        if unsent:
            self._unsent_handshake = unsent
            self._schedule_flush()
        if initial_plaintext:
            self._receive_plaintext(initial_plaintext)
        self._arm_keepalive()

    def receive_early(self, plaintext: bytes) -> None:
        """Handle what the peer sent right after the handshake, once the owner has the
        connection (see ``transport.upgrade``'s ``adopt``)."""
        self._receive_plaintext(plaintext)

    # -- asyncio.Protocol ----------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        return _buffers.socket_view

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_received += nbytes
        self._inbound_started = 0
        buffers = _buffers
        try:
            plaintext = self._secure.receive_into(buffers.socket_view[:nbytes], buffers.plaintext)
        except RemoteProtocolError as exc:
            self._abort(exc)
            return
        if plaintext:
            self._receive_plaintext(plaintext)

    def eof_received(self) -> bool:
        self._abort(ConnectionClosedError(f"{self.remote_peer} closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection to {self.remote_peer} lost" + (f": {exc}" if exc else "")
        self._shutdown(ConnectionClosedError(reason))
        self._muxer.release_credit()  # nothing more is read: what it held is free
        self._closed.set()
        for callback in self._close_callbacks:
            callback(self)
        self._close_callbacks.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
            if self._close_reason is None:
                self._transport.resume_reading()
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the hot path --------------------------------------------------------

    def _receive_plaintext(self, plaintext: bytes | bytearray | memoryview) -> None:
        try:
            events = self._muxer.receive_data(plaintext)
        except RemoteProtocolError as exc:
            self._abort(exc)
            return
        streams = self._streams
        self._receiving = True  # answers written from here go out in the flush below
        try:
            for event in events:
                if type(event) is StreamData:
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream._feed(event.data)
                    else:
                        # Nobody will read it: give the credit back at once.
                        self._muxer.consumed(event.stream_id, len(event.data))
                else:
                    self._handle_event(event)
        finally:
            self._receiving = False
        if self._slot_waiters:  # ACKs may have freed stream slots
            self._wake_slot_waiters()
        if self._unflushed:
            self._flush()  # answers written inline: send them now
        elif self._muxer.has_data_to_send:
            # Only control frames (ACKs, window updates, pongs): they ride along with
            # whatever the woken stream handlers write in the next iteration.
            self._schedule_flush()

    def _handle_event(self, event: MuxerEvent) -> None:
        streams = self._streams
        if type(event) is SendWindowOpened:
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream._wake_writer()
        elif type(event) is StreamOpened:
            stream = Stream(self, event.stream_id)
            streams[event.stream_id] = stream
            if self._inbound_started < INBOUND_STARTS_PER_ITERATION:
                self._inbound_started += 1
                self._start_handler(stream)
            else:  # a burst: the rest start in later loop iterations (see _start_queued)
                self._inbound_queue.append(stream)
                if len(self._inbound_queue) == 1:
                    self.loop.call_soon(self._start_queued)
        elif type(event) is StreamEnded:
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream._feed_eof()
                self._forget_if_done(stream)
        elif type(event) is StreamReset:
            stream = streams.pop(event.stream_id, None)
            if stream is not None:
                stream._fail(StreamResetError(f"{stream!r} was reset: {event.reason}"))
        elif type(event) is PongReceived:
            pending = self._pings.get(event.opaque)
            if pending is not None and not pending[0].done():
                pending[0].set_result(time.perf_counter() - pending[1])
            if event.opaque == self._keepalive_pending:
                self._keepalive_pending = None
        elif type(event) is GoAwayReceived:
            self._remote_goaway = True
            log.debug("%r: peer sent GoAway code %d", self, event.code)
        elif type(event) is StreamRefused and self.on_stream_refused is not None:
            self.on_stream_refused(self, event)

    def _start_handler(self, stream: Stream) -> None:
        task = self.loop.create_task(self._on_inbound_stream(stream))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    def _start_queued(self) -> None:
        """Start the next few handlers of a burst of new streams.

        asyncio runs every ready callback of an iteration before it polls the sockets
        again: 256 streams opened in one read would run 256 handlers (tens of ms) before
        any other peer is read. A few per iteration keep the loop turning for everyone.
        """
        queue = self._inbound_queue
        for _ in range(INBOUND_STARTS_PER_ITERATION):
            if not queue:
                return
            stream = queue.popleft()
            if self._streams.get(stream.stream_id) is stream:  # not reset meanwhile
                self._start_handler(stream)
        if queue:
            self.loop.call_soon(self._start_queued)

    def _forget_if_done(self, stream: Stream) -> None:
        if stream._eof and stream._write_closed:
            self._streams.pop(stream.stream_id, None)

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and not self._receiving:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        self._unflushed = 0
        out = self._muxer.data_to_send()
        if self._unsent_handshake:  # once per connection, at most
            self._flush_first(out)
        elif out and not self._transport.is_closing():
            sealed = self._secure.encrypt(out)
            self._transport.write(sealed)
            self.bytes_sent += len(sealed)
            if self.write_paused and self._stall_handle is None:
                self._backed_up()

    def _flush_first(self, out: bytes) -> None:
        """The first flush of a connection we dialed: Noise's last message goes first."""
        handshake, self._unsent_handshake = self._unsent_handshake, b""
        if not self._transport.is_closing():
            sealed = self._secure.encrypt(out) if out else b""
            self._transport.write(handshake + sealed)
            self.bytes_sent += len(sealed)

    def _backed_up(self) -> None:
        if self._peer_unsent() > MAX_UNSENT:
            self._stop_reading()

    def _peer_unsent(self) -> int:
        """Bytes queued for the peer on all its connections (at most a few of them)."""
        return sum(conn._transport.get_write_buffer_size() for conn in self.siblings)

    def _stop_reading(self) -> None:
        """The peer does not read what we owe it: take no more work from it for now."""
        log.info("%r: the peer does not read; pausing reads from it", self)
        self._transport.pause_reading()
        self._stall_handle = self.loop.call_later(STALL_TIMEOUT, self._stalled)

    def _stalled(self) -> None:
        self._stall_handle = None
        reason = f"{self.remote_peer} read nothing for {STALL_TIMEOUT:g}s: disconnected"
        log.info("%r: %s", self, reason)
        self._shutdown(P2PTimeoutError(reason))
        self._transport.abort()  # close() would wait to send what the peer will not read

    # -- the StreamOwner interface, called by Stream -------------------------------

    def flush_pending(self) -> None:
        if self._flush_handle is not None:
            self._flush()

    def stream_send_window(self, stream_id: int) -> int:
        return self._muxer.send_window(stream_id)

    def stream_send(self, stream_id: int, data: memoryview) -> int:
        try:
            sent = self._muxer.send(stream_id, data)
        except MuxerError as exc:
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                stream._fail(exc)
            raise
        if sent:
            self._unflushed += sent
            if self._unflushed >= FLUSH_THRESHOLD:
                self._flush()  # bulk data: let the transport push back (pause_writing) now
            else:
                self._schedule_flush()  # small writes of one loop iteration go out together
        return sent

    def stream_consumed(self, stream_id: int, size: int) -> None:
        if size > 0 and self._close_reason is None and self._muxer.consumed(stream_id, size):
            self._schedule_flush()

    def stream_close_write(self, stream_id: int) -> None:
        if self._close_reason is None:
            self._muxer.close_stream(stream_id)
            self._schedule_flush()
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._forget_if_done(stream)

    def stream_reset(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        if self._close_reason is None:
            self._muxer.reset_stream(stream_id)
            self._schedule_flush()
            if self._slot_waiters:  # resetting an unacknowledged stream frees its slot
                self._wake_slot_waiters()

    async def drained(self) -> None:
        if self.write_paused and self._close_reason is None:
            if self._drain_waiter is None:
                self._drain_waiter = self.loop.create_future()
            # Shared by every writer: one of them being cancelled must not cancel it.
            await asyncio.shield(self._drain_waiter)

    # -- shutting down -----------------------------------------------------------

    def _abort(self, reason: P2PError) -> None:
        """The peer broke the protocol or went away: close this connection only."""
        if self._close_reason is not None:
            return
        if isinstance(reason, RemoteProtocolError):
            log.info("closing %r: %s", self, reason)
        self._flush()  # e.g. the GoAway the muxer queued for a protocol error
        self._shutdown(reason)
        self._transport.close()

    def _shutdown(self, reason: P2PError) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        streams = list(self._streams.values())
        self._streams.clear()
        self._inbound_queue.clear()
        error = self._close_reason
        for stream in streams:
            stream._fail(ConnectionClosedError(str(error)))
        for future, _ in self._pings.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(str(error)))
        self._wake_slot_waiters()  # they raise ConnectionClosedError
        waiter = self._drain_waiter
        self._drain_waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionClosedError(str(error)))
            waiter.exception()  # mark retrieved when nobody waits any more

    # -- keepalive -----------------------------------------------------------------

    def _arm_keepalive(self) -> None:
        if self._keepalive_interval and self._close_reason is None:
            self._keepalive_handle = self.loop.call_later(self._keepalive_interval, self._keepalive)

    def _keepalive(self) -> None:
        if self._keepalive_pending is not None:
            self._abort(P2PTimeoutError(f"{self.remote_peer} did not answer a keepalive ping"))
            return
        self._keepalive_pending = self._muxer.ping()
        self._flush()
        self._arm_keepalive()
