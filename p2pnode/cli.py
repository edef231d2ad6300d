"""The ``p2pnode`` command line: ``id``, ``serve``, ``ping``, ``send-task``, ``peers``.

With ``--json`` every command prints one JSON object per line on stdout.
Errors go to stderr and the exit code tells what kind of failure it was
(see :data:`EXIT_CODES` and the README).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click

from .errors import (
    DialError,
    DiscoveryError,
    HandshakeError,
    NegotiationError,
    P2PError,
    P2PTimeoutError,
)
from .identity import Identity, default_identity_path
from .multiaddr import Multiaddr
from .node import ConnectionEvent, Node, NodeConfig

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
    from .task import TaskError

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
    from .addresses import expand_wildcards

    return [str(a.with_peer_id(node.peer_id)) for a in expand_wildcards(node.listen_addrs)]


identity_option = click.option(
    "--identity",
    "identity_path",
    type=click.Path(dir_okay=False),
    help="Private key file (created on first use). Default: $XDG_CONFIG_HOME/p2pnode/identity.key",
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
muxer_option = click.option(
    "--muxer",
    type=click.Choice(sorted(MUXER_CHOICES)),
    default="both",
    show_default=True,
    help="Stream multiplexer(s) to offer or accept; with both, yamux is preferred.",
)


@click.group()
@click.version_option(package_name="p2pnode")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
def main(verbose: int) -> None:
    """p2pnode: a libp2p-compatible peer-to-peer task exchange."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_open_file_limit()


def raise_open_file_limit() -> None:
    """A node holds a socket per connection: allow as many as the hard limit permits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


@main.command("id")
@identity_option
@json_option
def id_command(identity_path: str | None, as_json: bool) -> None:
    """Print this node's PeerId (creating the key file on first use)."""
    out = Output(as_json)
    path = Path(identity_path) if identity_path else default_identity_path()
    try:
        identity = Identity.load_or_create(path)
    except P2PError as exc:
        out.error(str(exc), EXIT_ERROR)
    out.emit("id", str(identity.peer_id), peer_id=str(identity.peer_id), identity=str(path))


def _format_event(event: ConnectionEvent) -> tuple[str, dict[str, Any]]:
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


@main.command()
@click.option(
    "--listen",
    "listen_addrs",
    multiple=True,
    default=["/ip4/0.0.0.0/tcp/0"],
    show_default=True,
    help="Multiaddr to listen on (repeatable).",
)
@identity_option
@click.option("--ephemeral", is_flag=True, help="Use a fresh identity; write no key file.")
@muxer_option
@click.option(
    "--exec",
    "exec_specs",
    multiple=True,
    help='Task handler command: "CMD ARGS" or KIND="CMD ARGS" (repeatable).',
)
@click.option(
    "--handler",
    "python_specs",
    multiple=True,
    help="Task handler callable: module:function or KIND=module:function.",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=None,
    help="Tasks run at once; beyond it new tasks get 'busy'.",
)
@click.option(
    "--allow", "allow", multiple=True, help="Only accept tasks from this PeerId (repeatable)."
)
@click.option(
    "--allow-file",
    type=click.Path(exists=True, dir_okay=False),
    help="File of allowed PeerIds, one per line.",
)
@click.option(
    "--grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds running tasks get to finish on shutdown.",
)
@click.option("--no-mdns", is_flag=True, help="Do not advertise or discover peers with mDNS.")
@json_option
def serve(
    listen_addrs: tuple[str, ...],
    identity_path: str | None,
    ephemeral: bool,
    muxer: str,
    exec_specs: tuple[str, ...],
    python_specs: tuple[str, ...],
    max_concurrent: int | None,
    allow: tuple[str, ...],
    allow_file: str | None,
    grace: float,
    no_mdns: bool,
    as_json: bool,
) -> None:
    """Run a node that serves tasks until SIGINT or SIGTERM."""
    from .serve import ServeOptions, run_serve

    out = Output(as_json)
    if identity_path and ephemeral:
        out.error("--identity and --ephemeral exclude each other", EXIT_ERROR)
    options = ServeOptions(
        listen_addrs=list(listen_addrs),
        identity_path=identity_path,
        ephemeral=ephemeral,
        muxers=MUXER_CHOICES[muxer],
        exec_specs=list(exec_specs),
        python_specs=list(python_specs),
        max_concurrent=max_concurrent,
        allow=list(allow),
        allow_file=allow_file,
        grace=grace,
        mdns=not no_mdns,
    )
    run_async(lambda: run_serve(options, out), out)


@main.command("ping")
@click.argument("addr")
@click.option("--count", "-c", type=click.IntRange(min=1), default=5, show_default=True)
@muxer_option
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds for the whole run."
)
@json_option
def ping_command(addr: str, count: int, muxer: str, timeout: float, as_json: bool) -> None:
    """Ping a peer at a multiaddr (ending in /p2p/<id> to check its identity)."""
    out = Output(as_json)

    async def run() -> None:
        target = Multiaddr.from_string(addr)
        node = Node(Identity.generate(), NodeConfig(muxers=MUXER_CHOICES[muxer]))
        try:
            async with asyncio.timeout(timeout):
                conn = await node.dial(target)
                out.emit(
                    "connected",
                    f"connected to {conn.remote_peer} via {conn.muxer_protocol}",
                    peer_id=str(conn.remote_peer),
                    muxer=conn.muxer_protocol,
                )
                rtts = []
                for seq in range(count):
                    (rtt,) = await node.ping(conn.remote_peer, 1)
                    rtts.append(rtt * 1000)
                    out.emit(
                        "pong",
                        f"pong from {conn.remote_peer}: seq={seq} time={rtts[-1]:.3f} ms",
                        seq=seq,
                        rtt_ms=round(rtts[-1], 4),
                    )
        except TimeoutError:
            raise P2PTimeoutError(f"ping did not complete within {timeout}s") from None
        finally:
            await node.stop()
        summary = summarize(rtts)
        out.emit(
            "summary",
            f"{count} pings: min {summary['min_ms']:.3f} ms, p50 {summary['p50_ms']:.3f} ms, "
            f"p99 {summary['p99_ms']:.3f} ms",
            count=count,
            **summary,
        )

    run_async(run, out)


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


@main.command("send-task")
@click.argument("peer")
@click.argument("task_input", metavar="INPUT")
@click.option("--kind", default="default", show_default=True, help="Which handler on the peer.")
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds for the task."
)
@identity_option
@click.option("--ephemeral", is_flag=True, help="Use a fresh identity instead of the key file.")
@muxer_option
@click.option("--no-cache", is_flag=True, help="Do not use or update the cache of peer addresses.")
@json_option
def send_task_command(
    peer: str,
    task_input: str,
    kind: str,
    timeout: float,
    identity_path: str | None,
    ephemeral: bool,
    muxer: str,
    no_cache: bool,
    as_json: bool,
) -> None:
    """Send one task to PEER and print its output.

    PEER is a multiaddr ending in /p2p/<id>, or a bare PeerId found with mDNS.
    INPUT "-" reads standard input.
    """
    from .sendtask import send_task_cli

    out = Output(as_json)
    text = sys.stdin.read() if task_input == "-" else task_input
    identity = load_identity(identity_path, ephemeral)
    run_async(
        lambda: send_task_cli(
            out,
            identity,
            peer,
            text,
            kind=kind,
            timeout=timeout,
            muxers=MUXER_CHOICES[muxer],
            use_cache=not no_cache,
        ),
        out,
    )


@main.command("peers")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds to listen.")
@click.option("--identify/--no-identify", default=True, help="Ask each peer what it serves.")
@click.option("--watch", is_flag=True, help="Print discovered/expired events as they happen.")
@json_option
def peers_command(timeout: float, identify: bool, watch: bool, as_json: bool) -> None:
    """List the peers found on the local network with mDNS (or --watch them come and go)."""
    from .sendtask import list_peers, watch_peers

    out = Output(as_json)
    if watch:
        run_async(lambda: watch_peers(out, timeout=timeout), out)
    else:
        run_async(lambda: list_peers(out, timeout=timeout, identify=identify), out)


if __name__ == "__main__":
    main()
