"""Running handlers for task protocol 2: the Task a handler sees, and each handler's events.

``run_handler(handler, task)`` is an async iterator of ``TaskProgress`` and ``OutputChunk``
events, whatever the handler is:

- ``EchoHandler`` streams its input back, piece by piece, as it arrives;
- ``ExecHandler`` writes the input to the command's stdin as raw bytes while it runs, and
  each read of its stdout (up to 256 KiB, as soon as the command wrote it) becomes one
  bytes output chunk, of the handler's media type;
- ``PythonHandler`` calls the function with the Task (and a TaskContext if it takes two
  parameters). A function or coroutine returns the output: ``str`` (text), ``bytes``
  (bytes), a ``Part``, a list of them, JSON-compatible data (a json part) or None (no
  output). An async (or plain) generator yields ``TaskProgress`` for progress and output
  as it goes: consecutive ``str`` yields extend one text part, consecutive ``bytes`` yields
  one bytes part, and a ``Part`` starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

from p2pnode.protocols.task.handlers import (
    STDERR_TAIL,
    EchoHandler,
    ExecHandler,
    HandlerFailedError,
    PythonHandler,
    TaskContext,
    TaskHandler,
)
from p2pnode.protocols.task.messages import TaskRequest
from p2pnode.protocols.task.messages2 import (
    CHUNK_SIZE,
    OutputChunk,
    Part,
    PartAssembler,
    TaskProgress,
)
from p2pnode.protocols.task.session2 import InputPiece

HandlerEvent = TaskProgress | OutputChunk


class PieceSource(Protocol):
    """Where a streamed input comes from: the next piece, or None at the end."""

    async def next_piece(self) -> InputPiece | None: ...


class Task:
    """A protocol-2 task as its handler sees it: who asked, what for, and the input.

    ``parts`` (and ``input``, ``data``) hold the whole input; handlers that stream their
    input (echo, exec) read it with ``pieces()`` instead, as it arrives. ``deadline`` is
    on the ``time.monotonic()`` clock (None: no time limit).
    """

    def __init__(
        self,
        task_id: str,
        kind: str,
        peer_id: str = "",
        *,
        parts: list[Part] | None = None,
        source: PieceSource | None = None,
        metadata: dict[str, Any] | None = None,
        deadline: float | None = None,
        stream: bool = False,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.peer_id = peer_id
        self.metadata = metadata or {}
        self.deadline = deadline
        self.stream = stream  # the client wants events as they happen
        self._parts = parts
        self._source = source

    @property
    def parts(self) -> list[Part]:
        """The whole input."""
        if self._parts is None:
            raise HandlerFailedError("this handler streams its input: read it with pieces()")
        return self._parts

    @property
    def input(self) -> str:
        """The text parts of the input, joined (what a protocol-1 handler gets)."""
        return "".join(p.text or "" for p in self.parts if p.type == "text")

    @property
    def data(self) -> bytes:
        """The whole input as bytes: text as UTF-8, bytes as they are, JSON encoded."""
        return b"".join(p.as_bytes() for p in self.parts)

    async def pieces(self) -> AsyncIterator[InputPiece]:
        """The input piece by piece, as the client sends it (at most once)."""
        if self._source is None:
            for part in self.parts:
                yield InputPiece(part, False)
            return
        source, self._source = self._source, None
        while (piece := await source.next_piece()) is not None:
            yield piece

    def context(self) -> TaskContext:
        return TaskContext(self.peer_id, self.task_id, self.kind, self.deadline)


def streams_input(handler: TaskHandler) -> bool:
    """Whether the handler reads its input as it arrives (else the server gathers it)."""
    return isinstance(handler, EchoHandler | ExecHandler) or bool(
        getattr(handler, "streams_input", False)
    )


def run_handler(handler: TaskHandler, task: Task) -> AsyncIterator[HandlerEvent]:
    """The handler's events for ``task`` (close the iterator to stop the handler)."""
    if isinstance(handler, EchoHandler):
        return _echo(task)
    if isinstance(handler, ExecHandler):
        return _exec(handler, task)
    if isinstance(handler, PythonHandler):
        return _python(handler, task)
    run_v2 = getattr(handler, "run_v2", None)
    if run_v2 is not None:
        return run_v2(task)  # type: ignore[no-any-return]
    return _protocol1(handler, task)


def produces_whole(handler: TaskHandler) -> bool:
    """Whether the handler makes its output in one go (no events while it runs)."""
    if isinstance(handler, EchoHandler):
        return True
    if isinstance(handler, PythonHandler):
        func = handler.func
        return not (inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func))
    return not isinstance(handler, ExecHandler) and getattr(handler, "run_v2", None) is None


async def run_whole(handler: TaskHandler, task: Task) -> list[Part]:
    """The output of a handler for which ``produces_whole`` holds, without event iterators."""
    if isinstance(handler, EchoHandler):
        return list(task.parts) if task._source is None else [
            e.part async for e in _echo(task) if isinstance(e, OutputChunk)
        ]  # fmt: skip
    if isinstance(handler, PythonHandler):
        args: tuple[Any, ...] = (task, task.context()) if handler.takes_context else (task,)
        if handler.is_async:
            value = await handler.func(*args)
        else:
            value = await _in_thread(handler, handler.func, *args)
        if isinstance(value, Iterator):  # a function that returned an iterator: drain it
            value = await _in_thread(handler, list, value)
            outputs = _Outputs()
            assembler = PartAssembler()
            for item in value:
                for event in outputs.events_of(item):
                    if isinstance(event, OutputChunk):
                        assembler.add(event.part, event.append)
            return assembler.parts()
        return _parts_of(value)
    request = TaskRequest(task.task_id, task.input, task.kind)
    return [Part.of_text(await handler.run(request, task.context()))]


async def _echo(task: Task) -> AsyncIterator[HandlerEvent]:
    if task._source is None:  # the whole input is here
        for part in task.parts:
            yield OutputChunk(part)
        return
    async for piece in task.pieces():
        yield OutputChunk(piece.part, piece.append)


async def _protocol1(handler: TaskHandler, task: Task) -> AsyncIterator[HandlerEvent]:
    request = TaskRequest(task.task_id, task.input, task.kind)
    yield OutputChunk(Part.of_text(await handler.run(request, task.context())))


async def _exec(handler: ExecHandler, task: Task) -> AsyncIterator[HandlerEvent]:
    env = dict(
        os.environ,
        P2PNODE_TASK_ID=task.task_id,
        P2PNODE_TASK_KIND=task.kind,
        P2PNODE_PEER_ID=task.peer_id,
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            *handler.argv,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise HandlerFailedError(f"cannot run {handler.argv[0]!r}: {exc.strerror}") from None
    assert proc.stdout is not None and proc.stderr is not None
    feeding = asyncio.ensure_future(_feed_stdin(proc, task))
    stderr = asyncio.ensure_future(ExecHandler._read_limited(proc.stderr, 1 << 20, proc))
    try:
        appended = False
        while chunk := await proc.stdout.read(CHUNK_SIZE):
            yield OutputChunk(Part.of_bytes(chunk, handler.media_type), appended)
            appended = True
        await feeding
        code = await proc.wait()
        errors = await stderr
    except BaseException:
        feeding.cancel()
        stderr.cancel()
        await handler._kill_group(proc)
        raise
    if code != 0:
        tail = errors[-STDERR_TAIL:].decode(errors="replace").strip()
        raise HandlerFailedError(
            f"command {handler.argv[0]!r} exited with status {code}" + (f": {tail}" if tail else "")
        )


async def _feed_stdin(proc: asyncio.subprocess.Process, task: Task) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        async for piece in task.pieces():
            proc.stdin.write(piece.part.as_bytes())
            await proc.stdin.drain()
    proc.stdin.close()


async def _python(handler: PythonHandler, task: Task) -> AsyncIterator[HandlerEvent]:
    func: Callable[..., Any] = handler.func
    args: tuple[Any, ...] = (task, task.context()) if handler.takes_context else (task,)
    if inspect.isasyncgenfunction(func):
        results = _Outputs()
        agen = func(*args)
        try:
            async for value in agen:
                for event in results.events_of(value):
                    yield event
        finally:
            await agen.aclose()
        return
    if handler.is_async:
        value = await func(*args)
    else:
        value = await _in_thread(handler, func, *args)
    if isinstance(value, Iterator):
        results = _Outputs()
        done = object()
        while (item := await _in_thread(handler, next, value, done)) is not done:
            for event in results.events_of(item):
                yield event
        return
    for event in _returned(value):
        yield event


def _in_thread(handler: PythonHandler, func: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    if handler.executor is not None:
        return asyncio.get_running_loop().run_in_executor(handler.executor, func, *args)
    return asyncio.to_thread(func, *args)


class _Outputs:
    """Turns yielded values into events: consecutive str (or bytes) yields extend one part."""

    def __init__(self) -> None:
        self._last: type | None = None

    def events_of(self, value: Any) -> list[HandlerEvent]:
        if isinstance(value, TaskProgress | OutputChunk):
            self._last = None if isinstance(value, OutputChunk) else self._last
            return [value]
        if isinstance(value, str):
            append, self._last = self._last is str, str
            return [OutputChunk(Part.of_text(value), append)]
        if isinstance(value, bytes | bytearray | memoryview):
            append, self._last = self._last is bytes, bytes
            return [OutputChunk(Part.of_bytes(bytes(value)), append)]
        self._last = None
        return [OutputChunk(part) for part in _parts_of(value)]


def _returned(value: Any) -> list[HandlerEvent]:
    return [OutputChunk(part) for part in _parts_of(value)]


def _parts_of(value: Any) -> list[Part]:
    if value is None:
        return []
    if isinstance(value, Part):
        return [value]
    if isinstance(value, str):
        return [Part.of_text(value)]
    if isinstance(value, bytes | bytearray | memoryview):
        return [Part.of_bytes(bytes(value))]
    if isinstance(value, list) and value and all(isinstance(v, Part) for v in value):
        return list(value)
    if isinstance(value, dict | list | int | float | bool):
        return [Part.of_json(value)]
    raise HandlerFailedError(
        f"a handler returned {type(value).__name__}: return str, bytes, a Part, a list of "
        "Parts or JSON-compatible data"
    )


def assemble(pieces: list[InputPiece]) -> list[Part]:
    """Parts from pieces (each appended one joined to the part before it)."""
    assembler = PartAssembler()
    for piece in pieces:
        assembler.add(piece.part, piece.append)
    return assembler.parts()
