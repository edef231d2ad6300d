"""The task protocol ``/p2pnode/task/1.0.0`` (sans-I/O): messages, codes and errors.

One task per stream: the dialer writes one request and half-closes; the listener
writes one response and closes. Each message is a varint byte length followed by
a UTF-8 JSON object. Unknown fields are ignored. See ``docs/task-protocol.md``.
"""

from __future__ import annotations

import os
import random
from enum import StrEnum

import msgspec

from p2pnode.errors import DecodeError, P2PError

PROTOCOL_ID = "/p2pnode/task/1.0.0"
DEFAULT_KIND = "default"
MAX_REQUEST_SIZE = 1024 * 1024
MAX_RESPONSE_SIZE = 16 * 1024 * 1024

# Task ids need to be unique, not secret: a generator seeded once from the OS (and again
# in a forked child) costs a fraction of an os.urandom() system call per task.
_ids = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(16)))


def new_task_id() -> str:
    """A fresh random task id: 16 hex digits."""
    return f"{_ids.getrandbits(64):016x}"


class ErrorCode(StrEnum):
    """Why a task was not done."""

    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    UNKNOWN_KIND = "unknown_kind"
    UNAUTHORIZED = "unauthorized"
    BUSY = "busy"
    TIMEOUT = "timeout"
    FAILED = "failed"
    SHUTTING_DOWN = "shutting_down"
    CANCELLED = "cancelled"  # protocol 2: the client cancelled


class TaskRequest(msgspec.Struct, omit_defaults=True):
    """What the dialer asks for."""

    task_id: str
    input: str
    kind: str = DEFAULT_KIND
    timeout_ms: int | None = None


class TaskErrorInfo(msgspec.Struct):
    """The ``error`` object of a failed response."""

    code: str
    message: str


class TaskResponse(msgspec.Struct, omit_defaults=True):
    """What the listener answers; ``error`` is set (and ``output`` empty) on failure."""

    task_id: str
    output: str
    latency_ms: int
    error: TaskErrorInfo | None = None


class _RequestProbe(msgspec.Struct):
    """Just enough of a malformed request to answer with its task_id."""

    task_id: str = ""


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(TaskRequest)
_response_decoder = msgspec.json.Decoder(TaskResponse)
_probe_decoder = msgspec.json.Decoder(_RequestProbe)


def encode_request(request: TaskRequest) -> bytes:
    """JSON body of a request (without the length prefix)."""
    return _encoder.encode(request)


def encode_response(response: TaskResponse) -> bytes:
    """JSON body of a response (without the length prefix)."""
    return _encoder.encode(response)


def decode_request(body: bytes) -> TaskRequest:
    """Parse a request body; DecodeError (naming the problem) when it is not a valid request.

    Nothing else escapes: JSON nested too deep for the decoder (RecursionError) and any
    other surprise from decoding peer bytes is a DecodeError too.
    """
    try:
        request = _request_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"invalid task request: {exc}") from None
    except RecursionError:
        raise DecodeError("invalid task request: JSON nested too deep") from None
    except Exception as exc:  # peer bytes must never crash the server
        raise DecodeError(f"invalid task request: {type(exc).__name__}: {exc}") from None
    if request.timeout_ms is not None and request.timeout_ms <= 0:
        raise DecodeError("invalid task request: timeout_ms must be positive")
    return request


def task_id_of(body: bytes) -> str:
    """Best-effort task_id of a request that failed to decode ("" if none)."""
    try:
        return _probe_decoder.decode(body).task_id
    except Exception:  # RecursionError, msgspec errors, anything: no task_id
        return ""


def decode_response(body: bytes) -> TaskResponse:
    """Parse a response body; DecodeError when it is not a valid response."""
    try:
        return _response_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"invalid task response: {exc}") from None
    except RecursionError:
        raise DecodeError("invalid task response: JSON nested too deep") from None
    except Exception as exc:  # peer bytes must never crash the client
        raise DecodeError(f"invalid task response: {type(exc).__name__}: {exc}") from None


def error_response(
    task_id: str, code: ErrorCode, message: str, latency_ms: int = 0
) -> TaskResponse:
    """A failure response."""
    return TaskResponse(task_id, "", latency_ms, TaskErrorInfo(code.value, message))


class TaskError(P2PError):
    """A task was not done; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str, task_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.task_id = task_id


class TaskRefusedError(TaskError):
    """The peer would not run the task (unauthorized, busy, shutting_down, unknown_kind)."""


class TaskFailedError(TaskError):
    """The task ran and failed, or the request was bad (failed, bad_request, too_large)."""


class TaskTimeoutError(TaskError):
    """The task did not finish in time (on the peer, or while we waited)."""


_ADVICE: dict[str, str] = {
    ErrorCode.UNAUTHORIZED: "ask the peer's operator to --allow your PeerId (p2pnode id)",
    ErrorCode.BUSY: "the peer is at its concurrency limit: retry later",
    ErrorCode.SHUTTING_DOWN: "the peer is shutting down: retry on another peer",
    ErrorCode.UNKNOWN_KIND: "choose another --kind",
    ErrorCode.TOO_LARGE: "send a smaller input",
    ErrorCode.TIMEOUT: "give the task a longer --timeout",
}
_REFUSALS: set[str] = {
    ErrorCode.UNAUTHORIZED,
    ErrorCode.BUSY,
    ErrorCode.SHUTTING_DOWN,
    ErrorCode.UNKNOWN_KIND,
}


def error_from_response(response: TaskResponse) -> TaskError:
    """The typed error a failed response stands for."""
    assert response.error is not None
    return task_error(response.error.code, response.error.message, response.task_id)


def task_error(code: str, text: str, task_id: str) -> TaskError:
    """The typed error for a failure ``code`` with the peer's ``text``, with advice."""
    advice = _ADVICE.get(code)
    message = f"task {task_id or '?'} {code}: {text}" + (f" ({advice})" if advice else "")
    if code == ErrorCode.TIMEOUT:
        return TaskTimeoutError(code, message, task_id)
    if code in _REFUSALS:
        return TaskRefusedError(code, message, task_id)
    return TaskFailedError(code, message, task_id)
