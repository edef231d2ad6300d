"""Serving ``/p2pnode/task/2.0.0`` beside protocol 1, under the same TaskServer's limits.

One stream per task: the request is read (bounded in size and time), the task admitted
or refused, answered from the result cache when its id was seen, else its handler runs
while a reader task feeds it the rest of the input (bounded per task and in the peer's
request memory, so flow control holds a fast client back) and watches for ``cancel``.
Events are written as the handler makes them when the client asked for a stream, else
gathered (bounded) into one answer. See ``docs/task-protocol-2.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from p2pnode.errors import DecodeError, P2PError, P2PTimeoutError
from p2pnode.net.limits import PeerBudgets
from p2pnode.net.stream import Stream
from p2pnode.protocols.task.handlers import HandlerFailedError, TaskHandler
from p2pnode.protocols.task.handlers2 import (
    Task,
    assemble,
    produces_whole,
    run_handler,
    run_whole,
    streams_input,
)
from p2pnode.protocols.task.messages import ErrorCode
from p2pnode.protocols.task.messages2 import (
    MAX_BUFFERED_INPUT,
    MAX_MESSAGE_SIZE,
    MAX_TOTAL_INPUT,
    Accepted,
    Cancel,
    Completed,
    Failed,
    OutputChunk,
    Part,
    PartAssembler,
    Request,
    TaskProgress,
    output_chunk_head,
    split_part,
)
from p2pnode.protocols.task.session2 import (
    InputEnd,
    InputPiece,
    InputTooLargeError,
    ServerSession,
    accepted_frame,
    frame,
)
from p2pnode.wire.framing import MessageTooLargeError
from p2pnode.wire.identity import PeerId
from p2pnode.wire.varint import encode_uvarint

log = logging.getLogger("p2pnode.protocols.task.server")

CACHE_ENTRIES = 256
CACHE_TTL = 600.0
CACHE_MAX_BYTES = 1024 * 1024
INPUT_AHEAD = 1024 * 1024  # input read ahead of a streaming handler, per task
_ONE_MESSAGE = MAX_MESSAGE_SIZE - 4096  # output that fits one answer with room for its keys
_SEPARATE = 64 * 1024  # output data at least this large is written, not copied
_UNCACHED = frozenset({"cancelled", "busy", "shutting_down", "unauthorized"})
CLIENT_CANCELLED = "the client cancelled"
Outcome = Completed | Failed


class ServerState(Protocol):
    """What protocol 2 shares with the TaskServer: handlers, limits, counters, cancelling."""

    handlers: dict[str, TaskHandler]
    max_concurrent: int
    allow: frozenset[PeerId] | None
    max_response_size: int
    max_timeout: float | None
    request_read_timeout: float
    response_write_timeout: float
    expose_errors: bool
    request_memory: PeerBudgets
    _running: set[asyncio.Task[None]]
    _cancelled: dict[asyncio.Task[None], str]
    _answering: int
    _shutting_down: bool

    def _cancel(self, task: asyncio.Task[None], reason: str) -> None: ...
    def stream_started(self) -> None: ...
    def stream_ended(self) -> None: ...
    def log_task(
        self, peer: PeerId, kind: str, task_id: str, latency_ms: int, code: str, message: str
    ) -> None: ...


# (the peer's PeerId as bytes, the task id): bytes hash in C, a PeerId in Python
TaskKey = tuple[bytes, str]


class ResultCache:
    """Outcomes of finished tasks by (peer, task id): bounded in entries, age and size."""

    def __init__(
        self,
        max_entries: int = CACHE_ENTRIES,
        ttl: float = CACHE_TTL,
        max_bytes: int = CACHE_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[TaskKey, tuple[float, Outcome]] = OrderedDict()
        # tasks running now, each with the retries waiting for its outcome (None: none yet)
        self.running: dict[TaskKey, list[asyncio.Future[Outcome | None]] | None] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: TaskKey) -> Outcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry[0] > self.ttl:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: TaskKey, outcome: Outcome, size: int) -> bool:
        """Keep ``outcome`` (``size``: bytes of its parts) unless it must not be; whether kept."""
        if size > self.max_bytes or (isinstance(outcome, Failed) and outcome.code in _UNCACHED):
            return False
        entries = self._entries
        now = self._clock()
        if key in entries:
            entries.move_to_end(key)
        entries[key] = (now, outcome)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
        if now >= self._next_sweep:  # expired entries go at most once a second (get checks)
            self._next_sweep = now + 1.0
            while entries and now - next(iter(entries.values()))[0] > self.ttl:
                entries.popitem(last=False)  # the oldest, expired
        return True


class AnswerNotTakenError(P2PError):
    """The client did not read the answer within the write timeout."""


class _Refused(Exception):
    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


class InputFeed:
    """The rest of a task's input, read from the stream by a task of its own.

    Reads stop while ``INPUT_AHEAD`` bytes wait for the handler (reserved in the peer's
    request memory), so the stream's flow control holds the client back. A ``cancel``
    calls ``on_cancel``; a reset ends the feed with the stream's error.
    """

    def __init__(
        self,
        stream: Stream,
        session: ServerSession,
        memory: PeerBudgets,
        on_cancel: Callable[[], None],
        read_timeout: float,
    ) -> None:
        self.stream = stream
        self.session = session
        self.memory = memory
        self.on_cancel = on_cancel
        self.read_timeout = read_timeout
        self._pieces: deque[InputPiece] = deque()
        self._uncounted = 0  # pieces at the front not held in the peer's memory
        self._held = 0
        self._ended = False
        self.error: _Refused | P2PError | None = None
        self._reader_waits: asyncio.Future[None] | None = None  # for the handler to take some
        self._handler_waits: asyncio.Future[None] | None = None  # for more input

    def push(self, events: Sequence[object], *, counted: bool = True) -> None:
        """Queue what the client sent; ``counted``: hold its pieces in the peer's memory
        (not those of the request itself, which the message limit bounds)."""
        for event in events:
            if isinstance(event, InputPiece):
                if not counted:  # (only before any counted piece: they stay first)
                    self._pieces.append(event)
                    self._uncounted += 1
                    continue
                size = event.part.size
                if not self.memory.reserve(self.stream.remote_peer, size):
                    used = self.memory.used_by(self.stream.remote_peer)
                    raise _Refused(
                        ErrorCode.BUSY,
                        f"{used} bytes of unfinished input from you are held here: "
                        "finish or cancel those tasks before starting more",
                    )
                self._held += size
                self._pieces.append(event)
            elif isinstance(event, InputEnd):
                self._ended = True
            elif isinstance(event, Cancel):
                self.on_cancel()
        self._wake_handler()

    def take_all(self, count: int) -> bool:
        """Hand over the whole input at once when it is ``count`` new parts, all here."""
        if not self._ended or len(self._pieces) != count or any(p.append for p in self._pieces):
            return False
        self.close()
        return True

    async def next_piece(self) -> InputPiece | None:
        while not self._pieces:
            if self.error is not None:
                raise self.error
            if self._ended:
                return None
            self._handler_waits = asyncio.get_running_loop().create_future()
            await self._handler_waits
        piece = self._pieces.popleft()
        if self._uncounted:
            self._uncounted -= 1
            return piece
        size = piece.part.size
        self._held -= size
        self.memory.release(self.stream.remote_peer, size)
        waiter = self._reader_waits
        if waiter is not None and self._held < INPUT_AHEAD and not waiter.done():
            waiter.set_result(None)
        return piece

    async def run(self) -> None:
        """Read until the client closes its side (input, then perhaps a cancel)."""
        try:
            while True:
                if self._held >= INPUT_AHEAD:
                    self._reader_waits = asyncio.get_running_loop().create_future()
                    await self._reader_waits
                if self.session.input_done:
                    try:
                        chunk = await self.stream.read()
                    except P2PTimeoutError:
                        continue  # a writer's deadline, caught by this wait: only cancels come
                else:
                    async with asyncio.timeout(self.read_timeout):
                        chunk = await self.stream.read()
                if not chunk:
                    self.session.receive_eof()
                    return
                self.push(self.session.receive_data(chunk))
        except TimeoutError:
            self.error = _Refused(
                ErrorCode.BAD_REQUEST, f"no more input within {self.read_timeout}s"
            )
        except (MessageTooLargeError, InputTooLargeError) as exc:
            self.error = _Refused(ErrorCode.TOO_LARGE, str(exc))
        except DecodeError as exc:
            self.error = _Refused(ErrorCode.BAD_REQUEST, str(exc))
        except _Refused as exc:
            self.error = exc
        except P2PError as exc:
            self.error = exc
        finally:
            self._wake_handler()

    def _wake_handler(self) -> None:
        waiter = self._handler_waits
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Give back what is still held."""
        if self._held:
            self.memory.release(self.stream.remote_peer, self._held)
            self._held = 0
        self._pieces.clear()
        self._uncounted = 0


class TaskService2:
    """The protocol-2 side of a TaskServer."""

    def __init__(
        self,
        server: ServerState,
        *,
        max_total_input: int = MAX_TOTAL_INPUT,
        max_buffered_input: int = MAX_BUFFERED_INPUT,
        cache: ResultCache | None = None,
        output_types: Mapping[str, str] | None = None,
    ) -> None:
        self.server = server
        self.max_total_input = max_total_input
        self.max_buffered_input = max_buffered_input
        self.cache = cache or ResultCache()
        self.output_types = dict(output_types or {})  # media type of untyped outputs, per kind

    async def handle_stream(self, stream: Stream) -> None:
        """Serve one protocol-2 task stream."""
        server = self.server
        server.stream_started()
        session = ServerSession(max_total_input=self.max_total_input)
        started = time.perf_counter()
        outcome: Outcome
        try:
            outcome = await self._serve(stream, session)
        except P2PError as exc:  # the stream broke: nobody to answer
            request_id = session.request.id if session.request else ""
            outcome = Failed(request_id, "failed", f"stream failed: {exc}")
            stream.reset()
        finally:
            server.stream_ended()
        if outcome.latency_ms is None:
            outcome.latency_ms = _elapsed_ms(started)
        request = session.request
        kind = request.kind if request is not None else ""
        if isinstance(outcome, Failed):
            code, message = outcome.code, outcome.message
        else:
            code, message = "ok", ""
        server.log_task(stream.remote_peer, kind, outcome.id, outcome.latency_ms, code, message)

    async def _serve(self, stream: Stream, session: ServerSession) -> Outcome:
        try:
            pending = await self._read_request(stream, session)
        except _Refused as refused:
            unreadable = Failed("", refused.code, refused.message)
            await self._finish(stream, [frame(unreadable)], unread=True)
            return unreadable
        request = session.request
        assert request is not None
        peer = stream.remote_peer
        try:
            self._admit(request, peer)
        except _Refused as refused:
            refusal = Failed(request.id, refused.code, refused.message)
            await self._finish(stream, [frame(refusal)], unread=not session.input_done)
            return refusal
        key = (peer.to_bytes(), request.id)
        cache = self.cache
        earlier = cache.get(key)
        if earlier is None and key in cache.running:
            earlier = await self._outcome_of_running(key)
        if earlier is not None:
            return await self._answer_again(stream, session, request, earlier)
        cache.running[key] = None  # running: a retry waits for its outcome
        outcome: Outcome | None = None
        cacheable = -1
        try:
            handler = self.server.handlers[request.kind]
            if (
                session.input_done
                and not request.stream
                and not session.cancelled
                and produces_whole(handler)
            ):
                outcome, cacheable = await self._run_whole(stream, request, handler)
            else:
                outcome, cacheable = await self._run(stream, session, request, pending)
            return outcome
        finally:
            kept = outcome is not None and cacheable >= 0 and cache.put(key, outcome, cacheable)
            waiters = cache.running.pop(key)
            if waiters is not None:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(outcome if kept else None)

    async def _outcome_of_running(self, key: TaskKey) -> Outcome | None:
        """The outcome of the running task ``key`` (None: not kept, or not in time)."""
        waiter: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        waiters = self.cache.running[key]
        if waiters is None:
            self.cache.running[key] = [waiter]
        else:
            waiters.append(waiter)
        try:
            async with asyncio.timeout(self.server.max_timeout):
                return await waiter
        except TimeoutError:
            return None

    async def _answer_again(
        self, stream: Stream, session: ServerSession, request: Request, earlier: Outcome
    ) -> Outcome:
        """A retry of a task whose outcome we hold: discard its input, answer the outcome."""
        if isinstance(earlier, Completed):
            answer: Outcome = Completed(request.id, earlier.parts, earlier.latency_ms, cached=True)
        else:
            answer = earlier
        if not session.input_done:
            with contextlib.suppress(TimeoutError, DecodeError):
                async with asyncio.timeout(self.server.request_read_timeout):
                    while not session.input_done and (chunk := await stream.read()):
                        session.receive_data(chunk)
        await self._finish(stream, [accepted_frame(request.id), frame(answer)], unread=False)
        return answer

    async def _read_request(self, stream: Stream, session: ServerSession) -> list[object]:
        """Read until the request is whole; the events that came with it."""
        server = self.server
        peer = stream.remote_peer
        stream.set_deadline(server.request_read_timeout)
        held = 0
        try:
            while True:
                chunk = await stream.read()
                if not chunk:
                    session.receive_eof()
                events: list[object] = session.receive_data(chunk)  # type: ignore[assignment]
                if session.request is not None:
                    return events
                more = session.buffered - held
                if more > 0:
                    if not server.request_memory.reserve(peer, more):
                        used = server.request_memory.used_by(peer)
                        raise _Refused(
                            ErrorCode.BUSY,
                            f"{used} bytes of unfinished requests from you are held here: "
                            "finish or cancel those before starting more",
                        )
                    held += more
        except (MessageTooLargeError, InputTooLargeError) as exc:
            raise _Refused(ErrorCode.TOO_LARGE, str(exc)) from None
        except TimeoutError:
            raise _Refused(
                ErrorCode.BAD_REQUEST, f"no request within {server.request_read_timeout}s"
            ) from None
        except DecodeError as exc:
            raise _Refused(ErrorCode.BAD_REQUEST, str(exc)) from None
        finally:
            stream.set_deadline(None)
            if held:
                server.request_memory.release(peer, held)

    def _admit(self, request: Request, peer: PeerId) -> None:
        server = self.server
        if server.allow is not None and peer not in server.allow:
            log.warning("refused task %s from unauthorized peer %s", request.id, peer)
            raise _Refused(ErrorCode.UNAUTHORIZED, f"peer {peer} is not allowed to send tasks")
        if server._shutting_down:
            raise _Refused(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        if request.kind not in server.handlers:
            kinds = ", ".join(sorted(server.handlers))
            raise _Refused(
                ErrorCode.UNKNOWN_KIND, f"no handler for kind {request.kind!r}; have {kinds}"
            )
        if len(server._running) + server._answering >= server.max_concurrent:
            raise _Refused(ErrorCode.BUSY, f"{server.max_concurrent} tasks are already running")

    async def _run(
        self, stream: Stream, session: ServerSession, request: Request, pending: list[object]
    ) -> tuple[Outcome, int]:
        """Run the handler; its outcome (sent) and the bytes of its parts (-1: not cacheable)."""
        server = self.server
        this = asyncio.current_task()
        assert this is not None
        timeout = request.timeout_ms / 1000 if request.timeout_ms else None
        if server.max_timeout is not None:
            timeout = min(timeout or server.max_timeout, server.max_timeout)
        handler = server.handlers[request.kind]

        def cancel() -> None:
            if this in server._running:
                server._cancel(this, CLIENT_CANCELLED)

        feed = InputFeed(
            stream, session, server.request_memory, cancel, server.request_read_timeout
        )
        writer = _EventWriter(stream, server.response_write_timeout, request.stream)
        writer.add(Accepted(request.id))
        if request.stream:
            await writer.flush()
        reader: asyncio.Task[None] | None = None
        started = time.perf_counter()
        limit = CACHE_MAX_BYTES if request.stream else server.max_response_size
        collected = _Collected(limit, self.output_types.get(request.kind), request.stream)
        server._running.add(this)

        def stop_the_work(_: Exception) -> None:  # nobody is left to answer
            if this in server._running:
                server._cancel(this, _FAILED)

        stream.on_fail(stop_the_work)
        try:
            feed.push(pending, counted=False)
            if not stream.at_eof and not session.input_done:
                reader = asyncio.ensure_future(feed.run())
            elif not stream.at_eof:
                # Only a cancel can still come: read when something arrives, so that a
                # task done first (most small ones) costs no reader task.
                def watch() -> None:
                    nonlocal reader
                    if this in server._running:
                        reader = asyncio.ensure_future(feed.run())

                stream.on_data(watch)
            elif not session.input_done:
                session.receive_eof()
            if timeout is None:
                await self._drive(stream, request, handler, feed, writer, collected, None)
            else:
                async with asyncio.timeout(timeout):
                    await self._drive(stream, request, handler, feed, writer, collected, timeout)
            if feed.error is not None:
                raise feed.error
            outcome: Outcome = Completed(request.id, [], _elapsed_ms(started))
        except (Exception, asyncio.CancelledError) as exc:
            outcome = self._failure(exc, request, stream, this, timeout, started)
        finally:
            server._running.discard(this)
            if server._cancelled.pop(this, None) is not None:
                this.uncancel()
            feed.close()
        server._answering += 1
        try:
            if isinstance(outcome, Completed):
                await writer.complete(outcome, collected)
            else:
                writer.add(outcome)
            input_unread = not session.input_done
            await writer.flush()
            stream.on_data(None)
            if reader is not None:
                reader.cancel()
            await self._finish(stream, [], unread=input_unread)
        finally:
            server._answering -= 1
        if isinstance(outcome, Completed) and collected.cacheable:
            return Completed(outcome.id, collected.parts(), outcome.latency_ms), collected.size
        return outcome, (-1 if isinstance(outcome, Completed) else 0)

    def _failure(
        self,
        exc: BaseException,
        request: Request,
        stream: Stream,
        this: asyncio.Task[None],
        timeout: float | None,
        started: float,
    ) -> Failed:
        """The outcome a handler's exception stands for; re-raises what is not the task's."""
        server = self.server
        elapsed = _elapsed_ms(started)
        if isinstance(exc, _Refused):
            return Failed(request.id, exc.code, exc.message, elapsed)
        if isinstance(exc, DecodeError):
            return Failed(request.id, "bad_request", str(exc), elapsed)
        if isinstance(exc, TimeoutError):
            return Failed(request.id, "timeout", f"handler ran over {timeout}s", elapsed)
        if isinstance(exc, asyncio.CancelledError):
            reason = server._cancelled.pop(this, None)
            if reason is None or this.uncancel() > 0:
                raise exc
            if reason == _FAILED and stream.failed is not None:
                raise stream.failed from None
            code = "cancelled" if reason == CLIENT_CANCELLED else "shutting_down"
            return Failed(request.id, code, f"cancelled: {reason}", elapsed)
        if isinstance(exc, HandlerFailedError):
            return Failed(request.id, "failed", str(exc), elapsed)
        if isinstance(exc, AnswerNotTakenError):
            raise exc  # nobody reads: the stream is reset, the handler stopped
        message = f"handler raised {type(exc).__name__}: {exc}"
        log.error("task %s kind=%s from %s: %s", request.id, request.kind, stream.remote_peer,
                  message, exc_info=exc)  # fmt: skip
        if not server.expose_errors:
            message = "the handler failed; see the server's log"
        return Failed(request.id, "failed", message, elapsed)

    async def _run_whole(
        self, stream: Stream, request: Request, handler: TaskHandler
    ) -> tuple[Outcome, int]:
        """A task whose input came whole in its request, answered whole: the lean path."""
        server = self.server
        this = asyncio.current_task()
        assert this is not None
        timeout = request.timeout_ms / 1000 if request.timeout_ms else None
        if server.max_timeout is not None:
            timeout = min(timeout or server.max_timeout, server.max_timeout)
        started = time.perf_counter()
        server._running.add(this)

        def stop_the_work(_: Exception) -> None:  # nobody is left to answer
            if this in server._running:
                server._cancel(this, _FAILED)

        stream.on_fail(stop_the_work)
        if not stream.at_eof:  # a cancel may come: read for it when something does
            stream.on_data(lambda: self._watch_for_cancel(stream, request, this))
        size = 0
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            task = Task(request.id, request.kind, str(stream.remote_peer), parts=request.input,
                        metadata=request.metadata, deadline=deadline)  # fmt: skip
            if timeout is None:
                parts = await run_whole(handler, task)
            else:
                async with asyncio.timeout(timeout):
                    parts = await run_whole(handler, task)
            for part in parts:
                size += part.size
            media = self.output_types.get(request.kind) if self.output_types else None
            if media is not None:
                for part in parts:
                    if part.media_type is None:
                        part.media_type = media
            if size > server.max_response_size:
                raise _Refused(ErrorCode.FAILED, f"output of {size} bytes exceeds "
                               f"{server.max_response_size}: ask for a stream")  # fmt: skip
            outcome: Outcome = Completed(request.id, parts, _elapsed_ms(started))
        except (Exception, asyncio.CancelledError) as exc:
            outcome = self._failure(exc, request, stream, this, timeout, started)
        finally:
            server._running.discard(this)
            if server._cancelled.pop(this, None) is not None:
                this.uncancel()
            stream.on_data(None)
        server._answering += 1
        try:
            if isinstance(outcome, Completed) and size > _ONE_MESSAGE:
                writer = _EventWriter(stream, server.response_write_timeout, False)
                writer.add(Accepted(request.id))
                parts, outcome.parts = outcome.parts, []
                for part in parts:
                    for piece, append in split_part(part):
                        writer.add_output(piece, append)
                        await writer.flush()
                writer.add(outcome)
                outcome.parts = parts
                await writer.flush()
            else:  # the common answer: one write (what _EventWriter.flush does, inlined)
                stream.set_deadline(server.response_write_timeout)
                try:
                    await stream.write(accepted_frame(request.id) + frame(outcome))
                except P2PTimeoutError:
                    timeout = server.response_write_timeout
                    raise AnswerNotTakenError(
                        f"the peer did not take the answer within {timeout}s"
                    ) from None
                finally:
                    stream.set_deadline(None)
            await stream.close()
        finally:
            server._answering -= 1
        return outcome, (size if isinstance(outcome, Completed) else 0)

    def _watch_for_cancel(self, stream: Stream, request: Request, this: asyncio.Task[None]) -> None:
        """Read the rest of the stream (only a cancel means something) while ``this`` runs."""
        server = self.server
        if this not in server._running:
            return

        def cancel() -> None:
            if this in server._running:
                server._cancel(this, CLIENT_CANCELLED)

        session = ServerSession()
        session.request, session.input_done = request, True
        feed = InputFeed(stream, session, server.request_memory, cancel,
                         server.request_read_timeout)  # fmt: skip
        reader = asyncio.ensure_future(feed.run())
        this.add_done_callback(lambda _: reader.cancel())
        stream.on_fail(lambda _: reader.cancel())

    async def _drive(
        self,
        stream: Stream,
        request: Request,
        handler: TaskHandler,
        feed: InputFeed,
        writer: _EventWriter,
        collected: _Collected,
        timeout: float | None,
    ) -> None:
        """Run the handler, writing (or gathering) its events."""
        task = await self._task(stream, request, handler, feed, timeout)
        if not request.stream and produces_whole(handler):
            for part in await run_whole(handler, task):
                collected.note(OutputChunk(part))
            return
        events = run_handler(handler, task)
        try:
            async for event in events:
                await self._emit(event, writer, collected, request.stream)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def _task(
        self,
        stream: Stream,
        request: Request,
        handler: TaskHandler,
        feed: InputFeed,
        timeout: float | None,
    ) -> Task:
        deadline = None if timeout is None else time.monotonic() + timeout
        common = {
            "peer_id": str(stream.remote_peer),
            "metadata": request.metadata,
            "deadline": deadline,
            "stream": request.stream,
        }
        if session_done_with_whole_input(request, feed):
            return Task(request.id, request.kind, parts=request.input, **common)  # type: ignore[arg-type]
        if streams_input(handler):
            return Task(request.id, request.kind, source=feed, **common)  # type: ignore[arg-type]
        pieces: list[InputPiece] = []
        total = 0
        while (piece := await feed.next_piece()) is not None:
            total += piece.part.size
            if total > self.max_buffered_input:
                raise _Refused(
                    ErrorCode.TOO_LARGE,
                    f"kind {request.kind!r} takes its input whole, and it exceeds "
                    f"{self.max_buffered_input} bytes",
                )
            pieces.append(piece)
        return Task(request.id, request.kind, parts=assemble(pieces), **common)  # type: ignore[arg-type]

    async def _emit(
        self, event: object, writer: _EventWriter, collected: _Collected, streamed: bool
    ) -> None:
        if isinstance(event, TaskProgress):
            if streamed:
                writer.add(event)
                await writer.flush()
            return
        assert isinstance(event, OutputChunk)
        collected.note(event)
        if streamed:
            for piece, append in split_part(event.part):
                writer.add_output(piece, append or event.append)
                await writer.flush()

    async def _finish(self, stream: Stream, frames: list[bytes], *, unread: bool) -> None:
        if frames:
            writer = _EventWriter(stream, self.server.response_write_timeout, False)
            writer.frames.extend(frames)
            await writer.flush()
        await stream.close()
        if unread and not stream.at_eof:
            stream.reset()  # after the answer: stop the rest of an input we will not read


_FAILED = "the stream failed"


def session_done_with_whole_input(request: Request, feed: InputFeed) -> bool:
    """The request carried all the input (nothing appended): it is the task's parts."""
    return not request.more and feed.take_all(len(request.input))


class _Collected:
    """Output parts as the handler makes them. A non-streamed answer keeps them all, up to
    its limit (beyond it the task fails); a streamed one keeps them for the result cache
    while they fit it, then only counts their size."""

    def __init__(self, limit: int, media_type: str | None, streamed: bool) -> None:
        self.limit = limit
        self.media_type = media_type  # given to output parts that have none
        self.streamed = streamed
        self.size = 0
        self._assembler: PartAssembler | None = PartAssembler()

    @property
    def cacheable(self) -> bool:
        return self._assembler is not None and self.size <= CACHE_MAX_BYTES

    def note(self, event: OutputChunk) -> None:
        part = event.part
        if part.media_type is None and self.media_type is not None and not event.append:
            part.media_type = self.media_type
        self.size += part.size
        if self._assembler is None:
            return
        if self.size > self.limit:
            if not self.streamed:
                raise _Refused(
                    ErrorCode.FAILED,
                    f"output of more than {self.limit} bytes: ask for a stream "
                    "(send-task --stream) to receive it",
                )
            self._assembler = None
            return
        self._assembler.add(part, event.append)

    def parts(self) -> list[Part]:
        if self._assembler is None:
            raise _Refused(
                ErrorCode.FAILED, f"output of more than {self.limit} bytes (ask for a stream)"
            )
        return self._assembler.parts()


class _EventWriter:
    """Frames events and writes them, each write bounded by the write timeout."""

    def __init__(self, stream: Stream, timeout: float, streamed: bool) -> None:
        self.stream = stream
        self.timeout = timeout
        self.streamed = streamed
        self.frames: list[bytes] = []

    def add(self, event: object) -> None:
        self.frames.append(frame(event))  # type: ignore[arg-type]

    def add_output(self, part: Part, append: bool) -> None:
        """An output event; a large bytes part goes out as it is, after its header."""
        data = part.data
        if part.type != "bytes" or data is None or len(data) < _SEPARATE:
            self.add(OutputChunk(part, append))
            return
        head = output_chunk_head(len(data), append, part.media_type)
        self.frames.append(encode_uvarint(len(head) + len(data)) + head)
        self.frames.append(data)

    async def flush(self) -> None:
        if not self.frames:
            return
        frames = self.frames
        self.frames = []
        stream = self.stream
        stream.set_deadline(self.timeout)  # costs nothing unless the write has to wait
        try:
            if len(frames) == 1:
                await stream.write(frames[0])
            elif all(len(f) < _SEPARATE for f in frames):
                await stream.write(b"".join(frames))
            else:
                for data in frames:  # large data is not copied to join it
                    await stream.write(data)
        except P2PTimeoutError:
            raise AnswerNotTakenError(
                f"the peer did not take the answer within {self.timeout}s"
            ) from None
        finally:
            stream.set_deadline(None)

    async def complete(self, outcome: Completed, collected: _Collected) -> None:
        """Add the terminal event: all output in it (not streamed, small), else chunks first."""
        if self.streamed:
            self.add(outcome)
            return
        parts = collected.parts()
        if collected.size <= _ONE_MESSAGE:
            outcome.parts = parts
            self.add(outcome)
            return
        for part in parts:
            for piece, append in split_part(part):
                self.add_output(piece, append)
                await self.flush()
        self.add(outcome)


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
