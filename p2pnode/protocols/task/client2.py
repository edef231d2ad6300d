"""Sending a task with protocol 2: events as they arrive, or the whole output.

The client opens ``/p2pnode/task/2.0.0`` optimistically (no round trip for the protocol)
unless identify told us the peer speaks only 1.0.0; a peer that refuses 2 gets the task
again over 1.0.0 when its input is one text part. Leaving the event iterator early
cancels the task on the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from p2pnode.errors import P2PError, ProtocolNotSupportedError, StreamResetError
from p2pnode.protocols.task.client import PEER_CLOSE_GRACE, send_task
from p2pnode.protocols.task.messages import (
    DEFAULT_KIND,
    MAX_RESPONSE_SIZE,
    PROTOCOL_ID,
    TaskError,
    TaskRefusedError,
    TaskTimeoutError,
    new_task_id,
    task_error,
)
from p2pnode.protocols.task.messages2 import (
    CHUNK_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_PARTS_PER_MESSAGE,
    PROTOCOL_ID_V2,
    Accepted,
    Cancel,
    Completed,
    Failed,
    InputChunk,
    OutputChunk,
    Part,
    PartAssembler,
    Request,
    ServerEvent,
    split_part,
)
from p2pnode.protocols.task.session2 import ClientSession, frame

if TYPE_CHECKING:
    from p2pnode.net.connection import Connection
    from p2pnode.net.host import Host, PeerLike
    from p2pnode.net.stream import Stream

InputLike = str | bytes | Part | Sequence[Part]
T = TypeVar("T")

# Over a relayed (limited) connection, an input beyond this share of the relay's cap
# waits up to DIRECT_WAIT s for a direct connection (hole punching), checked every
# DIRECT_POLL s, rather than being cut by the relay halfway.
RELAY_SHARE = 0.75
DIRECT_WAIT = 10.0
DIRECT_POLL = 0.05


class TaskOutput(msgspec.Struct):
    """A finished task: its output parts, the peer's handler time and our timings."""

    task_id: str
    parts: list[Part]
    latency_ms: int
    connect_ms: float
    round_trip_ms: float
    cached: bool = False
    peer_id: str = ""
    protocol: str = PROTOCOL_ID_V2

    @property
    def text(self) -> str:
        """The text parts, joined."""
        return "".join(p.text or "" for p in self.parts if p.type == "text")

    @property
    def data(self) -> bytes:
        """All output as bytes (text as UTF-8, JSON encoded)."""
        return b"".join(p.as_bytes() for p in self.parts)


def as_parts(input: InputLike) -> list[Part]:
    """The input as parts: text, bytes, one Part or a list of them."""
    if isinstance(input, str):
        return [Part.of_text(input)]
    if isinstance(input, bytes | bytearray | memoryview):
        return [Part.of_bytes(bytes(input))]
    if isinstance(input, Part):
        return [input]
    return list(input)


class TaskCall:
    """One task on one peer: ``events()`` runs it; the timings are set as it goes."""

    def __init__(
        self,
        node: Host,
        peer: PeerLike,
        input: InputLike = (),
        *,
        kind: str = DEFAULT_KIND,
        timeout: float | None = None,
        task_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        stream: bool = True,
        input_chunks: Iterable[bytes] | None = None,
        input_media: str | None = None,
    ) -> None:
        self.node = node
        self.peer = peer
        self.parts = as_parts(input)
        self.kind = kind
        self.timeout = timeout
        self.task_id = task_id or new_task_id()
        self.metadata = metadata
        self.stream = stream
        self.input_chunks = input_chunks  # a bytes part sent as it is read (a file)
        self.input_media = input_media
        self.connect_ms = 0.0
        self.round_trip_ms = 0.0
        self.peer_id = ""
        self.protocol = PROTOCOL_ID_V2
        self._deadline: float | None = None

    async def events(self) -> AsyncIterator[ServerEvent]:
        """The task's events up to the terminal one; TaskError subclasses for a failure."""
        loop = asyncio.get_running_loop()
        self._deadline = None if self.timeout is None else loop.time() + self.timeout
        started = time.perf_counter()
        conn = await self._timed(self.node.connect(self.peer))
        if conn.limited:
            conn = await self._timed(self._past_relay_limit(conn))
        connected = time.perf_counter()
        self.connect_ms = round((connected - started) * 1000, 3)
        self.peer_id = str(conn.remote_peer)
        async for event in self._after_connect(conn, connected):
            yield event

    async def _after_connect(self, conn: Any, connected: float) -> AsyncIterator[ServerEvent]:
        known = self.node.peer_store.protocols_of(conn.remote_peer)
        if known and PROTOCOL_ID_V2 not in known and PROTOCOL_ID in known:
            events = self._protocol1()
        elif self.input_chunks is not None and not known:
            # Input read as it is sent cannot be sent twice: ask which protocol first.
            stream = await self._timed(conn.new_stream([PROTOCOL_ID_V2, PROTOCOL_ID]))
            if stream.protocol == PROTOCOL_ID_V2:
                events = self._protocol2(conn, stream)
            else:
                stream.reset()
                events = self._protocol1()
        else:
            events = self._protocol2(conn)
        async for event in events:
            if isinstance(event, Completed | Failed):
                self.round_trip_ms = round((time.perf_counter() - connected) * 1000, 3)
            yield event

    async def run_whole(self, gathered: _Gathered) -> TaskOutput:
        """The common case without the event iterators: one message in, the answer out."""
        loop = asyncio.get_running_loop()
        self._deadline = None if self.timeout is None else loop.time() + self.timeout
        started = time.perf_counter()
        conn = await self._timed(self.node.connect(self.peer))
        if conn.limited:
            conn = await self._timed(self._past_relay_limit(conn))
        connected = time.perf_counter()
        self.connect_ms = round((connected - started) * 1000, 3)
        self.peer_id = str(conn.remote_peer)
        first, rest = self._request()
        known = self.node.peer_store.protocols_of(conn.remote_peer)
        if rest is not None or (known and PROTOCOL_ID_V2 not in known):
            async for event in self._after_connect(conn, connected):
                gathered.take(event)
            return gathered.output(self)
        stream: Stream = await self._timed(conn.new_stream([PROTOCOL_ID_V2], optimistic=True))
        session = ClientSession(self.task_id)
        try:
            try:  # (not contextlib.suppress: three calls fewer on the hot path)
                await stream.write(frame(first))
                await stream.close_write()
            except StreamResetError:
                pass  # refused: its answer is here
            timed = self._deadline is not None
            while session.terminal is None:  # (_next_events, inlined: this is the hot path)
                chunk = await (self._by_deadline(stream.read()) if timed else stream.read())
                if not chunk:
                    session.receive_eof()
                for event in session.receive_data(chunk):
                    gathered.take(event)  # raises the TaskError of a failed event
        except ProtocolNotSupportedError:
            async for event in self._protocol1():  # it says why when the input cannot go
                gathered.take(event)
            return gathered.output(self)
        except BaseException:
            if not session.done:
                await _cancel(stream)
            raise
        self.round_trip_ms = round((time.perf_counter() - connected) * 1000, 3)
        await _await_peer_close(stream)
        return gathered.output(self)

    async def _past_relay_limit(self, relayed: Connection) -> Connection:
        """``relayed`` when the input fits its relay's cap; else a direct connection to the
        peer once there is one (hole punching runs meanwhile), within DIRECT_WAIT s."""
        cap = relayed.limit_bytes
        size = sum(part.size for part in self.parts)
        if self.input_chunks is None and (cap is None or size <= cap * RELAY_SHARE):
            return relayed
        try:
            async with asyncio.timeout(DIRECT_WAIT):
                while True:
                    for conn in self.node.connections(relayed.remote_peer):
                        if conn.is_usable and not conn.limited:
                            return conn
                    await asyncio.sleep(DIRECT_POLL)
        except TimeoutError:
            pass
        what = "a streamed input" if self.input_chunks is not None else f"{size} bytes of input"
        limit = "an unknown amount" if cap is None else f"{cap // 1024} KiB per direction"
        raise TaskRefusedError(
            "relay_limit",
            f"task {self.task_id}: {what} would exceed what the relay to "
            f"{relayed.remote_peer} carries ({limit}), and no direct connection came within "
            f"{DIRECT_WAIT:g} s (hole punching failed or is off); send less, or reach the "
            "peer directly",
            self.task_id,
        )

    async def _next_events(self, stream: Stream, session: ClientSession) -> list[ServerEvent]:
        """The checked events of the next read (DecodeError at an end before a terminal one)."""
        chunk = await self._timed(stream.read())
        if not chunk:
            session.receive_eof()
        return session.receive_data(chunk)

    def _raise_failed(self, event: ServerEvent) -> None:
        if isinstance(event, Failed):
            raise task_error(event.code, event.message, self.task_id)

    def _timed(self, awaitable: Awaitable[T]) -> Awaitable[T]:
        """``awaitable``, bounded by the task's deadline (TaskTimeoutError after it)."""
        return awaitable if self._deadline is None else self._by_deadline(awaitable)

    async def _by_deadline(self, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await awaitable
        except TimeoutError:
            raise TaskTimeoutError(
                "timeout", f"task {self.task_id}: no answer within {self.timeout}s", self.task_id
            ) from None

    async def _protocol2(
        self, conn: Any, stream: Stream | None = None
    ) -> AsyncIterator[ServerEvent]:
        first, rest = self._request()
        if stream is None:
            stream = await self._timed(conn.new_stream([PROTOCOL_ID_V2], optimistic=True))
        assert stream is not None
        session = ClientSession(self.task_id)
        sender: asyncio.Task[None] | None = None
        refused = False
        try:
            try:
                if rest is None:
                    with contextlib.suppress(StreamResetError):  # refused: its answer is here
                        await stream.write(frame(first))
                        await stream.close_write()
                else:
                    sender = asyncio.ensure_future(self._send_input(stream, first, rest))
                while not session.done:
                    for event in await self._next_events(stream, session):
                        self._raise_failed(event)
                        yield event
            except ProtocolNotSupportedError:
                if not self._fits_protocol1():
                    raise ProtocolNotSupportedError(
                        f"peer {self.peer_id} speaks only {PROTOCOL_ID}, which takes one text "
                        "input: send one text part, or upgrade the peer"
                    ) from None
                refused = True
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
            if not refused and not session.done:
                await _cancel(stream)
        if refused:
            async for event in self._protocol1():
                yield event
            return
        await _await_peer_close(stream)

    def _protocol1_text(self) -> str | None:
        """The input as protocol 1 carries it (one text), or None when it cannot."""
        if len(self.parts) > 1:
            return None
        data: bytes | str = self.parts[0].text or "" if self.parts else ""
        if self.parts and self.parts[0].type == "bytes":
            data = self.parts[0].data or b""
        elif self.parts and self.parts[0].type != "text":
            return None
        if self.input_chunks is not None:
            if self.parts:
                return None
            data = b"".join(self.input_chunks)
        if isinstance(data, bytes):
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return data

    def _fits_protocol1(self) -> bool:
        return self.input_chunks is None and self._protocol1_text() is not None

    async def _protocol1(self) -> AsyncIterator[ServerEvent]:
        text = self._protocol1_text()
        if text is None:
            raise ProtocolNotSupportedError(
                f"peer {self.peer_id} speaks only {PROTOCOL_ID}, which takes one text input "
                "(UTF-8): send text, or upgrade the peer"
            )
        self.protocol = PROTOCOL_ID
        remaining = None
        if self._deadline is not None:
            remaining = max(self._deadline - asyncio.get_running_loop().time(), 0.001)
        result = await send_task(
            self.node, self.peer, text, kind=self.kind, timeout=remaining, task_id=self.task_id
        )
        yield Accepted(self.task_id)
        yield Completed(self.task_id, [Part.of_text(result.output)], result.latency_ms)

    def _request(self) -> tuple[Request, Iterator[tuple[Part, bool]] | None]:
        """The request with as much input as fits one message; the rest of the pieces."""
        request = Request(
            self.task_id,
            self.kind,
            metadata=self.metadata,
            timeout_ms=round(self.timeout * 1000) if self.timeout is not None else None,
            stream=self.stream,
        )
        if self.input_chunks is None and _fits_one_message(self.parts):
            request.input = list(self.parts)
            return request, None
        pieces = self._pieces()
        size = 0
        for part, append in pieces:
            if (
                append
                or size + part.size > CHUNK_SIZE
                or len(request.input) >= (MAX_PARTS_PER_MESSAGE)
            ):
                request.more = True
                return request, itertools.chain([(part, append)], pieces)
            request.input.append(part)
            size += part.size
        return request, None

    def _pieces(self) -> Iterator[tuple[Part, bool]]:
        for part in self.parts:
            yield from split_part(part)
        if self.input_chunks is not None:
            first = True
            for chunk in self.input_chunks:
                yield Part.of_bytes(chunk, self.input_media), not first
                first = False
            if first:  # an empty file is still a part
                yield Part.of_bytes(b"", self.input_media), False

    async def _send_input(
        self, stream: Stream, request: Request, rest: Iterator[tuple[Part, bool]]
    ) -> None:
        await stream.write(frame(request))
        for part, append in rest:
            await stream.write(frame(InputChunk(part, append)))
        await stream.write(frame(InputChunk(end=True)))
        await stream.close_write()


def _fits_one_message(parts: Sequence[Part]) -> bool:
    """True when ``parts`` surely fit one request (judged without encoding text or bytes)."""
    if len(parts) > MAX_PARTS_PER_MESSAGE:
        return False
    size = 0
    for part in parts:
        if part.type == "text":
            size += len(part.text or "") * 4  # at most 4 UTF-8 bytes per character
        elif part.type == "bytes":
            size += len(part.data or b"")
        else:
            return False  # JSON: its size needs encoding, which _request does
    return size <= CHUNK_SIZE


async def _cancel(stream: Stream) -> None:
    """Tell the peer to stop (best effort), then reset the stream."""
    with contextlib.suppress(BaseException):
        async with asyncio.timeout(0.5):
            await stream.write(frame(Cancel()))
    stream.reset()


async def _await_peer_close(stream: Stream) -> None:
    if stream.at_eof:
        return
    with contextlib.suppress(P2PError, TimeoutError):
        async with asyncio.timeout(PEER_CLOSE_GRACE):
            if await stream.read(1):
                stream.reset()


def stream_task(
    node: Host, peer: PeerLike, input: InputLike = (), **options: Any
) -> AsyncIterator[ServerEvent]:
    """Run a task and yield its events (accepted, progress, output, completed) as they come.

    Options as for :class:`TaskCall` (``stream`` defaults to True). A failed task raises
    its TaskError; leaving the loop early cancels the task on the peer.
    """
    return TaskCall(node, peer, input, **options).events()


class _Gathered:
    """A task's output as it comes: output events merged, then the completed parts."""

    def __init__(self, task_id: str, max_output: int) -> None:
        self.task_id = task_id
        self.max_output = max_output
        self.assembler: PartAssembler | None = None  # made for the first output event
        self.size = 0
        self.latency_ms = 0
        self.cached = False
        self.whole: list[Part] | None = None  # the parts of a lone completed event

    def take(self, event: ServerEvent) -> None:
        """Add an event's output; raise the task's TaskError for a ``failed`` one."""
        if isinstance(event, Completed):
            if self.assembler is None and self.max_output >= MAX_MESSAGE_SIZE:
                self.whole = event.parts  # one message: within max_output, nothing to join
            else:
                for part in event.parts:
                    self._add(part, False)
            self.latency_ms, self.cached = event.latency_ms, event.cached
        elif isinstance(event, OutputChunk):
            self._add(event.part, event.append)
        elif isinstance(event, Failed):
            raise task_error(event.code, event.message, self.task_id)

    def _add(self, part: Part, append: bool) -> None:
        self.size += part.size
        if self.size > self.max_output:
            raise TaskError(
                "too_large",
                f"task {self.task_id}: the output exceeds {self.max_output} bytes "
                "(stream it with stream_task, or raise max_output)",
                self.task_id,
            )
        if self.assembler is None:
            self.assembler = PartAssembler()
        self.assembler.add(part, append)

    def _parts(self) -> list[Part]:
        return [] if self.assembler is None else self.assembler.parts()

    def output(self, call: TaskCall) -> TaskOutput:
        return TaskOutput(
            call.task_id,
            self.whole if self.whole is not None else self._parts(),
            self.latency_ms,
            call.connect_ms,
            call.round_trip_ms,
            self.cached,
            call.peer_id,
            call.protocol,
        )


def run_task(
    node: Host,
    peer: PeerLike,
    input: InputLike = (),
    *,
    max_output: int = MAX_RESPONSE_SIZE,
    **options: Any,
) -> Coroutine[Any, Any, TaskOutput]:
    """Run a task and return its whole output (at most ``max_output`` bytes).

    A coroutine to await (it is the call's own: no wrapping coroutine on the hot path).
    """
    options.setdefault("stream", False)
    call = TaskCall(node, peer, input, **options)
    gathered = _Gathered(call.task_id, max_output)
    if call.input_chunks is None and not call.stream:
        return call.run_whole(gathered)
    return _gather(call, gathered)


async def _gather(call: TaskCall, gathered: _Gathered) -> TaskOutput:
    async for event in call.events():
        gathered.take(event)
    return gathered.output(call)
