"""Client-side commands: ``send-task`` (with peer resolution) and ``peers``."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

from .discovery import DiscoveredPeer, MdnsDiscovery, PeerCache, PeerDiscovered
from .errors import DialError, MultiaddrError, P2PError
from .identity import Identity, PeerId
from .multiaddr import Multiaddr
from .node import Node, NodeConfig
from .task_client import send_task

if TYPE_CHECKING:
    from .cli import Output
    from .connection import Connection


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def resolve_and_connect(
    node: Node, target: str, *, timeout: float, use_cache: bool
) -> tuple[Connection, dict[str, Any]]:
    """Connect to a multiaddr or a bare PeerId (cache first, then mDNS); return timings."""
    timings: dict[str, Any] = {}
    if target.startswith("/"):
        addr = Multiaddr.from_string(target)
        if addr.peer_id is None:
            raise MultiaddrError(f"{target} has no /p2p/<peer id>: add it so the peer is verified")
        started = time.perf_counter()
        conn = await node.dial(addr)
        timings["connect_ms"] = _ms(time.perf_counter() - started)
        return conn, timings
    peer = PeerId.from_string(target)
    cache = PeerCache() if use_cache else None
    cached = cache.get(peer) if cache is not None else ()
    if cached:
        started = time.perf_counter()
        try:
            conn = await node.dial_first(peer, cached)
        except DialError:
            pass
        else:
            timings.update(resolved_by="cache", connect_ms=_ms(time.perf_counter() - started))
            return conn, timings
    started = time.perf_counter()
    discovery = MdnsDiscovery(node.peer_id, [])
    await discovery.start()
    try:
        found = await discovery.find(peer, timeout)
    finally:
        await discovery.stop()
    timings.update(resolved_by="mdns", discovery_ms=_ms(time.perf_counter() - started))
    started = time.perf_counter()
    conn = await node.dial_first(peer, found.addrs)
    timings["connect_ms"] = _ms(time.perf_counter() - started)
    if cache is not None:
        cache.put(peer, found.addrs)
    return conn, timings


async def send_task_cli(
    out: Output,
    identity: Identity,
    target: str,
    text: str,
    *,
    kind: str,
    timeout: float,
    muxers: tuple[str, ...],
    use_cache: bool,
) -> None:
    """``p2pnode send-task``: resolve, connect, send, print the output (or all of it as JSON)."""
    started = time.perf_counter()
    node = Node(identity, NodeConfig(muxers=muxers, keepalive_interval=None))
    try:
        conn, timings = await resolve_and_connect(
            node, target, timeout=timeout, use_cache=use_cache
        )
        sent = time.perf_counter()
        result = await send_task(node, conn.remote_peer, text, kind=kind, timeout=timeout)
        timings["round_trip_ms"] = _ms(time.perf_counter() - sent)
    finally:
        await node.stop()
    timings["total_ms"] = _ms(time.perf_counter() - started)
    if out.as_json:
        out.emit(
            "result",
            "",
            peer_id=str(conn.remote_peer),
            addr=str(conn.remote_addr),
            task_id=result.task_id,
            output=result.output,
            latency_ms=result.latency_ms,
            timings=timings,
        )
    else:
        output = result.output
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
        sys.stdout.flush()


async def watch_peers(out: Output, *, timeout: float) -> None:
    """``p2pnode peers --watch``: print discovery events as they happen, for ``timeout`` seconds."""
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


async def list_peers(out: Output, *, timeout: float, identify: bool) -> None:
    """``p2pnode peers``: listen for mDNS announcements for ``timeout`` seconds and list peers."""
    node = Node(Identity.generate(), NodeConfig(keepalive_interval=None))
    discovery = MdnsDiscovery(node.peer_id, [])
    found: dict[PeerId, DiscoveredPeer] = {}

    async def collect() -> None:
        async for event in discovery.events():
            if isinstance(event, PeerDiscovered):
                found[event.peer.peer_id] = event.peer

    await discovery.start()
    collector = asyncio.create_task(collect())
    try:
        await asyncio.sleep(timeout)  # the listening window the user asked for
        for peer in discovery.peers():
            found.setdefault(peer.peer_id, peer)
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await discovery.stop()
    try:
        for peer in found.values():
            fields: dict[str, Any] = {
                "peer_id": str(peer.peer_id),
                "addrs": [str(a) for a in peer.addrs],
            }
            if identify:
                try:
                    await node.dial_first(peer.peer_id, peer.addrs)
                    info = await node.identify(peer.peer_id)
                    fields.update(agent_version=info.agent_version, protocols=info.protocols)
                except P2PError as exc:
                    fields["identify_error"] = str(exc)
            human = f"{peer.peer_id}  " + " ".join(fields["addrs"])
            if "agent_version" in fields:
                human += f"  ({fields['agent_version']})"
            out.emit("peer", human, **fields)
    finally:
        await node.stop()
    if not found:
        print(
            f"no peers answered within {timeout}s: are they running with mDNS on this network?",
            file=sys.stderr,
        )
