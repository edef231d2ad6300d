"""Serving ``/p2pnode/task/1.0.0``: limits, authorization, timeouts and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from p2pnode.errors import DecodeError, P2PError, P2PTimeoutError
from p2pnode.net.host import Host
from p2pnode.net.limits import PeerBudgets
from p2pnode.net.stream import Stream
from p2pnode.protocols.task.handlers import (
    EchoHandler,
    ExecHandler,
    HandlerFailedError,
    PythonHandler,
    TaskContext,
    TaskHandler,
    load_python_handler,
    parse_handler_specs,
)
from p2pnode.protocols.task.messages import (
    MAX_REQUEST_SIZE,
    MAX_RESPONSE_SIZE,
    PROTOCOL_ID,
    ErrorCode,
    TaskRequest,
    TaskResponse,
    decode_request,
    encode_response,
    error_response,
    task_id_of,
)
from p2pnode.protocols.task.messages2 import PROTOCOL_ID_V2
from p2pnode.protocols.task.server2 import TaskService2
from p2pnode.wire.framing import FrameDecoder, MessageTooLargeError
from p2pnode.wire.identity import PeerId
from p2pnode.wire.varint import encode_uvarint

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 128
MAX_ANSWER_MEMORY = 128 * 1024 * 1024  # encoded answers not yet taken by their peers
MAX_ANSWER_MEMORY_PER_PEER = 32 * 1024 * 1024
# Requests still arriving (not yet whole) are held too: a peer that starts many and never
# finishes them costs at most its share until the read timeout.
MAX_REQUEST_MEMORY = 128 * 1024 * 1024
MAX_REQUEST_MEMORY_PER_PEER = 32 * 1024 * 1024
REQUEST_READ_TIMEOUT = 30.0
RESPONSE_WRITE_TIMEOUT = 30.0
_STREAM_FAILED = "the stream failed"  # why a running handler was cancelled
_GRACE_OVER = "the grace period ended"
_SEPARATE_PREFIX = 64 * 1024  # answers at least this large are not copied to prefix them
GENERIC_FAILURE = "the handler failed; see the server's log"

__all__ = [
    "DEFAULT_MAX_CONCURRENT",
    "EchoHandler",
    "ExecHandler",
    "PythonHandler",
    "TaskContext",
    "TaskHandler",
    "TaskLogRecord",
    "TaskServer",
    "format_log_human",
    "format_log_json",
    "load_python_handler",
    "parse_handler_specs",
]


@dataclass(slots=True, frozen=True)
class TaskLogRecord:
    """One served task, for the log."""

    peer_id: str
    kind: str
    task_id: str
    latency_ms: int
    outcome: str  # "ok" or an error code
    message: str = ""


def format_log_human(record: TaskLogRecord) -> str:
    """One line of text for a served task."""
    text = (
        f"task {record.task_id or '?'} kind={record.kind} from {record.peer_id}: "
        f"{record.outcome} in {record.latency_ms} ms"
    )
    return text + (f" ({record.message})" if record.message else "")


def format_log_json(record: TaskLogRecord) -> str:
    """One JSON line for a served task."""
    return json.dumps({"event": "task", **asdict(record)})


class _Rejected(Exception):
    def __init__(self, response: TaskResponse, *, unread: bool = False) -> None:
        self.response = response
        self.unread = unread  # the peer may still be sending a request we will not read


class TaskServer:
    """Runs tasks for a node (a Host); beyond ``max_concurrent`` tasks, new ones get ``busy``.

    A task counts from its handler's start until its output has been handed to the peer,
    so peers that do not read their answers cannot make the server hold unbounded output.
    """

    def __init__(
        self,
        node: Host,
        handlers: Mapping[str, TaskHandler],
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        allow: Collection[PeerId] | None = None,
        max_request_size: int = MAX_REQUEST_SIZE,
        max_response_size: int = MAX_RESPONSE_SIZE,
        max_timeout: float | None = None,
        request_read_timeout: float = REQUEST_READ_TIMEOUT,
        response_write_timeout: float = RESPONSE_WRITE_TIMEOUT,
        on_log: Callable[[TaskLogRecord], None] | None = None,
        expose_errors: bool = False,
        max_answer_memory: int = MAX_ANSWER_MEMORY,
        max_answer_memory_per_peer: int = MAX_ANSWER_MEMORY_PER_PEER,
        max_request_memory: int = MAX_REQUEST_MEMORY,
        max_request_memory_per_peer: int = MAX_REQUEST_MEMORY_PER_PEER,
        output_types: Mapping[str, str] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> None:
        self.node = node
        self.handlers = dict(handlers)
        self.max_concurrent = max_concurrent
        self.allow = frozenset(allow) if allow is not None else None
        self.max_request_size = max_request_size
        self.max_response_size = max_response_size
        self.max_timeout = max_timeout
        self.request_read_timeout = request_read_timeout
        self.response_write_timeout = response_write_timeout
        self.on_log = on_log
        self.expose_errors = expose_errors  # send handler exceptions' text to the peer
        self._running: set[asyncio.Task[None]] = set()  # stream tasks inside a handler
        self._cancelled: dict[asyncio.Task[None], str] = {}  # why we cancelled a handler
        self._active = 0  # streams being served, from first byte to response written
        self._answering = 0  # task outputs being written to their peers
        self._idle = asyncio.Event()
        self._idle.set()
        self._shutting_down = False
        # Answers wait in memory until their peer reads them: a peer that does not read
        # gets ``busy`` once its share is full, instead of making us hold more.
        self.answer_memory = PeerBudgets(max_answer_memory, max_answer_memory_per_peer)
        self.request_memory = PeerBudgets(max_request_memory, max_request_memory_per_peer)
        self.descriptions = dict(descriptions or {})  # per kind, for the agent card
        self.v2 = TaskService2(self, output_types=output_types)
        # Sync Python handlers run in the server's own threads, as many as tasks may run.
        self._executor: ThreadPoolExecutor | None = None
        sync = [
            h for h in self.handlers.values() if isinstance(h, PythonHandler) and not h.is_async
        ]
        if sync:
            self._executor = ThreadPoolExecutor(max_concurrent, thread_name_prefix="p2pnode-task")
            for handler in sync:
                handler.executor = self._executor

    @property
    def running(self) -> int:
        """Tasks whose handler is running now."""
        return len(self._running)

    def install(self) -> None:
        """Serve the task protocols (2.0.0 and 1.0.0) on the node."""
        self.node.set_handler(PROTOCOL_ID_V2, self.v2.handle_stream)
        self.node.set_handler(PROTOCOL_ID, self.handle_stream)

    def stream_started(self) -> None:
        """A task stream is being served (shutdown waits for it)."""
        self._active += 1
        self._idle.clear()

    def stream_ended(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._idle.set()

    def log_task(
        self, peer: PeerId, kind: str, task_id: str, latency_ms: int, code: str, message: str
    ) -> None:
        """Report a served task to ``on_log``."""
        if self.on_log is not None:
            self.on_log(TaskLogRecord(str(peer), kind, task_id, latency_ms, code, message))

    async def shutdown(self, grace: float) -> None:
        """Refuse new tasks; running ones get ``grace`` s to finish, then are cancelled."""
        self._shutting_down = True
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            for task in list(self._running):
                self._cancel(task, _GRACE_OVER)
            async with asyncio.timeout(5):
                await self._idle.wait()
        finally:
            if self._executor is not None:  # stuck threads are not waited for
                self._executor.shutdown(wait=False, cancel_futures=True)

    async def handle_stream(self, stream: Stream) -> None:
        """Serve one task stream: read, check, run, answer, log."""
        started = time.perf_counter()
        self.stream_started()
        request: TaskRequest | None = None
        unread = answering = False
        try:
            try:
                request = await self._read_request(stream)
                self._admit(request, stream.remote_peer)
                started = time.perf_counter()  # latency_ms is the handler's time
                output = await self._run(request, stream)
                response = TaskResponse(request.task_id, output, _elapsed_ms(started))
                del output  # the response holds it until _answer has encoded it
                self._answering += 1
                answering = True
            except _Rejected as rejected:
                response = rejected.response
                response.latency_ms = _elapsed_ms(started)
                unread = rejected.unread
            response = await self._answer(stream, response, stream.remote_peer)
            if unread and not stream.at_eof:
                stream.reset()  # after the answer: stop the rest of an oversized request
        except P2PError as exc:  # the stream broke: nobody to answer
            response = error_response(
                request.task_id if request else "", ErrorCode.FAILED, f"stream failed: {exc}"
            )
            stream.reset()
        finally:
            self._answering -= answering
            self.stream_ended()
        self._log(stream.remote_peer, request, response)

    async def _answer(self, stream: Stream, response: TaskResponse, peer: PeerId) -> TaskResponse:
        """Send ``response`` (or ``busy`` when the peer's answer memory is full); the one sent."""
        payload = encode_response(response)
        # What waits for the peer is the encoded answer, which the budget counts; the
        # text it was made from goes now (else a busy reply waiting for a peer that
        # does not read would keep a whole output alive beside it, outside the budget).
        response.output = ""
        size = len(payload)
        if not self.answer_memory.reserve(peer, size):
            unread = self.answer_memory.used_by(peer)
            del payload
            response = error_response(
                response.task_id,
                ErrorCode.BUSY,
                f"{unread} bytes of earlier answers to you are still unread: "
                "read them before asking for more",
            )
            payload = encode_response(response)
            size = 0
        stream.set_deadline(self.response_write_timeout)
        try:
            if size < _SEPARATE_PREFIX:
                await stream.write(encode_uvarint(len(payload)) + payload)
            else:  # no copy of a large answer just to prefix its length
                await stream.write(encode_uvarint(len(payload)))
                await stream.write(payload)
            del payload
            await stream.close()
        except P2PTimeoutError:
            raise P2PTimeoutError(
                f"the peer did not take the response within {self.response_write_timeout}s"
            ) from None
        finally:
            if size:
                self.answer_memory.release(peer, size)
        return response

    async def _read_request(self, stream: Stream) -> TaskRequest:
        decoder = FrameDecoder(self.max_request_size)
        stream.set_deadline(self.request_read_timeout)
        peer = stream.remote_peer
        held = 0  # bytes of a partial request reserved in the peer's request memory
        try:
            while True:
                chunk = await stream.read()
                if not chunk:
                    raise DecodeError("stream ended before a whole request arrived")
                messages = decoder.receive_data(chunk)
                if messages:
                    body = messages[0]
                    break
                # only a request that spans reads is held: the common one-read case is free
                more = decoder.buffered - held
                if more > 0:
                    if not self.request_memory.reserve(peer, more):
                        used = self.request_memory.used_by(peer)
                        raise _Rejected(
                            error_response(
                                "",
                                ErrorCode.BUSY,
                                f"{used} bytes of unfinished requests from you are held here: "
                                "finish or cancel those before starting more",
                            ),
                            unread=True,
                        )
                    held += more
        except MessageTooLargeError as exc:
            response = error_response("", ErrorCode.TOO_LARGE, str(exc))
            raise _Rejected(response, unread=True) from None
        except TimeoutError:
            raise _Rejected(
                error_response(
                    "", ErrorCode.BAD_REQUEST, f"no request within {self.request_read_timeout}s"
                )
            ) from None
        except DecodeError as exc:
            raise _Rejected(error_response("", ErrorCode.BAD_REQUEST, str(exc))) from None
        finally:
            if held:
                self.request_memory.release(peer, held)
        try:
            return decode_request(body)
        except DecodeError as exc:
            raise _Rejected(
                error_response(task_id_of(body), ErrorCode.BAD_REQUEST, str(exc))
            ) from None

    def _admit(self, request: TaskRequest, peer: PeerId) -> None:
        def reject(code: ErrorCode, message: str) -> _Rejected:
            return _Rejected(error_response(request.task_id, code, message))

        if self.allow is not None and peer not in self.allow:
            log.warning("refused task %s from unauthorized peer %s", request.task_id, peer)
            raise reject(ErrorCode.UNAUTHORIZED, f"peer {peer} is not allowed to send tasks")
        if self._shutting_down:
            raise reject(ErrorCode.SHUTTING_DOWN, "the server is shutting down")
        if request.kind not in self.handlers:
            kinds = ", ".join(sorted(self.handlers))
            raise reject(
                ErrorCode.UNKNOWN_KIND, f"no handler for kind {request.kind!r}; have {kinds}"
            )
        if len(self._running) + self._answering >= self.max_concurrent:
            raise reject(ErrorCode.BUSY, f"{self.max_concurrent} tasks are already running")

    async def _run(self, request: TaskRequest, stream: Stream) -> str:
        """Run the handler in this stream's own task: no task of its own, no extra hop."""
        timeout = request.timeout_ms / 1000 if request.timeout_ms else None
        if self.max_timeout is not None:
            timeout = min(timeout or self.max_timeout, self.max_timeout)
        this = asyncio.current_task()
        assert this is not None
        handler = self.handlers[request.kind]
        if stream.failed is not None:
            raise stream.failed  # before on_fail would cancel this very step

        def stop_the_work(_: Exception) -> None:  # nobody is left to answer
            if this in self._running:
                self._cancel(this, _STREAM_FAILED)

        self._running.add(this)
        stream.on_fail(stop_the_work)
        try:
            async with asyncio.timeout(timeout):
                context = TaskContext(
                    str(stream.remote_peer),
                    request.task_id,
                    request.kind,
                    None if timeout is None else time.monotonic() + timeout,
                )
                output = await handler.run(request, context)
        except TimeoutError:
            raise _Rejected(
                error_response(request.task_id, ErrorCode.TIMEOUT, f"handler ran over {timeout}s")
            ) from None
        except asyncio.CancelledError:
            reason = self._cancelled.pop(this, None)
            if reason is None or this.uncancel() > 0:
                raise  # the stream's task itself is being stopped (node stop, connection lost)
            if reason == _STREAM_FAILED and stream.failed is not None:
                raise stream.failed from None
            raise _Rejected(
                error_response(
                    request.task_id, ErrorCode.SHUTTING_DOWN, f"cancelled: {_GRACE_OVER}"
                )
            ) from None
        except HandlerFailedError as exc:
            raise _Rejected(error_response(request.task_id, ErrorCode.FAILED, str(exc))) from None
        except Exception as exc:
            message = f"handler raised {type(exc).__name__}: {exc}"
            log.error(
                "task %s kind=%s from %s: %s",
                request.task_id,
                request.kind,
                stream.remote_peer,
                message,
                exc_info=exc,
            )
            if not self.expose_errors:
                message = GENERIC_FAILURE
            raise _Rejected(error_response(request.task_id, ErrorCode.FAILED, message)) from None
        finally:
            self._running.discard(this)
            if self._cancelled.pop(this, None) is not None:
                this.uncancel()  # the handler swallowed our cancellation and returned
        if len(output) > self.max_response_size:
            raise _Rejected(
                error_response(
                    request.task_id,
                    ErrorCode.FAILED,
                    f"output of {len(output)} bytes exceeds {self.max_response_size}",
                )
            )
        return output

    def _cancel(self, task: asyncio.Task[None], reason: str) -> None:
        """Cancel a running handler, remembering why (once: the first reason counts)."""
        if task not in self._cancelled:
            self._cancelled[task] = reason
            task.cancel()

    def _log(self, peer: PeerId, request: TaskRequest | None, response: TaskResponse) -> None:
        if self.on_log is None:
            return
        error = response.error
        self.on_log(
            TaskLogRecord(
                peer_id=str(peer),
                kind=request.kind if request else "",
                task_id=response.task_id,
                latency_ms=response.latency_ms,
                outcome=error.code if error else "ok",
                message=error.message if error else "",
            )
        )


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
