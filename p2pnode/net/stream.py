"""The asyncio face of one multiplexed stream, the same for yamux and mplex."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from p2pnode.errors import (
    ConnectionClosedError,
    DecodeError,
    P2PTimeoutError,
    ProtocolNotSupportedError,
    StreamClosedError,
    StreamResetError,
)
from p2pnode.wire.multistream import MultistreamDialer
from p2pnode.wire.muxer import Buffer

if TYPE_CHECKING:
    from p2pnode.wire.identity import PeerId
    from p2pnode.wire.multiaddr import Multiaddr


_WRITE_PIECE = 64 * 1024  # a large write is queued in pieces so the socket can push back


class StreamOwner(Protocol):
    """What a stream needs from the connection it runs on (a ``Connection``)."""

    loop: asyncio.AbstractEventLoop
    remote_peer: PeerId
    remote_addr: Multiaddr
    local_addr: Multiaddr
    write_paused: bool  # the socket is behind: writers wait for drained()
    negotiating_streams: int  # inbound streams still choosing a protocol (the node counts)
    limited: bool  # a relayed circuit, capped in duration and data by its relay

    def flush_pending(self) -> None:
        """Send what the muxer queued now rather than at the end of the loop iteration."""

    def stream_send(self, stream_id: int, data: memoryview) -> int:
        """Queue what flow control allows of ``data``; the number of bytes taken."""

    def stream_send_window(self, stream_id: int) -> int:
        """Bytes the peer lets us send on the stream now."""

    def stream_consumed(self, stream_id: int, size: int) -> None:
        """The application took ``size`` bytes: credit them back to the peer."""

    def stream_close_write(self, stream_id: int) -> None:
        """Half-close the stream."""

    def stream_reset(self, stream_id: int) -> None:
        """Reset the stream."""

    async def drained(self) -> None:
        """Return once the socket accepts more data."""


class Stream:
    """A bidirectional byte stream to one peer, with half-close and reset.

    Reads return data as it arrives (``b""`` at end of stream); writes wait for
    flow-control credit and for the socket to drain.
    """

    __slots__ = (
        "__weakref__",
        "_chunks",
        "_conn",
        "_deadline",
        "_eof",
        "_error",
        "_fin_deferred",
        "_inline",
        "_negotiation",
        "_on_data",
        "_on_fail",
        "_read_waiter",
        "_readable",
        "_write_closed",
        "_write_waiter",
        "protocol",
        "stream_id",
    )

    def __init__(self, conn: StreamOwner, stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.protocol: str | None = None
        self._chunks: deque[bytes] = deque()
        self._readable = 0
        self._eof = False
        self._error: Exception | None = None
        self._write_closed = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        # Set while an optimistic multistream answer is still due (see Connection.new_stream).
        self._negotiation: MultistreamDialer | None = None
        # close_write() came before the optimistic answer: the FIN waits for it (see close_write).
        self._fin_deferred = False
        self._on_fail: list[Callable[[Exception], object]] | None = None
        self._on_data: Callable[[], object] | None = None
        self._inline: _InlineAnswers | None = None  # set while answer_inline() runs
        self._deadline: float | None = None  # loop time after which waits fail

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.protocol or '?'} to {self._conn.remote_peer}>"

    @property
    def connection(self) -> StreamOwner:
        """The connection this stream runs on."""
        return self._conn

    @property
    def remote_peer(self) -> PeerId:
        """The authenticated PeerId at the other end."""
        return self._conn.remote_peer

    @property
    def failed(self) -> Exception | None:
        """Why the stream broke (reset by either side, or its connection lost); None if not."""
        return self._error

    def on_fail(self, callback: Callable[[Exception], object]) -> None:
        """Call ``callback(error)`` once if the stream is reset or its connection is lost."""
        if self._error is not None:
            callback(self._error)
        elif self._on_fail is None:
            self._on_fail = [callback]
        else:
            self._on_fail.append(callback)

    def on_data(self, callback: Callable[[], object] | None) -> None:
        """Call ``callback()`` once, from the receive path, when data or the EOF next
        arrives (at once if some is already here); None removes it. It must not block.
        """
        if callback is not None and (self._chunks or self._eof):
            callback()
        else:
            self._on_data = callback

    def set_deadline(self, seconds: float | None) -> None:
        """Make reads and writes that start waiting after this call fail with
        P2PTimeoutError ``seconds`` from now; None removes the deadline.

        Free while data and credit are at hand: a timer is armed only for a wait. A wait
        already under way keeps the deadline it started with.
        """
        self._deadline = None if seconds is None else self._conn.loop.time() + seconds

    @property
    def at_eof(self) -> bool:
        """True once the peer half-closed and every byte has been read."""
        return self._eof and not self._chunks

    # -- reading -----------------------------------------------------------

    async def read(self, max_bytes: int = -1) -> bytes:
        """Return the next bytes received (at most ``max_bytes`` if given); ``b""`` at EOF.

        Data comes back in the pieces it arrived in, uncopied: no joining of pieces.
        """
        if self._negotiation is not None:
            await self._finish_negotiation()
        chunks = self._chunks
        while not chunks:  # (_read_raw, inlined: a coroutine less per read on the hot path)
            if self._error is not None:
                raise self._failure()
            if self._eof:
                return b""
            await self._wait_readable()
        chunk = chunks.popleft()
        if 0 <= max_bytes < len(chunk):
            chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._readable -= len(chunk)
        self._conn.stream_consumed(self.stream_id, len(chunk))
        return chunk

    async def readexactly(self, size: int) -> bytes:
        """Read exactly ``size`` bytes; DecodeError if the stream ends first."""
        parts: list[bytes] = []
        missing = size
        while missing:
            chunk = await self.read(missing)
            if not chunk:
                raise DecodeError(f"stream ended after {size - missing} of {size} expected bytes")
            parts.append(chunk)
            missing -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_until_eof(self, limit: int) -> bytes:
        """Read everything until the peer half-closes; DecodeError past ``limit`` bytes."""
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if total > limit:
                raise DecodeError(f"peer sent more than {limit} bytes on {self.protocol}")
            parts.append(chunk)
        return b"".join(parts)

    async def answer_inline(self, respond: Callable[[bytes], Buffer]) -> None:
        """Answer data as it arrives with ``respond(data)`` until the peer half-closes.

        ``respond`` runs in the connection's receive path, so an echo-like protocol
        (ping) answers with no task switch and no extra loop iteration. When flow
        control or a full socket holds an answer back, the rest is written from here
        and inline answering resumes. An exception from ``respond`` is raised here.
        ``respond`` must not block, and must not reuse the buffer it returns.
        """
        if self._negotiation is not None:
            await self._finish_negotiation()  # the peer's multistream answer is not data
        while True:
            while self._chunks:
                data = await self.read()
                await self.write(respond(data))
            if self._error is not None:
                raise self._failure()
            if self._eof:
                return
            inline = _InlineAnswers(respond)
            self._inline = inline
            try:
                await self._wait_readable()  # woken by EOF, reset, or an answer held back
            finally:
                self._inline = None
            if inline.error is not None:
                raise inline.error
            if inline.held is not None:
                await self.write(inline.held)  # (empty: just wait for the socket to drain)

    async def _read_raw(self) -> bytes:
        """Take the next buffered chunk without flow-control accounting; b"" at EOF.

        :meth:`read` accounts for what it returns; negotiation finishes with
        :meth:`_return_unused`.
        """
        while not self._chunks:
            if self._error is not None:
                raise self._failure()
            if self._eof:
                return b""
            await self._wait_readable()
        chunk = self._chunks.popleft()
        self._readable -= len(chunk)
        return chunk

    def _return_unused(self, taken: int, leftover: bytes) -> None:
        """Account for ``taken`` raw bytes of which ``leftover`` belongs to the application."""
        if leftover:
            self._chunks.appendleft(leftover)
            self._readable += len(leftover)
        self._conn.stream_consumed(self.stream_id, taken - len(leftover))

    async def _wait_readable(self) -> None:
        conn = self._conn
        # Whatever we wrote is what the peer must see before it answers: send it now
        # rather than one loop iteration later.
        conn.flush_pending()
        waiter = conn.loop.create_future()
        self._read_waiter = waiter
        try:
            if self._deadline is None:
                await waiter
            else:
                await self._wait(waiter, "no data from the peer")
        finally:
            self._read_waiter = None

    async def _wait(self, waiter: asyncio.Future[None], what: str) -> None:
        """Await ``waiter``, failing it with P2PTimeoutError at the stream's deadline."""
        deadline = self._deadline
        if deadline is None:
            await waiter
            return
        loop = self._conn.loop
        if loop.time() >= deadline:
            waiter.cancel()
            raise P2PTimeoutError(f"{self!r}: {what} before its deadline")
        timer = loop.call_at(deadline, _expire, waiter, f"{self!r}: {what} before its deadline")
        try:
            await waiter
        finally:
            timer.cancel()

    async def _finish_negotiation(self) -> None:
        dialer = self._negotiation
        assert dialer is not None
        self._negotiation = None
        # the deferred FIN is ours to send now: the receive path need not try to finish
        # the negotiation for us while we wait
        fin, self._fin_deferred = self._fin_deferred, False
        taken = 0
        while not dialer.done:
            chunk = await self._read_raw()
            if not chunk:
                raise DecodeError("stream closed during protocol negotiation")
            taken += len(chunk)
            if dialer.receive_data(chunk):
                raise ProtocolNotSupportedError(
                    f"the peer does not speak {self.protocol} (refused on an optimistic open)"
                )
        self.protocol = dialer.selected
        self._return_unused(taken, dialer.leftover())
        if fin:
            self._fin_deferred = True
        self._send_deferred_fin()

    def _negotiate_buffered(self) -> None:
        """Finish an optimistic negotiation from what is buffered, without waiting.

        Only while nobody reads (a reader runs :meth:`_finish_negotiation` itself).
        """
        dialer = self._negotiation
        if dialer is None:
            return
        taken = 0
        while self._chunks and not dialer.done:
            chunk = self._chunks.popleft()
            self._readable -= len(chunk)
            taken += len(chunk)
            if dialer.receive_data(chunk):
                self._negotiation = None
                self._fail(
                    ProtocolNotSupportedError(
                        f"the peer does not speak {self.protocol} (refused on an optimistic open)"
                    )
                )
                self._conn.stream_reset(self.stream_id)
                return
        if not dialer.done:
            self._conn.stream_consumed(self.stream_id, taken)
            return
        self._negotiation = None
        self.protocol = dialer.selected
        self._return_unused(taken, dialer.leftover())
        self._send_deferred_fin()

    def _send_deferred_fin(self) -> None:
        if self._fin_deferred and self._error is None:
            self._fin_deferred = False
            self._conn.stream_close_write(self.stream_id)

    # -- called by the connection -----------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._inline is not None and self._inline.answer(self, data):
            return
        self._chunks.append(data)
        self._readable += len(data)
        if self._fin_deferred:
            self._negotiate_buffered()
        self._wake_reader()
        if self._on_data is not None:
            self._data_arrived()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake_reader()
        if self._on_data is not None:
            self._data_arrived()

    def _data_arrived(self) -> None:
        callback, self._on_data = self._on_data, None
        if callback is not None:
            callback()

    def _failure(self) -> Exception:
        """A fresh copy of the stored error to raise.

        Raising the stored error itself would give it a traceback whose frames hold this
        stream: a reference cycle that keeps the stream and its buffers alive until a
        full garbage collection, which a quiet node rarely runs.
        """
        error = self._error
        assert error is not None
        fresh = type(error).__new__(type(error), *error.args)  # no __init__: any signature
        fresh.args = error.args
        fresh.__dict__.update(error.__dict__)
        return fresh

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error.with_traceback(None)
            callbacks, self._on_fail = self._on_fail, None
            for callback in callbacks or ():
                callback(error)
        self._write_closed = True
        self._wake_reader()
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing -----------------------------------------------------------

    async def write(self, data: Buffer) -> None:
        """Send ``data``, waiting for flow-control credit and socket buffer space."""
        conn = self._conn
        view = memoryview(data).cast("B")
        while True:
            if self._error is not None:
                raise self._failure()
            if self._write_closed:
                raise StreamClosedError(f"cannot write to {self!r}: it is closed for writing")
            sent = conn.stream_send(self.stream_id, view[:_WRITE_PIECE])
            view = view[sent:]
            if conn.write_paused:  # the socket is behind: queue no more than it holds
                if self._deadline is None:
                    await conn.drained()
                else:
                    await self._drained_by_deadline()
            if not view:
                break
            if sent:
                continue
            waiter = conn.loop.create_future()  # no flow-control credit: wait for some
            self._write_waiter = waiter
            try:
                await self._wait(waiter, "no flow-control credit from the peer")
            finally:
                self._write_waiter = None

    async def _drained_by_deadline(self) -> None:
        assert self._deadline is not None
        try:
            async with asyncio.timeout_at(self._deadline):
                await self._conn.drained()
        except TimeoutError:
            raise P2PTimeoutError(
                f"{self!r}: the socket did not drain before the stream's deadline"
            ) from None

    async def close_write(self) -> None:
        """Half-close: tell the peer we will send nothing more. Reading still works."""
        if self._write_closed or self._error is not None:
            return
        self._write_closed = True
        if self._negotiation is not None:
            # An optimistic open whose protocol the peer has not confirmed yet: some
            # listeners (js-libp2p) cannot answer a stream whose FIN arrives before they
            # finished negotiating it. The data already went out; the FIN follows the
            # confirmation, which costs nothing against a peer that answers at once.
            self._fin_deferred = True
            if self._chunks:  # the answer may be here already
                self._negotiate_buffered()
            return
        self._conn.stream_close_write(self.stream_id)

    async def close(self) -> None:
        """Close our side and stop reading; the stream is forgotten once the peer closes too."""
        await self.close_write()
        self._chunks.clear()

    def reset(self) -> None:
        """Abort the stream in both directions."""
        if self._error is None:
            self._conn.stream_reset(self.stream_id)
            self._fail(StreamResetError(f"{self!r} was reset locally"))

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None and not isinstance(exc, StreamResetError | ConnectionClosedError):
            self.reset()
        else:
            await self.close()


def _expire(waiter: asyncio.Future[None], message: str) -> None:
    if not waiter.done():
        waiter.set_exception(P2PTimeoutError(message))


class _InlineAnswers:
    """State of :meth:`Stream.answer_inline` while it answers from the receive path."""

    __slots__ = ("error", "held", "respond")

    def __init__(self, respond: Callable[[bytes], Buffer]) -> None:
        self.respond = respond
        self.held: memoryview | None = None  # an answer flow control did not take whole
        self.error: Exception | None = None

    def answer(self, stream: Stream, data: bytes) -> bool:
        """Answer ``data`` at once; False leaves it to be buffered as usual."""
        conn = stream._conn
        stream._inline = None  # one answer at a time; the task re-arms when it is done
        if conn.write_paused or stream._write_closed:
            return False  # buffer it: the task answers (and waits for the socket) or fails
        try:
            answer = memoryview(self.respond(data)).cast("B")
            conn.stream_consumed(stream.stream_id, len(data))
            # No send window may mean the peer reset the stream in this very read: leave
            # the answer to the task, which sees the reset once its event is handled.
            room = conn.stream_send_window(stream.stream_id) if answer else 0
            sent = conn.stream_send(stream.stream_id, answer) if room else 0
        except Exception as exc:  # raised to the task in answer_inline
            self.error = exc
            stream._wake_reader()
            return True
        if sent < len(answer) or conn.write_paused:
            self.held = answer[sent:]
            stream._wake_reader()
        else:
            stream._inline = self
        return True
