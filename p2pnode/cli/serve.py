"""``p2pnode serve``: a node with the task server, mDNS and signal-driven graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from p2pnode.cli.dht import dht_config
from p2pnode.cli.lines import Repeats
from p2pnode.errors import IdentityError, LocalProtocolError, P2PError
from p2pnode.net.limits import Limits
from p2pnode.node import ConnectionEvent, Node, NodeConfig
from p2pnode.protocols.kad.dht import DEFAULT_PROTOCOL as DEFAULT_DHT_PROTOCOL
from p2pnode.protocols.kad.dht import DhtMode
from p2pnode.protocols.perf import DEFAULT_MAX_DOWNLOAD, serve_perf
from p2pnode.protocols.task.handlers import ExecHandler
from p2pnode.protocols.task.server import (
    DEFAULT_MAX_CONCURRENT,
    TaskLogRecord,
    TaskServer,
    format_log_human,
    format_log_json,
    parse_handler_specs,
)
from p2pnode.wire.identity import Identity, PeerId, default_identity_path
from p2pnode.wire.kad import provider_key_for_kind
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.relay import RelayLimits

REPEAT_WINDOW = 10.0  # seconds: repeated failures from one address are printed once per window
TRIM_DELAY = 1.0  # seconds after a connection closed before freed memory goes back to the system
EXIT_INTERRUPTED = 130  # a second SIGINT/SIGTERM cut the grace period short

if TYPE_CHECKING:
    from p2pnode.cli.output import Output


@dataclass(slots=True)
class ServeOptions:
    """Everything ``p2pnode serve`` was asked to do."""

    listen_addrs: list[str]
    identity_path: str | None = None
    ephemeral: bool = False
    muxers: tuple[str, ...] = ("yamux", "mplex")
    exec_specs: list[str] = field(default_factory=list)
    python_specs: list[str] = field(default_factory=list)
    max_concurrent: int | None = None
    name: str = ""
    description: str = ""
    describe: dict[str, str] = field(default_factory=dict)  # kind -> text, for the card
    output_types: dict[str, str] = field(default_factory=dict)  # kind -> media type
    allow: list[str] = field(default_factory=list)
    allow_file: str | None = None
    grace: float = 10.0
    mdns: bool = True
    expose_errors: bool = False
    dht_mode: str = "auto"  # auto | server | client | off
    bootstrap: list[str] = field(default_factory=list)
    dht_protocol: str = DEFAULT_DHT_PROTOCOL
    limits: Limits = field(default_factory=Limits)
    perf: bool = False  # serve /perf/1.0.0
    metrics: str | None = None  # HOST:PORT for Prometheus metrics
    perf_max_download: int = DEFAULT_MAX_DOWNLOAD
    relay_service: bool = False  # relay for others (circuit relay v2)
    relays: list[str] = field(default_factory=list)  # relays to hold a reservation on
    autonat: bool = True  # reachability checks, dial-backs for others, auto relays
    private_network: bool = False
    observed_threshold: int = 4


def _relay_addr(text: str) -> Multiaddr:
    addr = Multiaddr.from_string(text)
    if addr.peer_id is None or addr.unsupported_part() is not None:
        raise LocalProtocolError(
            f"--relay {text}: give a relay's TCP address ending in /p2p/<relay id>"
        )
    return addr


def read_allow_list(allow: list[str], allow_file: str | None) -> set[PeerId] | None:
    """PeerIds allowed to send tasks, or None when everyone is."""
    texts = list(allow)
    if allow_file:
        for line in Path(allow_file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                texts.append(line)
    if not texts and not allow_file:
        return None
    allowed = set()
    for text in texts:
        try:
            allowed.add(PeerId.from_string(text))
        except IdentityError as exc:
            raise IdentityError(f"bad PeerId in the allow list: {text!r}: {exc}") from None
    return allowed


def add_cwd_to_path() -> None:
    """Let ``--handler mymod:f`` find mymod.py in the current directory (as uvicorn does).

    ``python -m p2pnode`` has it on sys.path already; the ``p2pnode`` script does not.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _repeat_key(event: ConnectionEvent) -> tuple[str, str] | None:
    """Failures that a misbehaving source can repeat at will are folded per address."""
    if event.kind == "handshake_failed" or (event.kind == "disconnected" and event.error):
        source = event.addr.value_for("ip4") or event.addr.value_for("ip6") or str(event.addr)
        return (event.kind, str(source))
    return None


class _MemoryReturn:
    """Gives the memory that closed connections held back to the system.

    glibc's malloc keeps freed heap memory for reuse and returns only what lies at the
    top of the heap, so after a peer made the node buffer tens of MiB (what the limits
    allow) and left, the RSS stayed at its peak. TRIM_DELAY after a connection closes
    (once for any number of closes) ``malloc_trim(0)`` releases the free pages; a few
    ms for a heap of 100 MiB. Without glibc (musl, macOS) this does nothing.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._trim: Callable[[int], object] | None = None
        if sys.platform.startswith("linux"):
            import ctypes

            with contextlib.suppress(OSError, AttributeError):
                self._trim = ctypes.CDLL(None).malloc_trim

    def on_event(self, event: ConnectionEvent) -> None:
        if event.kind == "disconnected" and self._trim is not None and self._handle is None:
            self._handle = self._loop.call_later(TRIM_DELAY, self._run)

    def _run(self) -> None:
        self._handle = None
        if self._trim is not None:
            self._trim(0)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def _every(seconds: float, action: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(seconds)
        action()


def _reachable_listen_addrs(node: Node) -> list[str]:
    """Listen addresses other hosts can reach (not loopback)."""
    from p2pnode.net.addresses import expand_wildcards

    found = []
    for addr in expand_wildcards(node.listen_addrs):
        host = addr.value_for("ip4") or addr.value_for("ip6")
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            found.append(str(addr))
    return found


async def _provide_kinds(node: Node, kinds: list[str], out: Output) -> None:
    """Announce each task kind in the DHT once it has peers (then the DHT republishes)."""
    assert node.dht is not None
    await node.dht.ready.wait()  # a DHT peer to give the records to
    for kind in kinds:
        try:
            peers = await node.dht.provide(provider_key_for_kind(kind))
        except P2PError as exc:
            out.emit("provide_failed", f"could not provide {kind!r} in the DHT: {exc}", kind=kind,
                     error=str(exc))  # fmt: skip
            continue
        out.emit("provided", f"providing {kind!r} in the DHT ({peers} peers took the record)",
                 kind=kind, peers=peers)  # fmt: skip


def _serve_card(node: Node, identity: Identity, server: TaskServer, options: ServeOptions) -> None:
    """Serve the node's signed agent card (``p2pnode card``)."""
    from p2pnode import __version__
    from p2pnode.protocols.card import CardService, task_server_card

    unknown = sorted(set(options.describe) - set(server.handlers))
    if unknown:
        raise LocalProtocolError(
            f"--describe names kinds this node does not serve: {', '.join(unknown)}; "
            f"it serves {', '.join(sorted(server.handlers))}"
        )
    for kind, handler in server.handlers.items():
        media = options.output_types.get(kind)
        if media and isinstance(handler, ExecHandler):
            handler.media_type = media
    build = task_server_card(
        server, node.peer_id, options.name, options.description, f"p2pnode/{__version__}"
    )
    CardService(node, identity, build).install()


async def run_serve(options: ServeOptions, out: Output) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""
    from p2pnode.cli.output import format_event, full_addrs

    if options.ephemeral:
        identity = Identity.generate()
    else:
        path = Path(options.identity_path) if options.identity_path else default_identity_path()
        identity = Identity.load_or_create(path)
    if options.python_specs:
        add_cwd_to_path()
    handlers = parse_handler_specs(options.exec_specs, options.python_specs)
    allowed = read_allow_list(options.allow, options.allow_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    dht = None
    if options.dht_mode != "off":
        dht = dht_config(options.bootstrap, options.dht_protocol, DhtMode(options.dht_mode))
        dht.maintain = True
    node = await Node.start(
        identity,
        options.listen_addrs,
        NodeConfig(
            muxers=options.muxers,
            mdns=options.mdns,
            dht=dht,
            limits=options.limits,
            relay_service=RelayLimits() if options.relay_service else None,
            relays=[_relay_addr(text) for text in options.relays],
            autonat_service=options.autonat,
            reachability_checks=options.autonat,
            private_network=options.private_network,
            observed_threshold=options.observed_threshold,
        ),
    )

    out.start_background()
    repeats = Repeats(REPEAT_WINDOW)

    def print_connection_event(event: ConnectionEvent) -> None:
        human, fields = format_event(event)
        key = _repeat_key(event)
        if key is not None:
            suppressed = repeats.admit(key)
            if suppressed is None:
                return
            if suppressed:
                fields["repeated"] = suppressed
                human += f" (and {suppressed} more like it in the last {REPEAT_WINDOW:g} s)"
        out.emit(event.kind, human, **fields)

    def report_repeats(everything: bool = False) -> None:
        for key, count in repeats.expired(everything=everything):
            kind, source = cast(tuple[str, str], key)
            out.emit(
                kind,
                f"{kind}: {count} more from {source} in the last {REPEAT_WINDOW:g} s",
                addr=source,
                repeated=count,
            )

    node.on_event(print_connection_event)
    memory = _MemoryReturn(loop)
    node.on_event(memory.on_event)
    reporter = asyncio.create_task(_every(REPEAT_WINDOW, report_repeats))
    background: list[asyncio.Task[None]] = [reporter]
    stats = None
    metrics_at = None
    if options.metrics is not None:
        from p2pnode.cli.metrics import NodeCollector, TaskStats, start_metrics_server

        stats = TaskStats()
        collector = NodeCollector(node, stats, lambda: out.dropped_lines, loop)
        host, port = start_metrics_server(options.metrics, collector)
        metrics_at = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def log_task(record: TaskLogRecord) -> None:
        if stats is not None:
            stats.record(record)
        out.line(format_log_json(record) if out.as_json else format_log_human(record))

    server = TaskServer(
        node,
        handlers,
        max_concurrent=options.max_concurrent or DEFAULT_MAX_CONCURRENT,
        allow=allowed,
        expose_errors=options.expose_errors,
        on_log=log_task,
        output_types=options.output_types,
        descriptions=options.describe,
    )
    server.install()
    _serve_card(node, identity, server, options)
    from p2pnode.cli.status import node_status, open_status_endpoint

    started = time.monotonic()
    status_server, status_path = await open_status_endpoint(
        node, lambda: node_status(node, server.running, started)
    )
    if options.perf:
        serve_perf(node, options.perf_max_download)
    try:
        addrs = full_addrs(node)
        metrics_line = f"\nmetrics at {metrics_at}" if metrics_at else ""
        out.emit(
            "listening",
            f"p2pnode {node.peer_id} listening{' (perf on)' if options.perf else ''} on:\n  "
            + "\n  ".join(addrs)
            + metrics_line,
            peer_id=str(node.peer_id),
            addrs=addrs,
            kinds=sorted(handlers),
            mdns=options.mdns,
            perf=options.perf,
            metrics=metrics_at,
            relay_service=options.relay_service,
        )
        node.on_addresses_changed(
            lambda _: out.emit(
                "addresses",
                f"reachability {node.reachability}; addresses:\n  " + "\n  ".join(full_addrs(node)),
                addrs=full_addrs(node),
                reachability=node.reachability,
                relays=sorted(str(p) for p in node.relay_client.reservations),
            )
        )
        open_to = _reachable_listen_addrs(node)
        if (options.exec_specs or options.python_specs) and allowed is None and open_to:
            out.warn(
                f"anyone who can reach {open_to[0]} can run your --exec/--handler tasks; "
                "restrict them with --allow PEER_ID (or --allow-file), or listen on "
                "/ip4/127.0.0.1 only",
                code="open_handlers",
            )
        if node.dht is not None:
            background.append(asyncio.create_task(_provide_kinds(node, sorted(handlers), out)))
        # What is alive now (modules, the node) lives as long as the process: keep the
        # collector from rescanning it, which slowed the first thousand tasks by a third.
        gc.collect()
        gc.freeze()
        await stop.wait()
        force = asyncio.Event()  # a second SIGINT/SIGTERM: stop now
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, force.set)
        running = server.running
        tasks = f"{running} task{'' if running == 1 else 's'}"
        out.emit(
            "stopping",
            f"shutting down: {tasks} still running, waiting up to {options.grace:g} s "
            "(press Ctrl-C again to stop now)",
            grace_s=options.grace,
            running=running,
        )
        shutdown = asyncio.create_task(server.shutdown(options.grace))
        forced = asyncio.create_task(force.wait())
        await asyncio.wait({shutdown, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if not shutdown.done():
            shutdown.cancel()
            await asyncio.gather(shutdown, return_exceptions=True)
            forced_stop = server.running
        else:
            shutdown.result()
            forced_stop = -1
    finally:
        status_server.close()
        with contextlib.suppress(OSError):
            status_path.unlink()
        memory.close()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        report_repeats(everything=True)
        await node.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if forced_stop >= 0:
        out.error(
            f"stopped at once by a second signal ({forced_stop} running tasks were cancelled)",
            EXIT_INTERRUPTED,
        )
    out.final("stopped", "stopped")
