"""The ``p2pnode`` command line: ``id``, ``serve``, ``ping``, ``perf``, ``send-task``, ``card``,
``peers``.

With ``--json`` every command prints one JSON object per line on stdout.
Errors go to stderr and the exit code tells what kind of failure it was
(see :data:`p2pnode.cli.output.EXIT_CODES` and the README).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pnode.cli.output import (
    EXIT_ERROR,
    MUXER_CHOICES,
    Output,
    Seconds,
    internal_error,
    load_identity,
    raise_open_file_limit,
    run_async,
    summarize,
)
from p2pnode.cli.perf import ByteSize
from p2pnode.protocols import perf
from p2pnode.protocols.kad.protocol_ids import DEFAULT_PROTOCOL as DEFAULT_DHT_PROTOCOL
from p2pnode.protocols.kad.protocol_ids import LAN_PROTOCOL as LAN_DHT_PROTOCOL

if TYPE_CHECKING:
    from p2pnode.protocols.kad.dht import DhtConfig

# Each command imports the stack it needs when it runs: `p2pnode --help` stays fast.

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


_GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet", "-V", "--version"}
_GLOBAL_WITH_VALUE = {"--log-level", "--config"}


def hoist_global_options(args: list[str]) -> list[str]:
    """Global options given after the command move before it: ``p2pnode ping ADDR -v``
    means ``p2pnode -v ping ADDR``. Anything after ``--`` stays where it is."""
    start = 0
    while start < len(args) and args[start].startswith("-"):
        start += 2 if args[start] in _GLOBAL_WITH_VALUE else 1
    if start >= len(args):
        return args
    moved: list[str] = []
    kept: list[str] = []
    rest = iter(args[start + 1 :])
    for arg in rest:
        if arg == "--":
            kept += [arg, *rest]
        elif arg in _GLOBAL_FLAGS or (arg.partition("=")[0] in _GLOBAL_WITH_VALUE and "=" in arg):
            moved.append(arg)
        elif arg in _GLOBAL_WITH_VALUE:
            moved += [arg, next(rest, "")]
        else:
            kept.append(arg)
    return [*args[:start], *moved, args[start], *kept]


class SafeGroup(click.Group):
    """A group whose commands never end in a traceback: unexpected errors are one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            as_json = bool(ctx.params.get("as_json")) or "--json" in ctx.protected_args + ctx.args
            internal_error(exc, Output(as_json))


@click.group(
    cls=SafeGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(None, "-V", "--version", package_name="p2pnode")
@click.option(
    "-v", "--verbose", count=True, help="More log output on stderr (-vv: debug). Anywhere."
)
@click.option("-q", "--quiet", is_flag=True, help="Log errors only.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log level on stderr (overrides -v and -q).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Default options per command (TOML). Default: $XDG_CONFIG_HOME/p2pnode/config.toml",
)
@click.pass_context
def main(
    ctx: click.Context, verbose: int, quiet: bool, log_level: str | None, config_path: str | None
) -> None:
    """p2pnode: a libp2p-compatible peer-to-peer task exchange."""
    from p2pnode.cli.config import ConfigError, load_defaults

    try:
        ctx.default_map = load_defaults(Path(config_path) if config_path else None, main)
    except ConfigError as exc:
        Output("--json" in sys.argv).error(str(exc), EXIT_ERROR)
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if quiet:
        level = logging.ERROR
    if log_level:
        level = getattr(logging, log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_open_file_limit()


@main.command("id")
@click.argument("peer", required=False)
@identity_option
@click.option(
    "--timeout",
    type=Seconds(),
    default=10.0,
    show_default=True,
    help="Seconds to find, connect to and identify PEER.",
)
@json_option
def id_command(peer: str | None, identity_path: str | None, timeout: float, as_json: bool) -> None:
    """Print this node's PeerId (creating the key file on first use), or with PEER (a
    multiaddr ending in /p2p/<id>, or a PeerId found by cache or mDNS) what that peer
    says about itself: PeerId, public key, agent, addresses, protocols."""
    out = Output(as_json)
    if peer is not None:
        from p2pnode.cli.identify import identify_cli

        run_async(lambda: identify_cli(out, peer, timeout), out)
        return
    import base64

    from p2pnode.wire.identity import default_identity_path

    path = Path(identity_path) if identity_path else default_identity_path()
    from p2pnode.cli.status import running_status

    identity = load_identity(str(path), False, out)
    public_key = base64.b64encode(identity.public_key.to_protobuf()).decode()
    running = running_status(str(identity.peer_id))  # a serve of this identity, if any
    reachability = running.get("reachability", "unknown") if running else None
    out.emit(
        "id",
        str(identity.peer_id)
        + (f"\n  serving; reachability: {reachability}" if running is not None else ""),
        peer_id=str(identity.peer_id),
        public_key=public_key,
        identity=str(path),
        reachability=reachability,
        addrs=running.get("addrs") if running else None,
    )


def bootstrap_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--bootstrap",
        "bootstrap",
        multiple=True,
        metavar="MADDR",
        help="A DHT node to join through, ending in /p2p/<id> (repeatable).",
    )(func)


def dht_protocol_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dht-protocol",
        default=DEFAULT_DHT_PROTOCOL,
        show_default=True,
        help=f"DHT protocol id: another one makes a private DHT ({LAN_DHT_PROTOCOL} for a LAN).",
    )(func)


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
    help="Tasks run at once; beyond it new tasks get 'busy'. [default: 128]",
)
@click.option("--name", default="", help="The node's name, in its agent card.")
@click.option("--description", default="", help="What the node is for, in its agent card.")
@click.option(
    "--describe",
    "describe_specs",
    multiple=True,
    metavar='KIND="TEXT"',
    help="What a task kind does, in the agent card (repeatable).",
)
@click.option(
    "--output-type",
    "output_type_specs",
    multiple=True,
    metavar="KIND=MEDIA/TYPE",
    help="Media type of a kind's output (e.g. an --exec kind: image/png) (repeatable).",
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
    type=Seconds(allow_zero=True),
    default=10.0,
    show_default=True,
    help="Seconds running tasks get to finish on shutdown.",
)
@click.option("--no-mdns", is_flag=True, help="Do not advertise or discover peers with mDNS.")
@click.option(
    "--dht",
    "dht_mode",
    type=click.Choice(["auto", "server", "client", "off"]),
    default="auto",
    show_default=True,
    help="Kademlia DHT mode; auto: client until a peer from another host reaches us.",
)
@bootstrap_option
@dht_protocol_option
@click.option(
    "--limit",
    "limit_settings",
    multiple=True,
    metavar="NAME=N",
    help="Raise or lower one of the limits in the README's table (repeatable), "
    "e.g. max_inbound_connections_per_ip=500.",
)
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464).",
)
@click.option(
    "--expose-errors",
    is_flag=True,
    help="Send a Python handler's exception text to the peer (default: a generic message).",
)
@click.option(
    "--perf",
    "serve_perf",
    is_flag=True,
    help=f"Serve the libp2p perf protocol {perf.PROTOCOL_ID} (throughput tests; default off).",
)
@click.option(
    "--relay-service",
    is_flag=True,
    help="Relay for others (circuit relay v2, go's default limits: 2 min and 128 KiB "
    "per direction per circuit, 128 reservations).",
)
@click.option(
    "--relay",
    "relays",
    multiple=True,
    metavar="MADDR",
    help="Hold a reservation on this relay (ending in /p2p/<id>; repeatable), so that "
    "peers that cannot dial us reach us through it.",
)
@click.option(
    "--autonat/--no-autonat",
    default=True,
    show_default=True,
    help="Ask peers whether we are reachable (AutoNAT), answer their asks, and take relay "
    "slots when we are not.",
)
@click.option(
    "--private-network",
    is_flag=True,
    help="A LAN or lab without public addresses: private IPs count as reachable.",
)
@click.option(
    "--observed-threshold",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Peers that must see the same address of ours before we trust it (small networks: 2).",
)
@click.option(
    "--perf-max-download",
    type=ByteSize(),
    default=f"{perf.DEFAULT_MAX_DOWNLOAD >> 30}GiB",
    show_default=True,
    help="Bytes one perf request may ask for; larger requests are refused (K M G KiB MiB GiB).",
)
@json_option
def serve(
    listen_addrs: tuple[str, ...],
    identity_path: str | None,
    ephemeral: bool,
    muxer: str,
    exec_specs: tuple[str, ...],
    python_specs: tuple[str, ...],
    max_concurrent: int | None,
    name: str,
    description: str,
    describe_specs: tuple[str, ...],
    output_type_specs: tuple[str, ...],
    allow: tuple[str, ...],
    allow_file: str | None,
    grace: float,
    no_mdns: bool,
    dht_mode: str,
    bootstrap: tuple[str, ...],
    dht_protocol: str,
    limit_settings: tuple[str, ...],
    expose_errors: bool,
    serve_perf: bool,
    perf_max_download: int,
    relay_service: bool,
    relays: tuple[str, ...],
    autonat: bool,
    private_network: bool,
    observed_threshold: int,
    metrics: str | None,
    as_json: bool,
) -> None:
    """Run a node that serves tasks until SIGINT or SIGTERM.

    With the DHT on, the node provides one DHT key per task kind it serves, so that
    `p2pnode find KIND` finds it from anywhere in the DHT.
    """
    from p2pnode.cli.serve import ServeOptions, run_serve
    from p2pnode.net.limits import Limits, limits_with

    out = Output(as_json)
    if identity_path and ephemeral:
        out.error("--identity and --ephemeral exclude each other", EXIT_ERROR)
    try:
        limits = limits_with(Limits(), limit_settings)
    except ValueError as exc:
        out.error(f"--limit: {exc}", EXIT_ERROR)
    options = ServeOptions(
        listen_addrs=list(listen_addrs),
        identity_path=identity_path,
        ephemeral=ephemeral,
        muxers=MUXER_CHOICES[muxer],
        exec_specs=list(exec_specs),
        python_specs=list(python_specs),
        max_concurrent=max_concurrent,
        name=name,
        description=description,
        describe=_kind_settings(describe_specs, "--describe", out),
        output_types=_kind_settings(output_type_specs, "--output-type", out),
        allow=list(allow),
        allow_file=allow_file,
        grace=grace,
        mdns=not no_mdns,
        expose_errors=expose_errors,
        dht_mode=dht_mode,
        bootstrap=list(bootstrap),
        dht_protocol=dht_protocol,
        limits=limits,
        perf=serve_perf,
        perf_max_download=perf_max_download,
        metrics=metrics,
        relay_service=relay_service,
        relays=list(relays),
        autonat=autonat,
        private_network=private_network,
        observed_threshold=observed_threshold,
    )
    run_async(lambda: run_serve(options, out), out)


def _kind_settings(specs: tuple[str, ...], option: str, out: Output) -> dict[str, str]:
    """``KIND=VALUE`` settings by kind."""
    settings = {}
    for spec in specs:
        kind, sep, value = spec.partition("=")
        if not sep or not kind.strip():
            out.error(f"{option} {spec!r}: expected KIND=VALUE", EXIT_ERROR)
        settings[kind.strip()] = value
    return settings


@main.command("ping")
@click.argument("addr")
@click.option(
    "--count",
    "-c",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Pings to send.",
)
@muxer_option
@click.option(
    "--timeout",
    type=Seconds(),
    default=10.0,
    show_default=True,
    help="Seconds for the whole run.",
)
@json_option
def ping_command(addr: str, count: int, muxer: str, timeout: float, as_json: bool) -> None:
    """Ping a peer at a multiaddr (ending in /p2p/<id> to check its identity)."""
    import asyncio

    from p2pnode.errors import P2PTimeoutError
    from p2pnode.node import Node, NodeConfig
    from p2pnode.wire.identity import Identity
    from p2pnode.wire.multiaddr import Multiaddr

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
                    addr=str(target),
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


@main.command("perf")
@click.argument("addr")
@click.option(
    "--upload",
    type=ByteSize(),
    default="10MiB",
    show_default=True,
    help="Bytes to send (suffixes K M G: powers of 1000; KiB MiB GiB: of 1024).",
)
@click.option(
    "--download",
    type=ByteSize(),
    default="10MiB",
    show_default=True,
    help="Bytes to ask the peer to send back (same suffixes).",
)
@muxer_option
@click.option(
    "--timeout",
    type=Seconds(),
    default=60.0,
    show_default=True,
    help="Seconds for the whole run.",
)
@json_option
def perf_command(
    addr: str, upload: int, download: int, muxer: str, timeout: float, as_json: bool
) -> None:
    """Measure upload and download throughput to a peer with the libp2p perf protocol.

    ADDR is a multiaddr (ending in /p2p/<id> to check its identity) of a peer that serves
    /perf/1.0.0, e.g. one started with `p2pnode serve --perf`.
    """
    from p2pnode.cli.perf import perf_cli

    out = Output(as_json)
    run_async(lambda: perf_cli(out, addr, upload, download, MUXER_CHOICES[muxer], timeout), out)


@main.command("send-task")
@click.argument("peer")
@click.argument("task_input", metavar="[INPUT]", required=False)
@click.option("--kind", default="default", show_default=True, help="Which handler on the peer.")
@click.option(
    "--input-file",
    metavar="PATH",
    help="Send this file's bytes exactly, as a bytes part ('-': standard input).",
)
@click.option("--media", metavar="MEDIA/TYPE", help="Media type of --input-file (e.g. image/png).")
@click.option(
    "--input-json", metavar="JSON", help="Send this JSON value as a json part (after INPUT)."
)
@click.option("--metadata", metavar="JSON", help="A JSON object passed to the handler.")
@click.option("--stream", is_flag=True, help="Print output as it arrives (progress on stderr).")
@click.option("--output-file", metavar="PATH", help="Write the output's bytes exactly to PATH.")
@click.option(
    "--timeout",
    type=Seconds(),
    default=30.0,
    show_default=True,
    help="Seconds for the whole command: finding the peer, connecting and the task.",
)
@click.option(
    "--connect-timeout",
    type=Seconds(),
    default=10.0,
    show_default=True,
    help="Seconds for finding and connecting to the peer (within --timeout).",
)
@identity_option
@click.option("--ephemeral", is_flag=True, help="Use a fresh identity instead of the key file.")
@muxer_option
@click.option("--no-cache", is_flag=True, help="Do not use or update the cache of peer addresses.")
@click.option(
    "--any",
    "any_kind",
    is_flag=True,
    help="PEER is a task kind: send to the least-loaded, nearest peer whose card serves it.",
)
@click.option(
    "--candidate",
    "candidates",
    multiple=True,
    metavar="MADDR",
    help="With --any: a peer to consider (repeatable); else mDNS and the DHT find them.",
)
@click.option(
    "--fanout",
    type=click.IntRange(min=1),
    default=None,
    help="With --any: run on N capable peers at once and print each one's result.",
)
@click.option("--first", is_flag=True, help="With --fanout: print the first success only.")
@bootstrap_option
@dht_protocol_option
@json_option
def send_task_command(
    peer: str,
    task_input: str | None,
    kind: str,
    input_file: str | None,
    media: str | None,
    input_json: str | None,
    metadata: str | None,
    stream: bool,
    output_file: str | None,
    timeout: float,
    connect_timeout: float,
    identity_path: str | None,
    ephemeral: bool,
    muxer: str,
    no_cache: bool,
    any_kind: bool,
    candidates: tuple[str, ...],
    fanout: int | None,
    first: bool,
    bootstrap: tuple[str, ...],
    dht_protocol: str,
    as_json: bool,
) -> None:
    """Send one task to PEER and print its output.

    PEER is a multiaddr ending in /p2p/<id>, or a bare PeerId (found through the address
    cache, mDNS, then the DHT when --bootstrap is given). With --any, PEER is a task kind
    (also sent as --kind) and the task goes to a peer whose agent card serves it.
    INPUT is sent as text; "-" sends standard input's bytes exactly (as --input-file -).
    Output is written as the peer sent it: bytes exactly, text with a final newline.
    """
    from p2pnode.cli.sendtask import TaskInput, send_task_cli

    out = Output(as_json)
    if task_input == "-":
        if input_file is not None:
            out.error('INPUT "-" and --input-file both read input: use one', EXIT_ERROR)
        task_input, input_file = None, "-"
    if task_input is None and input_file is None and input_json is None:
        out.error(
            "give INPUT, --input-file PATH, --input-json JSON, or - for standard input",
            EXIT_ERROR,
        )
    if (fanout or first) and not any_kind:
        out.error("--fanout and --first need --any KIND", EXIT_ERROR)
    parts = [] if task_input is None else [_input_part(task_input, out)]
    if input_json is not None:
        from p2pnode.protocols.task.messages2 import Part

        parts.append(Part.of_json(_json_value(input_json, "--input-json", out)))
    task = TaskInput(
        parts,
        file=input_file,
        media=media,
        metadata=_metadata(metadata, out),
        stream=stream,
        output_file=output_file,
        fanout=fanout,
        first=first,
        candidates=list(candidates),
    )
    identity = load_identity(identity_path, ephemeral, out)
    run_async(
        lambda: send_task_cli(
            out,
            identity,
            peer,
            task,
            kind=kind,
            timeout=timeout,
            connect_timeout=connect_timeout,
            muxers=MUXER_CHOICES[muxer],
            use_cache=not no_cache,
            dht=_dht_config(bootstrap, dht_protocol) if bootstrap else None,
            any_kind=any_kind,
        ),
        out,
    )


def _input_part(text: str, out: Output) -> Any:
    """INPUT as a text part; an argument that is not UTF-8 goes as its exact bytes."""
    from p2pnode.protocols.task.messages2 import Part

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        import os

        return Part.of_bytes(os.fsencode(text))
    return Part.of_text(text)


def _json_value(text: str, option: str, out: Output) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError as exc:
        out.error(f"{option} is not JSON: {exc}", EXIT_ERROR)


def _metadata(text: str | None, out: Output) -> dict[str, Any] | None:
    if text is None:
        return None
    value = _json_value(text, "--metadata", out)
    if not isinstance(value, dict):
        out.error("--metadata must be a JSON object, e.g. '{\"n\": 3}'", EXIT_ERROR)
    return value


def _dht_config(bootstrap: tuple[str, ...], dht_protocol: str) -> DhtConfig:
    from p2pnode.cli.dht import dht_config  # only commands that join a DHT load it

    return dht_config(bootstrap, dht_protocol)


@main.command("card")
@click.argument("peer")
@click.option("--timeout", type=Seconds(), default=10.0, show_default=True)
@identity_option
@click.option("--ephemeral", is_flag=True, help="Use a fresh identity instead of the key file.")
@json_option
def card_command(
    peer: str, timeout: float, identity_path: str | None, ephemeral: bool, as_json: bool
) -> None:
    """Print PEER's agent card: name, kinds (media types, schemas, streaming) and load.

    The card is signed by the peer; one that does not verify is refused.
    """
    from p2pnode.cli.card import print_card

    out = Output(as_json)
    identity = load_identity(identity_path, ephemeral, out)
    run_async(lambda: print_card(out, identity, peer, timeout), out)


@main.command("find-peer")
@click.argument("peer_id")
@bootstrap_option
@dht_protocol_option
@click.option(
    "--timeout", type=Seconds(), default=30.0, show_default=True, help="Seconds for the lookup."
)
@json_option
def find_peer_command(
    peer_id: str, bootstrap: tuple[str, ...], dht_protocol: str, timeout: float, as_json: bool
) -> None:
    """Find a peer's addresses in the DHT (exit 3 when no one knows it)."""
    from p2pnode.cli.dht import dht_config, find_peer_cli
    from p2pnode.wire.identity import Identity

    out = Output(as_json)
    run_async(
        lambda: find_peer_cli(
            out, Identity.generate(), peer_id, dht_config(bootstrap, dht_protocol), timeout
        ),
        out,
    )


@main.command("find")
@click.argument("kind")
@bootstrap_option
@dht_protocol_option
@click.option(
    "--timeout", type=Seconds(), default=30.0, show_default=True, help="Seconds for the lookup."
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option
def find_command(
    kind: str,
    bootstrap: tuple[str, ...],
    dht_protocol: str,
    timeout: float,
    limit: int,
    as_json: bool,
) -> None:
    """List peers that serve tasks of KIND, found through the DHT (exit 3 when none)."""
    from p2pnode.cli.dht import dht_config, find_providers_cli
    from p2pnode.wire.identity import Identity

    out = Output(as_json)
    run_async(
        lambda: find_providers_cli(
            out, Identity.generate(), kind, dht_config(bootstrap, dht_protocol), timeout, limit
        ),
        out,
    )


@main.command("status")
@click.argument("peer_id", required=False)
@json_option
def status_command(peer_id: str | None, as_json: bool) -> None:
    """Show what each running `p2pnode serve` of yours holds: connections, streams, tasks
    (read from its control socket under $XDG_RUNTIME_DIR/p2pnode; PEER_ID: only that node)."""
    from p2pnode.cli.status import status_cli

    out = Output(as_json)
    run_async(lambda: status_cli(out, peer_id), out)


@main.command("peers")
@click.option(
    "--timeout", type=Seconds(), default=2.0, show_default=True, help="Seconds to listen."
)
@click.option(
    "--identify/--no-identify",
    default=True,
    show_default=True,
    help="Ask each peer what it serves.",
)
@click.option("--watch", is_flag=True, help="Print discovered/expired events as they happen.")
@click.option("--no-mdns", is_flag=True, help="Do not listen for mDNS (with --bootstrap).")
@bootstrap_option
@dht_protocol_option
@json_option
def peers_command(
    timeout: float,
    identify: bool,
    watch: bool,
    no_mdns: bool,
    bootstrap: tuple[str, ...],
    dht_protocol: str,
    as_json: bool,
) -> None:
    """List the peers found on the local network with mDNS (or --watch them come and go)
    and, with --bootstrap, the DHT peers closest to us; each says where it came from."""
    from p2pnode.cli.sendtask import list_peers, watch_peers

    out = Output(as_json)
    if watch:
        run_async(lambda: watch_peers(out, timeout=timeout), out)
        return
    if no_mdns and not bootstrap:
        out.error("--no-mdns leaves nothing to ask: give --bootstrap MADDR", EXIT_ERROR)
    run_async(
        lambda: list_peers(
            out,
            timeout=timeout,
            identify=identify,
            mdns=not no_mdns,
            dht=_dht_config(bootstrap, dht_protocol) if bootstrap else None,
        ),
        out,
    )


if __name__ == "__main__":
    main()
