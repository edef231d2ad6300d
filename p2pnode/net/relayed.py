"""A stream used as a raw connection: the transport under a relayed (circuit) connection.

Circuit relay v2 hands each end a stream that carries the other end's bytes. Both
ends then run the usual upgrade (Noise, then a muxer) over it, as over TCP.
:class:`StreamTransport` is the asyncio transport that makes that possible: it pumps
the stream's data into the protocol on top, and the protocol's writes into the stream,
keeping at most ``high`` bytes queued before it pauses the writer above.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

from p2pnode.errors import P2PError
from p2pnode.net.stream import Stream

READ_SIZE = 64 * 1024


class StreamTransport(asyncio.Transport):
    """An asyncio transport over a :class:`Stream`.

    ``explain(error)`` turns the stream's failure (a reset by the relay, say) into the
    reason the connection above reports; it may name the relay's limits.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        explain: Callable[[Exception | None], Exception | None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._stream = stream
        self._explain = explain
        self._protocol: asyncio.BaseProtocol | None = None
        self._loop = asyncio.get_running_loop()
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._high = 256 * 1024
        self._low = 64 * 1024
        self._protocol_paused = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._writable = asyncio.Event()
        self._closing = False
        self._eof_pending = False
        self._lost = False
        self._reader: asyncio.Task[None] | None = None
        self._writer = self._loop.create_task(self._write_loop())

    @property
    def stream(self) -> Stream:
        return self._stream

    # -- asyncio.BaseTransport -----------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        if self._reader is None:
            self._reader = self._loop.create_task(self._read_loop())

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is queued, then close the stream."""
        if self._closing:
            return
        self._closing = True
        self._reading.set()
        self._writable.set()

    def abort(self) -> None:
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._stream.reset()
        self._connection_lost(None)

    # -- reading -------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    async def _read_loop(self) -> None:
        stream = self._stream
        error: Exception | None = None
        try:
            while not self._lost:
                if not self._reading.is_set():
                    await self._reading.wait()
                    continue
                data = await stream.read(READ_SIZE)
                if self._lost:
                    return
                if not data:
                    protocol = self._protocol
                    keep_open = isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol)
                    if keep_open and protocol.eof_received():  # type: ignore[union-attr]
                        continue  # the protocol keeps writing; nothing more will come
                    break
                self._deliver(data)
        except P2PError as exc:
            error = exc
        except asyncio.CancelledError:
            return
        self._connection_lost(error)

    def _deliver(self, data: bytes) -> None:
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(data)
            while view:
                buffer = memoryview(protocol.get_buffer(len(view))).cast("B")
                size = min(len(buffer), len(view))
                buffer[:size] = view[:size]
                protocol.buffer_updated(size)
                view = view[size:]
                if self._lost:
                    return
        elif isinstance(protocol, asyncio.Protocol):
            protocol.data_received(data)

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost or not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        self._writable.set()
        if self._queued > self._high and not self._protocol_paused:
            self._protocol_paused = True
            protocol = self._protocol
            if isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
                protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._eof_pending = True
        self._writable.set()

    def get_write_buffer_size(self) -> int:
        return self._queued

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 256 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    async def _write_loop(self) -> None:
        stream = self._stream
        try:
            while True:
                while not self._queue:
                    if self._closing or self._eof_pending:
                        await stream.close_write()
                        if self._closing:
                            await stream.close()
                            self._connection_lost(None)
                            return
                        self._eof_pending = False
                    self._writable.clear()
                    await self._writable.wait()
                data = self._queue.popleft()
                await stream.write(data)
                self._queued -= len(data)
                if self._protocol_paused and self._queued <= self._low:
                    self._protocol_paused = False
                    protocol = self._protocol
                    if isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
                        protocol.resume_writing()
        except P2PError as exc:
            self._stream.reset()
            self._connection_lost(exc)
        except asyncio.CancelledError:
            return

    # -- the end -------------------------------------------------------------------

    def _connection_lost(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current:
                task.cancel()
        if self._explain is not None:
            error = self._explain(error)
        protocol = self._protocol
        if protocol is not None:
            with contextlib.suppress(Exception):
                protocol.connection_lost(error)
