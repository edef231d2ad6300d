"""``p2pnode status``: what a running ``serve`` holds, through a local control endpoint.

``serve`` listens on a unix socket, ``$XDG_RUNTIME_DIR/p2pnode/<end of its PeerId>.sock``
(``/tmp/p2pnode-<uid>/`` without ``XDG_RUNTIME_DIR``), in a directory only its owner may
enter, and removes it when it stops. A client writes ``status\\n`` and reads one JSON
object: the node's PeerId, addresses, uptime, connections (peer, direction, muxer,
address, streams, age), tasks running and limit refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pnode.errors import DiscoveryError, LocalProtocolError

if TYPE_CHECKING:
    from p2pnode.cli.output import Output
    from p2pnode.node import Node

REQUEST = b"status\n"
REQUEST_TIMEOUT = 2.0  # seconds a client gets to ask, and a status command to hear back


def status_dir() -> Path:
    """Where running nodes put their control sockets."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "p2pnode" if runtime else Path(f"/tmp/p2pnode-{os.getuid()}")


def _private_dir() -> Path:
    """The socket directory, created owner-only; refused if someone else can enter it."""
    path = status_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise LocalProtocolError(
            f"{path} must be a directory of yours that nobody else can enter (chmod 700 it)"
        )
    return path


def node_status(node: Node, tasks_running: int, started: float) -> dict[str, Any]:
    """The status a running node reports."""
    from p2pnode.cli.output import full_addrs

    now = time.monotonic()
    connections = [
        {
            "peer_id": str(conn.remote_peer),
            "direction": "outbound" if conn.is_initiator else "inbound",
            "muxer": conn.muxer_protocol,
            "addr": str(conn.remote_addr),
            "streams": conn.stream_count,
            "age_s": round(now - conn.opened_at, 1),
        }
        for conn in node.connections()
    ]
    return {
        "event": "status",
        "peer_id": str(node.peer_id),
        "addrs": full_addrs(node),
        "uptime_s": round(now - started, 1),
        "connections": connections,
        "streams": sum(c["streams"] for c in connections),
        "tasks_running": tasks_running,
        "refusals": dict(node.refusals.counts),
        "reachability": node.reachability,
        "relays": sorted(str(peer) for peer in node.relay_client.reservations),
        "relay_service": None
        if node.relay_service is None
        else {
            "reservations": len(node.relay_service.book.reservations(time.time())),
            "relayed_bytes": node.relay_service.relayed_bytes,
            "circuits_cut": node.relay_service.circuits_cut,
        },
    }


async def open_status_endpoint(
    node: Node, describe: Callable[[], dict[str, Any]]
) -> tuple[asyncio.AbstractServer, Path]:
    """Serve ``describe()`` on this node's control socket; (the server, its path)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await reader.readline()
            if request == REQUEST:
                writer.write(json.dumps(describe()).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, OSError, ValueError):
            pass  # a client that did not ask properly gets nothing
        finally:
            writer.close()

    path = _private_dir() / f"{str(node.peer_id)[-16:]}.sock"  # unix paths stay short
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a node of this identity that did not stop cleanly
    try:
        server = await asyncio.start_unix_server(answer, path, limit=256)
    except OSError as exc:
        raise LocalProtocolError(
            f"cannot open the control socket {path}: {exc} (set XDG_RUNTIME_DIR to a "
            "shorter, writable directory)"
        ) from None
    os.chmod(path, 0o600)
    return server, path


async def _ask(path: Path) -> dict[str, Any] | None:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path, limit=16 << 20)
            writer.write(REQUEST)
            line = await reader.readline()
            writer.close()
        answer: dict[str, Any] = json.loads(line)
        return answer
    except (OSError, TimeoutError, ValueError):
        return None  # a socket left by a node that died, or one that did not answer


def running_status(peer_id: str) -> dict[str, Any] | None:
    """The status of this user's running ``serve`` with ``peer_id``, or None (not running)."""
    path = status_dir() / f"{peer_id[-16:]}.sock"
    return asyncio.run(_ask(path)) if path.exists() else None


def _describe(status: dict[str, Any]) -> str:
    lines = [
        f"{status['peer_id']}: up {status['uptime_s']:g} s, {len(status['connections'])} "
        f"connections, {status['streams']} streams, {status['tasks_running']} tasks running",
        f"  reachability: {status.get('reachability', 'unknown')}"
        + "".join(f"; relayed via {r}" for r in status.get("relays", ())),
        *(f"  listening on {a}" for a in status["addrs"]),
        *(
            f"  {c['direction']:8} {c['peer_id']} {c['muxer']} {c['addr']} "
            f"streams={c['streams']} age={c['age_s']:g}s"
            for c in status["connections"]
        ),
    ]
    if status["refusals"]:
        refused = ", ".join(f"{k}={v}" for k, v in sorted(status["refusals"].items()))
        lines.append(f"  refusals: {refused}")
    return "\n".join(lines)


async def status_cli(out: Output, peer: str | None) -> None:
    """Print the status of every running node of this user (or the one with PeerId ``peer``)."""
    folder = status_dir()
    sockets = sorted(folder.glob("*.sock")) if folder.is_dir() else []
    found = 0
    for path in sockets:
        status = await _ask(path)
        if status is None or (peer is not None and status.get("peer_id") != peer):
            continue
        found += 1
        out.emit("status", _describe(status), **{k: v for k, v in status.items() if k != "event"})
    if not found:
        which = f"with PeerId {peer} " if peer else ""
        raise DiscoveryError(
            f"no running p2pnode serve {which}found in {folder}: start one with p2pnode serve"
        )
