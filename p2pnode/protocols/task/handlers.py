"""Task handlers: what a server does with a task's input (echo, a command, a Python callable)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import re
import shlex
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from p2pnode.errors import LocalProtocolError
from p2pnode.protocols.task.messages import TaskRequest

log = logging.getLogger("p2pnode.protocols.task.server")  # the task server's logger

STDERR_TAIL = 2048
_KIND_PREFIX = re.compile(r"^([a-z][a-z0-9_-]*)=(.*)$", re.DOTALL)
_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(slots=True, frozen=True)
class TaskContext:
    """What a handler may want to know besides the request: who asked, and until when.

    ``deadline`` is on the ``time.monotonic()`` clock (None: no time limit).
    """

    peer_id: str
    task_id: str
    kind: str
    deadline: float | None = None


class HandlerFailedError(Exception):
    """A handler could not produce an output; the message goes back to the peer."""


class TaskHandler(Protocol):
    """Turns a request into its output string; raise HandlerFailedError (or anything) to fail."""

    async def run(self, request: TaskRequest, context: TaskContext | None = None) -> str: ...


class EchoHandler:
    """Answers with the input: the built-in default."""

    async def run(self, request: TaskRequest, context: TaskContext | None = None) -> str:
        return request.input


class ExecHandler:
    """Runs a command per task (no shell): input on stdin, output from stdout.

    The command runs in a process group of its own; the whole group is killed when the
    task times out or is cancelled (which includes the server's shutdown), so children
    it started do not outlive it. After the kill, waiting for the process is bounded:
    pipes still held by an orphan that escaped the group are not waited on.
    """

    KILL_WAIT = 5.0  # seconds to wait for the killed process to be reaped

    def __init__(
        self,
        argv: Sequence[str],
        max_output: int = 16 * 1024 * 1024,
        media_type: str = "application/octet-stream",
    ) -> None:
        if not argv:
            raise LocalProtocolError("--exec needs a command")
        self.argv = list(argv)
        self.max_output = max_output
        self.media_type = media_type  # of its output, in protocol 2

    def __repr__(self) -> str:
        return f"ExecHandler({shlex.join(self.argv)!r})"

    async def run(self, request: TaskRequest, context: TaskContext | None = None) -> str:
        env = dict(os.environ, P2PNODE_TASK_ID=request.task_id, P2PNODE_TASK_KIND=request.kind)
        if context is not None:
            env["P2PNODE_PEER_ID"] = context.peer_id
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise HandlerFailedError(f"cannot run {self.argv[0]!r}: {exc.strerror}") from None
        try:
            stdout, stderr = await self._communicate(proc, request.input.encode())
            code = await proc.wait()
        except BaseException:
            await self._kill_group(proc)
            raise
        if code != 0:
            tail = stderr[-STDERR_TAIL:].decode(errors="replace").strip()
            raise HandlerFailedError(
                f"command {self.argv[0]!r} exited with status {code}"
                + (f": {tail}" if tail else "")
            )
        if stderr and log.isEnabledFor(logging.DEBUG):
            tail = stderr[-STDERR_TAIL:].decode(errors="replace").strip()
            log.debug("task %s: %r wrote to stderr: %s", request.task_id, self.argv[0], tail)
        return stdout.decode(errors="replace")

    @staticmethod
    def _kill_group_now(proc: asyncio.subprocess.Process) -> None:
        """SIGKILL the command's process group (its session: pgid == pid)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    async def _kill_group(self, proc: asyncio.subprocess.Process) -> None:
        """Kill the group and reap the process, never waiting long (even when cancelled)."""
        self._kill_group_now(proc)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.feed_eof()
        wait = asyncio.ensure_future(proc.wait())
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(wait), self.KILL_WAIT)
        if not wait.done():
            wait.cancel()

    async def _communicate(
        self, proc: asyncio.subprocess.Process, data: bytes
    ) -> tuple[bytes, bytes]:
        stdout, stderr, _ = await asyncio.gather(
            self._read_limited(proc.stdout, self.max_output, proc),
            self._read_limited(proc.stderr, 1 << 20, proc),
            self._feed(proc, data),
        )
        return stdout, stderr

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(data)
            await proc.stdin.drain()
        proc.stdin.close()

    @staticmethod
    async def _read_limited(
        pipe: asyncio.StreamReader | None, limit: int, proc: asyncio.subprocess.Process
    ) -> bytes:
        assert pipe is not None
        chunks: list[bytes] = []
        total = 0
        while chunk := await pipe.read(65536):
            total += len(chunk)
            if total > limit:
                ExecHandler._kill_group_now(proc)
                raise HandlerFailedError(f"command wrote more than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


class PythonHandler:
    """Calls a Python function with the TaskRequest: async ones on the loop, sync ones in a thread.

    A sync function that times out keeps running in its thread; its result is discarded.
    """

    def __init__(self, func: Callable[[TaskRequest], Any], name: str = "") -> None:
        self.func = func
        self.name = name or getattr(func, "__qualname__", repr(func))
        call = getattr(func, "__call__", None)  # noqa: B004 - callable objects with async __call__
        self._is_async = (
            inspect.iscoroutinefunction(func)
            or inspect.iscoroutinefunction(call)
            or inspect.isasyncgenfunction(func)
        )
        self.executor: Executor | None = None  # set by the TaskServer for sync functions
        self._takes_context = _takes_context(func, self.name)

    @property
    def is_async(self) -> bool:
        return self._is_async

    @property
    def takes_context(self) -> bool:
        """Whether the function takes (request, context) rather than (request)."""
        return self._takes_context

    async def run(self, request: TaskRequest, context: TaskContext | None = None) -> str:
        if context is None:
            context = TaskContext("", request.task_id, request.kind)
        args: tuple[Any, ...] = (request, context) if self._takes_context else (request,)
        if inspect.isasyncgenfunction(self.func):  # a streaming handler: its text, joined
            pieces = [v async for v in self.func(*args) if isinstance(v, str)]
            return "".join(pieces)
        if self._is_async:
            result = await self.func(*args)
        elif self.executor is not None:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.executor, self.func, *args)
        else:
            result = await asyncio.to_thread(self.func, *args)
        if not isinstance(result, str):
            raise HandlerFailedError(
                f"handler {self.name} returned {type(result).__name__}, not str"
            )
        return result


def _takes_context(func: Callable[..., Any], name: str) -> bool:
    """Whether ``func`` takes (request, context); LocalProtocolError unless (request[, context])."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return False  # a builtin without a signature: call it with the request
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
    if not required and not varargs and not positional:
        raise LocalProtocolError(f"handler {name} takes no parameters: it needs (request)")
    if len(required) > 2:
        raise LocalProtocolError(
            f"handler {name} needs {len(required)} parameters: it may take (request) "
            "or (request, context)"
        )
    return len(positional) >= 2 or varargs


def load_python_handler(spec: str) -> PythonHandler:
    """``module:function`` -> a PythonHandler (LocalProtocolError with advice when it fails)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LocalProtocolError(f"--handler {spec!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LocalProtocolError(
            f"--handler {spec!r}: cannot import {module_name}: {exc} (is it on PYTHONPATH?)"
        ) from None
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else module_name
        raise LocalProtocolError(
            f"--handler {spec!r}: module {module_name} has a syntax error at {where}: {exc.msg}"
        ) from None
    except Exception as exc:
        raise LocalProtocolError(
            f"--handler {spec!r}: importing module {module_name} raised {type(exc).__name__}: {exc}"
        ) from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise LocalProtocolError(f"--handler {spec!r}: {module_name} has no callable {attr}")
    try:
        return PythonHandler(func, spec)
    except LocalProtocolError as exc:
        raise LocalProtocolError(f"--handler {spec!r}: {exc}") from None


def _split_kind(spec: str, option: str) -> tuple[str, str]:
    """``kind=body`` when the spec starts with a lowercase name and ``=``; else ("default", spec).

    ``LANG=C sort`` (a name that is not lowercase) is not a kind: it stays the command.
    """
    if spec.startswith("="):
        raise LocalProtocolError(f"{option} {spec!r}: the kind before '=' is empty")
    match = _KIND_PREFIX.match(spec)
    if match:
        return match.group(1), match.group(2)
    return "default", spec


def _exec_argv(spec: str, body: str) -> list[str]:
    try:
        argv = shlex.split(body)
    except ValueError as exc:
        raise LocalProtocolError(f"--exec {spec!r}: {exc}") from None
    if not argv:
        raise LocalProtocolError(f"--exec {spec!r}: no command")
    if _ENV_ASSIGNMENT.match(argv[0]):
        raise LocalProtocolError(
            f"--exec {spec!r}: {argv[0]!r} looks like an environment variable, but commands "
            f"run without a shell: write {'env ' + shlex.join(argv)!r}; a kind must be a "
            "lowercase name (letters, digits, - and _) before '='"
        )
    if shutil.which(argv[0]) is None:
        raise LocalProtocolError(f"--exec {spec!r}: command {argv[0]!r} not found")
    return argv


def parse_handler_specs(
    exec_specs: Sequence[str], python_specs: Sequence[str]
) -> dict[str, TaskHandler]:
    """Handlers by kind from ``--exec [KIND=]"CMD ..."`` and ``--handler [KIND=]module:func``.

    ``echo`` is always available; ``default`` is echo unless a spec without KIND= replaces it.
    """
    handlers: dict[str, TaskHandler] = {"default": EchoHandler(), "echo": EchoHandler()}
    seen: set[str] = set()
    specs: list[tuple[str, str, bool]] = [(s, "--exec", True) for s in exec_specs]
    specs += [(s, "--handler", False) for s in python_specs]
    for spec, option, is_exec in specs:
        kind, body = _split_kind(spec, option)
        if kind == "echo":
            raise LocalProtocolError(f"{option} {spec!r}: the kind 'echo' is built in")
        if kind in seen:
            raise LocalProtocolError(f"{option} {spec!r}: kind {kind!r} is defined twice")
        seen.add(kind)
        if is_exec:
            handlers[kind] = ExecHandler(_exec_argv(spec, body))
        else:
            handlers[kind] = load_python_handler(body)
    return handlers


def describe(handlers: Mapping[str, TaskHandler]) -> dict[str, str]:
    """A short description of each kind, for logs."""
    return {kind: type(h).__name__ for kind, h in sorted(handlers.items())}
