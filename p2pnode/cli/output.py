"""What every command shares: output as text or JSON lines, exit codes, errors, identities."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click

from p2pnode.errors import (
    DialError,
    DiscoveryError,
    HandshakeError,
    NegotiationError,
    P2PError,
    P2PTimeoutError,
)

if TYPE_CHECKING:
    from p2pnode.cli.lines import LineWriter
    from p2pnode.node import ConnectionEvent, Node
    from p2pnode.wire.identity import Identity

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_HANDSHAKE = 4
EXIT_TIMEOUT = 5
EXIT_REFUSED = 6
EXIT_TASK_FAILED = 7

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "other error (bad arguments, bad key file, ...)",
    EXIT_UNREACHABLE: "peer unreachable (connection refused, no address, not found by mDNS)",
    EXIT_HANDSHAKE: "handshake failed (wrong identity, protocol not supported, bad peer)",
    EXIT_TIMEOUT: "timed out",
    EXIT_REFUSED: "refused by the peer (unauthorized, busy, shutting_down, unknown_kind)",
    EXIT_TASK_FAILED: "the task failed on the peer (failed, bad_request, too_large)",
}

EXIT_NAMES = {  # the ``code`` of a JSON error when no protocol code is more precise
    EXIT_ERROR: "error",
    EXIT_UNREACHABLE: "unreachable",
    EXIT_HANDSHAKE: "handshake_failed",
    EXIT_TIMEOUT: "timeout",
    EXIT_REFUSED: "refused",
    EXIT_TASK_FAILED: "task_failed",
    130: "interrupted",
}

TASK_CODE_EXITS = {
    "timeout": EXIT_TIMEOUT,
    "unauthorized": EXIT_REFUSED,
    "busy": EXIT_REFUSED,
    "shutting_down": EXIT_REFUSED,
    "unknown_kind": EXIT_REFUSED,
}

MUXER_CHOICES = {"yamux": ("yamux",), "mplex": ("mplex",), "both": ("yamux", "mplex")}


class Output:
    """Prints events as human text or as JSON lines.

    After :meth:`start_background` (``serve``), lines go through non-blocking
    :class:`~p2pnode.cli.lines.LineWriter` queues, so a stdout or stderr that nobody
    reads costs dropped lines, never a stalled event loop.
    """

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.stdout: LineWriter | None = None
        self.stderr: LineWriter | None = None

    def emit(self, event: str, human: str, **fields: Any) -> None:
        self.line(json.dumps({"event": event, **fields}) if self.as_json else human)

    def line(self, text: str, *, wait: float = 0.0) -> None:
        """One line on stdout; ``wait``: seconds to wait for room rather than drop it."""
        if self.stdout is not None:
            self.stdout.write(text, wait=wait)
        else:
            _print_quietly(text, sys.stdout)

    def final(self, event: str, human: str, **fields: Any) -> None:
        """The last event of a command (e.g. ``stopped``): when stdout is slow it is not
        dropped; the process waits up to ``EXIT_FLUSH_TIMEOUT`` for room instead."""
        from p2pnode.cli.lines import EXIT_FLUSH_TIMEOUT

        text = json.dumps({"event": event, **fields}) if self.as_json else human
        self.line(text, wait=EXIT_FLUSH_TIMEOUT)

    def warn(self, message: str, /, **fields: Any) -> None:
        """A warning: a ``warning`` event with ``--json``, else one line on stderr."""
        if self.as_json:
            self.emit("warning", message, message=message, **fields)
        elif self.stderr is not None:
            self.stderr.write(f"warning: {message}")
        else:
            _print_quietly(f"warning: {message}", sys.stderr)

    def error(self, message: str, exit_code: int, /, **fields: Any) -> NoReturn:
        """One error line (JSON: with ``code`` and ``exit_code``), then exit."""
        if self.as_json:
            fields.setdefault("code", EXIT_NAMES.get(exit_code, "error"))
            fields["exit_code"] = exit_code
            text = json.dumps({"event": "error", "message": message, **fields})
        else:
            text = f"error: {message}"
        if self.stderr is not None:
            self.stderr.write(text)
        else:
            _print_quietly(text, sys.stderr)
        sys.exit(exit_code)

    @property
    def dropped_lines(self) -> int:
        """Lines dropped so far because stdout or stderr was not read fast enough."""
        return sum(w.dropped for w in (self.stdout, self.stderr) if w is not None)

    def start_background(self) -> None:
        """Route stdout lines and log records through non-blocking writers from now on."""
        from p2pnode.cli.lines import EXIT_FLUSH_TIMEOUT, LineHandler, LineWriter

        if self.stdout is not None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.stdout = LineWriter(sys.stdout.fileno(), self._dropped_notice)
        self.stderr = LineWriter(sys.stderr.fileno(), _dropped_log_notice)
        root = logging.getLogger()
        formatter = root.handlers[0].formatter if root.handlers else None
        for handler in list(root.handlers):
            root.removeHandler(handler)
        line_handler = LineHandler(self.stderr)
        line_handler.setFormatter(formatter)
        root.addHandler(line_handler)
        writers = (self.stdout, self.stderr)
        atexit.register(lambda: [w.flush(EXIT_FLUSH_TIMEOUT) for w in writers])

    def _dropped_notice(self, count: int) -> str:
        if self.as_json:
            return json.dumps({"event": "output_dropped", "lines": count})
        lines = f"{count} output line{'' if count == 1 else 's'}"
        return f"({lines} dropped: stdout is not read fast enough)"
        return f"({lines} dropped: stdout is not read fast enough)"


def _dropped_log_notice(count: int) -> str:
    lines = f"{count} log line{'' if count == 1 else 's'}"
    return f"p2pnode: {lines} dropped: stderr is not read fast enough"
    return f"p2pnode: {lines} dropped: stderr is not read fast enough"


def _print_quietly(text: str, stream: TextIO) -> None:
    """print(), except that a reader gone away (``| head``) ends output silently."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def error_fields(exc: P2PError) -> dict[str, Any]:
    """The JSON fields of an error: its class, and a task's protocol code and id."""
    from p2pnode.protocols.task.messages import TaskError

    fields: dict[str, Any] = {"kind": type(exc).__name__}
    if isinstance(exc, TaskError):
        fields["code"] = exc.code
        if exc.task_id:
            fields["task_id"] = exc.task_id
    return fields


def exit_code_for(exc: BaseException) -> int:
    """Map an error from the p2pnode hierarchy to the command's exit code."""
    from p2pnode.protocols.task.messages import TaskError

    if isinstance(exc, TaskError):
        return TASK_CODE_EXITS.get(exc.code, EXIT_TASK_FAILED)
    if isinstance(exc, DialError | DiscoveryError):
        return EXIT_UNREACHABLE
    if isinstance(exc, HandshakeError | NegotiationError):
        return EXIT_HANDSHAKE
    if isinstance(exc, P2PTimeoutError | TimeoutError):
        return EXIT_TIMEOUT
    return EXIT_ERROR


class Seconds(click.ParamType):  # type: ignore[type-arg, unused-ignore]
    """A finite number of seconds in a sane range (click rejects the rest with exit 2)."""

    name = "seconds"

    def __init__(self, *, allow_zero: bool = False, maximum: float = 7 * 24 * 3600.0) -> None:
        self.allow_zero = allow_zero
        self.maximum = maximum

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        if number < 0 or (number == 0 and not self.allow_zero):
            bound = ">= 0" if self.allow_zero else "> 0"
            self.fail(f"{value!r}: seconds must be {bound}", param, ctx)
        if number > self.maximum:
            self.fail(f"{value!r}: at most {self.maximum:g} seconds", param, ctx)
        return number


def verbose_errors() -> bool:
    """True under -v: unexpected errors print their traceback too."""
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def internal_error(exc: BaseException, out: Output) -> NoReturn:
    """The safety net: one line (the traceback only with -v), exit 1."""
    if verbose_errors():
        traceback.print_exception(exc, file=sys.stderr)
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    hint = "" if verbose_errors() else " (run with -v for the traceback)"
    out.error(f"internal error: {text}{hint}", EXIT_ERROR, kind=type(exc).__name__, code="internal")


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """asyncio.run, or uvloop.run when P2PNODE_UVLOOP=1 and uvloop is installed.

    Without uvloop, P2PNODE_UVLOOP=1 prints one warning and falls back to asyncio.
    """
    if os.environ.get("P2PNODE_UVLOOP") == "1":
        try:
            import uvloop
        except ImportError:
            print(
                "warning: P2PNODE_UVLOOP=1 but uvloop is not installed "
                "(pip install 'p2pnode[fast]'); using asyncio's event loop",
                file=sys.stderr,
            )
        else:
            return uvloop.run  # type: ignore[no-any-return, unused-ignore]
    import asyncio

    return asyncio.run


def run_async(main: Callable[[], Coroutine[Any, Any, None]], out: Output) -> None:
    """Run ``main`` on a fresh event loop (uvloop when P2PNODE_UVLOOP=1); map errors to exits."""
    runner = event_loop_runner()
    try:
        runner(main())
    except P2PError as exc:
        out.error(str(exc), exit_code_for(exc), **error_fields(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        internal_error(exc, out)


def check_text(text: str, what: str, out: Output) -> str:
    """Refuse input that is not valid UTF-8: the 1.0.0 task protocol carries text only."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        out.error(
            f"{what} is not valid UTF-8 text: the task protocol /p2pnode/task/1.0.0 "
            "carries text only (encode binary data, e.g. as base64)",
            EXIT_ERROR,
        )
    return text


def read_stdin_text(out: Output) -> str:
    """All of standard input as UTF-8 text (a one-line error when it is not)."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return check_text(data.decode("utf-8", "surrogateescape"), "standard input", out)


def load_identity(path: str | None, ephemeral: bool, out: Output) -> Identity:
    """The node identity: fresh when ephemeral, else loaded (or created) from the key file.

    A bad key file (unsafe permissions, truncated, garbage, empty) is a one-line error.
    """
    from p2pnode.wire.identity import Identity, default_identity_path

    if ephemeral:
        if path:
            out.error("--identity and --ephemeral exclude each other", EXIT_ERROR)
        return Identity.generate()
    key_path = Path(path) if path else default_identity_path()
    try:
        return Identity.load_or_create(key_path)
    except P2PError as exc:
        out.error(str(exc), EXIT_ERROR)
    except OSError as exc:  # the message names the key file, not a temporary one
        verb = "use" if key_path.exists() else "create"
        out.error(
            f"cannot {verb} the key file {key_path}: {exc.strerror or exc} "
            "(choose another with --identity, or --ephemeral)",
            EXIT_ERROR,
        )
    except ValueError as exc:
        out.error(f"cannot use the key file {key_path}: {exc}", EXIT_ERROR)


def full_addrs(node: Node) -> list[str]:
    """The node's dialable addresses, each ending in /p2p/<id>: listen addresses, then
    observed public ones and those through relays (as identify tells peers)."""
    from p2pnode.net.addresses import expand_wildcards

    listen = expand_wildcards(node.listen_addrs)
    extra = [a for a in node.advertised_addrs if a not in node.listen_addrs]
    return [str(a.with_peer_id(node.peer_id)) for a in dict.fromkeys([*listen, *extra])]


def format_event(event: ConnectionEvent) -> tuple[str, dict[str, Any]]:
    fields: dict[str, Any] = {
        "peer_id": str(event.peer_id) if event.peer_id else None,
        "addr": str(event.addr),
        "direction": event.direction,
    }
    if event.muxer:
        fields["muxer"] = event.muxer
    if event.error:
        fields["error"] = event.error
    who = fields["peer_id"] or "unknown peer"
    human = f"{event.kind}: {who} {event.direction} {event.addr}"
    if event.error:
        human += f" ({event.error})"
    return human, fields


def summarize(values_ms: list[float]) -> dict[str, float]:
    """min / p50 / p99 / max of a list of milliseconds."""
    from statistics import median

    ordered = sorted(values_ms)
    p99_index = min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))
    return {
        "min_ms": round(ordered[0], 4),
        "p50_ms": round(median(ordered), 4),
        "p99_ms": round(ordered[p99_index], 4),
        "max_ms": round(ordered[-1], 4),
    }


def raise_open_file_limit() -> None:
    """A node holds a socket per connection: allow as many as the hard limit permits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
