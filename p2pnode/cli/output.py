"""What every command shares: output as text or JSON lines, exit codes, errors, identities."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from p2pnode.errors import (
    DialError,
    DiscoveryError,
    HandshakeError,
    NegotiationError,
    P2PError,
    P2PTimeoutError,
)
from p2pnode.wire.identity import Identity, default_identity_path

if TYPE_CHECKING:
    from p2pnode.node import ConnectionEvent, Node

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

TASK_CODE_EXITS = {
    "timeout": EXIT_TIMEOUT,
    "unauthorized": EXIT_REFUSED,
    "busy": EXIT_REFUSED,
    "shutting_down": EXIT_REFUSED,
    "unknown_kind": EXIT_REFUSED,
}

MUXER_CHOICES = {"yamux": ("yamux",), "mplex": ("mplex",), "both": ("yamux", "mplex")}


class Output:
    """Prints events as human text or as JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, event: str, human: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps({"event": event, **fields}), flush=True)
        else:
            print(human, flush=True)

    def error(self, message: str, code: int, **fields: Any) -> NoReturn:
        if self.as_json:
            print(json.dumps({"event": "error", "message": message, **fields}), file=sys.stderr)
        else:
            print(f"error: {message}", file=sys.stderr)
        sys.exit(code)


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


def run_async(main: Callable[[], Coroutine[Any, Any, None]], out: Output) -> None:
    """Run ``main`` on a fresh event loop (uvloop when P2PNODE_UVLOOP=1); map errors to exits."""
    if os.environ.get("P2PNODE_UVLOOP") == "1":
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    else:
        runner = asyncio.run
    try:
        runner(main())
    except P2PError as exc:
        out.error(str(exc), exit_code_for(exc), kind=type(exc).__name__)
    except KeyboardInterrupt:
        sys.exit(130)


def load_identity(path: str | None, ephemeral: bool) -> Identity:
    """The node identity: fresh when ephemeral, else loaded (or created) from the key file."""
    if ephemeral:
        return Identity.generate()
    return Identity.load_or_create(Path(path) if path else default_identity_path())


def full_addrs(node: Node) -> list[str]:
    """The node's dialable listen addresses, each ending in /p2p/<id>."""
    from p2pnode.net.addresses import expand_wildcards

    return [str(a.with_peer_id(node.peer_id)) for a in expand_wildcards(node.listen_addrs)]


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
    ordered = sorted(values_ms)
    p99_index = min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))
    return {
        "min_ms": round(ordered[0], 4),
        "p50_ms": round(statistics.median(ordered), 4),
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
