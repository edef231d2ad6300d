"""Client-side commands: ``send-task`` and ``peers``; the node's routing chain finds peers."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from p2pnode.cli.results import OutputWriter, file_chunks, part_json, print_event
from p2pnode.errors import (
    DiscoveryError,
    MultiaddrError,
    P2PError,
    P2PTimeoutError,
)
from p2pnode.node import Node, NodeConfig
from p2pnode.protocols.task.client2 import TaskOutput, run_task, stream_task
from p2pnode.protocols.task.messages import TaskTimeoutError
from p2pnode.protocols.task.messages2 import Part
from p2pnode.routing.router import ConnectTrace
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from p2pnode.cli.output import Output
    from p2pnode.protocols.kad.dht import DhtConfig
    from p2pnode.routing.mdns import DiscoveredPeer


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@dataclass(slots=True)
class TaskInput:
    """What ``send-task`` sends and how it shows the answer."""

    parts: list[Part] = field(default_factory=list)
    file: str | None = None  # sent as a bytes part, read as it goes ("-": stdin)
    media: str | None = None
    metadata: dict[str, Any] | None = None
    stream: bool = False  # print output as it arrives
    output_file: str | None = None
    fanout: int | None = None
    first: bool = False
    candidates: list[str] = field(default_factory=list)
    discover: float = 1.5  # seconds of mDNS listening for --any without other candidates


async def send_task_cli(
    out: Output,
    identity: Identity,
    target: str,
    task: TaskInput,
    *,
    kind: str,
    timeout: float,
    connect_timeout: float | None = None,
    muxers: tuple[str, ...],
    use_cache: bool,
    dht: DhtConfig | None = None,
    any_kind: bool = False,
) -> None:
    """``p2pnode send-task``: resolve, connect, send, print the output (or all of it as JSON).

    ``timeout`` bounds the whole command; finding and connecting to the peer also end
    after ``connect_timeout``. With ``any_kind``, ``target`` is a task kind and the task
    goes to the best peer that serves it (``task.fanout``: to several).
    """
    started = time.perf_counter()
    if any_kind:
        kind = target
    elif target.startswith("/") and Multiaddr.from_string(target).peer_id is None:
        raise MultiaddrError(f"{target} has no /p2p/<peer id>: add it so the peer is verified")
    routing = ("cache", "mdns") if use_cache else ("mdns",)
    config = NodeConfig(muxers=muxers, keepalive_interval=None, peer_routing=routing, dht=dht)
    node = Node(identity, config)
    trace = ConnectTrace()
    budget = _Budget(timeout, connect_timeout)
    try:
        if any_kind:
            await _send_to_any(out, node, kind, task, budget)
            return
        try:
            async with asyncio.timeout(budget.connect_left()) as connecting:
                if node.dht is not None:
                    budget.phase = "joining the DHT"
                    await node.dht.start()
                    await node.dht.bootstrap()
                budget.phase = f"connecting to {target}"
                conn = await node.connect(target, trace=trace)
        except TimeoutError:
            if not connecting.expired():
                raise  # a timeout of its own (a handshake, a lookup) says what it was
            raise budget.expired(connecting=True) from None
        sent = time.perf_counter()
        options = _task_options(task, kind)
        try:
            if task.stream or task.output_file:
                await _stream_to_output(out, node, conn.remote_peer, task, options, budget)
                return
            result = await run_task(node, conn.remote_peer, task.parts, timeout=budget.left(),
                                    max_output=1 << 30, **options)  # fmt: skip
        except TaskTimeoutError as exc:
            raise TaskTimeoutError(
                exc.code, f"task {exc.task_id}: {budget.expired(connecting=False)}", exc.task_id
            ) from None
        round_trip = time.perf_counter() - sent
    finally:
        await node.stop()
    timings: dict[str, Any] = {"connect_ms": trace.connect_ms}
    if trace.resolved_by not in ("address", "connected"):
        timings["resolved_by"] = trace.resolved_by
    if trace.lookup_ms:
        timings["discovery_ms"] = trace.lookup_ms
    timings["round_trip_ms"] = _ms(round_trip)
    timings["total_ms"] = _ms(time.perf_counter() - started)
    _print_result(out, result, addr=str(conn.remote_addr), timings=timings)


def _task_options(task: TaskInput, kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": task.metadata,
        "input_chunks": file_chunks(task.file) if task.file else None,
        "input_media": task.media,
    }


def _print_result(out: Output, result: TaskOutput, **fields: Any) -> None:
    if out.as_json:
        out.emit(
            "result",
            "",
            peer_id=result.peer_id,
            task_id=result.task_id,
            output=_as_text(result.parts),
            parts=[part_json(p) for p in result.parts],
            latency_ms=result.latency_ms,
            cached=result.cached,
            protocol=result.protocol,
            **fields,
        )
        return
    writer = OutputWriter(None)
    for part in result.parts:
        writer.part(part)
    if _is_unterminated_text(result.parts):
        sys.stdout.write("\n")  # as protocol 1 did: text output is a line
        sys.stdout.flush()
    writer.close()


def _as_text(parts: list[Part]) -> str | None:
    """The output as one text when it is UTF-8 (JSON parts aside); else None."""
    try:
        return "".join(
            p.text or "" if p.type == "text" else (p.data or b"").decode()
            for p in parts
            if p.type != "json"
        )
    except UnicodeDecodeError:
        return None


def _is_unterminated_text(parts: list[Part]) -> bool:
    """Output that is UTF-8 text without a final newline (binary output stays exact)."""
    if not parts or any(p.type == "json" for p in parts):
        return False
    last = parts[-1].as_bytes()
    if last.endswith(b"\n"):
        return False
    try:
        for part in parts:
            if part.type == "bytes":
                (part.data or b"").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _stream_to_output(
    out: Output,
    node: Node,
    peer: PeerId,
    task: TaskInput,
    options: dict[str, Any],
    budget: _Budget,
) -> None:
    writer = OutputWriter(task.output_file)
    try:
        events = stream_task(node, peer, task.parts, timeout=budget.left(),
                             stream=task.stream or bool(task.output_file), **options)  # fmt: skip
        async for event in events:
            print_event(out, event, writer)
    finally:
        writer.close()
    if task.output_file and not out.as_json:
        print(f"wrote {writer.written} bytes to {task.output_file}", file=sys.stderr)


async def _send_to_any(
    out: Output, node: Node, kind: str, task: TaskInput, budget: _Budget
) -> None:
    """``--any KIND``: candidates, their cards, the best one (or ``--fanout`` of them)."""
    from p2pnode.protocols import capable

    try:
        async with asyncio.timeout(budget.connect_left()) as connecting:
            if node.dht is not None:
                budget.phase = "joining the DHT"
                await node.dht.start()
                await node.dht.bootstrap()
            if not task.candidates and node.dht is None:
                budget.phase = "listening for peers on mDNS"
                await node.start_discovery()
                await asyncio.sleep(task.discover)  # the discovery window
            budget.phase = f"looking for peers that serve {kind!r}"
            peers = await node.task_candidates(kind, task.candidates, budget.connect_left())
            found = await capable.capable_peers(node, peers, kind, cards=node.cards)
    except TimeoutError:
        if not connecting.expired():
            raise
        raise budget.expired(connecting=True) from None
    if not found:
        raise DiscoveryError(
            f"none of the {len(peers)} peers found serves kind {kind!r}"
            + ("" if peers else ": give candidates with --candidate MADDR or --bootstrap")
        )
    options = _task_options(task, kind)
    if task.fanout is None and (task.stream or task.output_file):
        await _stream_to_output(out, node, found[0].peer, task, options, budget)  # the best
        return
    options.pop("kind")
    if task.fanout is None:
        result = await capable.run_on_any(node, found, task.parts, kind=kind,
                                          timeout=budget.left(), **options)  # fmt: skip
        _print_result(out, result)
        return
    results = await capable.fan_out(node, found, task.parts, kind=kind, count=task.fanout,
                                    first=task.first, timeout=budget.left(), **options)  # fmt: skip
    failures = 0
    for one in results:
        if one.output is not None:
            if out.as_json:
                _print_result(out, one.output)
            else:
                print(f"== {one.peer_id}", flush=True)
                _print_result(out, one.output)
        else:
            failures += 1
            if out.as_json:
                out.emit("failed", "", peer_id=one.peer_id, error=str(one.error))
            else:
                print(f"== {one.peer_id} failed: {one.error}", file=sys.stderr, flush=True)
    if failures == len(results):
        raise DiscoveryError(f"the task failed on all {failures} peers")


class _Budget:
    """The time one ``send-task`` has: ``total`` for all of it, ``connect`` for connecting."""

    def __init__(self, total: float, connect: float | None) -> None:
        self.total = total
        self.connect = connect
        self.deadline = time.monotonic() + total
        self.phase = "starting"

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def connect_left(self) -> float:
        left = self.left()
        return left if self.connect is None else min(left, self.connect)

    def expired(self, *, connecting: bool) -> P2PTimeoutError:
        """The error for running out of time in the current phase, naming the option."""
        if connecting and self.connect is not None and self.connect < self.total:
            limit = f"--connect-timeout {self.connect:g}s"
            if self.left() <= 0:
                limit = f"--timeout {self.total:g}s"
        else:
            limit = f"--timeout {self.total:g}s"
        if connecting:
            return P2PTimeoutError(
                f"no connection within {limit} while {self.phase}: "
                "check that the peer is running and reachable, or allow more time"
            )
        return P2PTimeoutError(
            f"no result within {limit}: the task may still be running on the peer; "
            "allow more time with --timeout"
        )


async def watch_peers(out: Output, *, timeout: float) -> None:
    """``p2pnode peers --watch``: print discovery events as they happen, for ``timeout`` seconds."""
    from p2pnode.routing.mdns import MdnsDiscovery, PeerDiscovered

    discovery = MdnsDiscovery(Identity.generate().peer_id, [])
    await discovery.start()
    out.emit("ready", "watching for peers (mDNS)")
    try:
        async with asyncio.timeout(timeout):
            async for event in discovery.events():
                if isinstance(event, PeerDiscovered):
                    addrs = [str(a) for a in event.peer.addrs]
                    peer = str(event.peer.peer_id)
                    out.emit("discovered", f"+ {peer} {' '.join(addrs)}", peer_id=peer,
                             addrs=addrs, at=time.time())  # fmt: skip
                else:
                    peer = str(event.peer_id)
                    out.emit("expired", f"- {peer}", peer_id=peer, at=time.time())
    except TimeoutError:
        pass
    finally:
        await discovery.stop()


def _seen_in_dht(peer: PeerId, addrs: list[Multiaddr]) -> DiscoveredPeer:
    from p2pnode.routing.mdns import DiscoveredPeer

    return DiscoveredPeer(peer, tuple(addrs), 0.0, 0.0)


async def list_peers(
    out: Output,
    *,
    timeout: float,
    identify: bool,
    mdns: bool = True,
    dht: DhtConfig | None = None,
) -> None:
    """``p2pnode peers``: peers announced by mDNS within ``timeout`` seconds and, with a
    ``dht``, the DHT peers closest to us (found by a lookup); each says where it came from."""
    node = Node(Identity.generate(), NodeConfig(keepalive_interval=None, dht=dht))
    found: dict[PeerId, DiscoveredPeer] = {}
    sources: dict[PeerId, list[str]] = {}

    async def from_dht() -> None:
        assert node.dht is not None
        await node.dht.start()
        await node.dht.bootstrap()
        for peer in await node.dht.closest_peers(node.peer_id.to_bytes(), timeout=timeout):
            addrs = node.peer_store.addrs(peer)
            found.setdefault(peer, _seen_in_dht(peer, addrs))
            sources.setdefault(peer, []).append("dht")

    try:
        await _discover(
            node.peer_id, timeout, mdns, found, sources, from_dht if dht is not None else None
        )
        await _print_peers(out, node, found, sources, identify)
    finally:
        await node.stop()
    if out.as_json:
        out.emit("summary", "", count=len(found), timeout_s=timeout)
    elif not found:
        print(
            f"no peers answered within {timeout}s: are they running with mDNS on this network"
            + (" or in the DHT?" if dht is not None else "?"),
            file=sys.stderr,
        )


async def _discover(
    own_id: PeerId,
    timeout: float,
    mdns: bool,
    found: dict[PeerId, DiscoveredPeer],
    sources: dict[PeerId, list[str]],
    from_dht: Callable[[], Awaitable[None]] | None,
) -> None:
    """Listen to mDNS for ``timeout`` seconds while the DHT lookup (if any) runs."""
    lookup = asyncio.ensure_future(from_dht()) if from_dht is not None else None
    try:
        if mdns:
            await _listen_mdns(own_id, timeout, found, sources)
        if lookup is not None:
            try:
                async with asyncio.timeout(timeout + 5):
                    await lookup
            except TimeoutError:
                raise P2PTimeoutError(
                    f"the DHT lookup did not end within {timeout + 5:g}s"
                ) from None
    finally:
        if lookup is not None and not lookup.done():
            lookup.cancel()
            await asyncio.gather(lookup, return_exceptions=True)


async def _listen_mdns(
    own_id: PeerId,
    timeout: float,
    found: dict[PeerId, DiscoveredPeer],
    sources: dict[PeerId, list[str]],
) -> None:
    from p2pnode.routing.mdns import MdnsDiscovery, PeerDiscovered

    discovery = MdnsDiscovery(own_id, [])

    def seen(peer: DiscoveredPeer) -> None:
        found[peer.peer_id] = peer
        if "mdns" not in sources.setdefault(peer.peer_id, []):
            sources[peer.peer_id].insert(0, "mdns")

    async def collect() -> None:
        async for event in discovery.events():
            if isinstance(event, PeerDiscovered):
                seen(event.peer)

    await discovery.start()
    collector = asyncio.create_task(collect())
    try:
        await asyncio.sleep(timeout)  # the listening window the user asked for
        for peer in discovery.peers():
            seen(peer)
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await discovery.stop()


async def _print_peers(
    out: Output,
    node: Node,
    found: dict[PeerId, DiscoveredPeer],
    sources: dict[PeerId, list[str]],
    identify: bool,
) -> None:
    for peer in found.values():
        fields: dict[str, Any] = {
            "peer_id": str(peer.peer_id),
            "addrs": [str(a) for a in peer.addrs],
            "sources": sources.get(peer.peer_id, ["mdns"]),
        }
        if identify:
            try:
                await node.dial_first(peer.peer_id, peer.addrs)
                info = await node.identify(peer.peer_id)
                fields.update(agent_version=info.agent_version, protocols=info.protocols)
                from p2pnode.protocols.card import CARD_PROTOCOL

                if CARD_PROTOCOL in info.protocols:
                    card = await node.fetch_card(peer.peer_id)
                    fields.update(name=card.name, kinds=[k.kind for k in card.kinds])
            except P2PError as exc:
                fields["identify_error"] = str(exc)
        human = f"{peer.peer_id} [{','.join(fields['sources'])}]  " + " ".join(fields["addrs"])
        if "agent_version" in fields:
            human += f"  ({fields['agent_version']})"
        if "kinds" in fields:
            human += f"  kinds: {', '.join(fields['kinds'])}"
        out.emit("peer", human, **fields)
