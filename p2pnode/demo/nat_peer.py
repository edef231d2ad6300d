"""One node of the NAT demo and tests: ``python -m p2pnode.demo.nat_peer CONFIG_JSON``.

It runs a node with an echo task handler, prints JSON lines (``listening``,
``reachability``, ``addresses``, ``identified``, ``connected``, ``disconnected``) and
answers JSON commands read from stdin, one per line:

- ``{"cmd": "task", "peer": ID, "size": N}``: a task of N bytes to peer ID (found through
  the DHT when not connected); answers ``task`` with its time and connection kind.
- ``{"cmd": "wait_direct", "peer": ID, "timeout": S}``: answers ``direct`` once a direct
  (not relayed) connection to ID is open.

The config: ``listen``, ``bootstrap`` (list), ``relay_service``, ``relays`` (list),
``observed_threshold``, ``autonat_boot_delay``, ``autonat_dial_timeout``,
``relay_limit_data`` (bytes per direction, with relay_service), ``hole_punching``,
``dht_server``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from typing import Any

from p2pnode.errors import P2PError
from p2pnode.node import ConnectionEvent, Node, NodeConfig
from p2pnode.protocols.kad.dht import DhtConfig, DhtMode
from p2pnode.protocols.task.handlers import EchoHandler
from p2pnode.protocols.task.server import TaskServer
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.relay import Limit, RelayLimits


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": round(time.monotonic(), 4), **fields}))
    sys.stdout.write("\n")
    sys.stdout.flush()


def _config(settings: dict[str, Any]) -> NodeConfig:
    relay_limits = None
    if settings.get("relay_service"):
        data = settings.get("relay_limit_data", 128 * 1024)
        relay_limits = RelayLimits(circuit=Limit(duration=120, data=data))
    bootstrap = tuple(Multiaddr.from_string(a) for a in settings.get("bootstrap", ()))
    mode = DhtMode.SERVER if settings.get("dht_server") else DhtMode.AUTO
    return NodeConfig(
        mdns=False,
        dht=DhtConfig(bootstrap=bootstrap, mode=mode, bootstrap_retry=0.5),
        relay_service=relay_limits,
        relays=list(settings.get("relays", ())),
        hole_punching=settings.get("hole_punching", True),
        autonat_service=True,
        reachability_checks=settings.get("reachability_checks", True),
        private_network=True,  # the namespaces' "public" segment uses private IPs
        observed_threshold=settings.get("observed_threshold", 2),
        autonat_boot_delay=settings.get("autonat_boot_delay", 1.0),
        autonat_retry_interval=settings.get("autonat_retry_interval", 3.0),
        autonat_dial_timeout=settings.get("autonat_dial_timeout", 2.0),
    )


async def _task(node: Node, command: dict[str, Any]) -> None:
    peer = PeerId.from_string(command["peer"])
    size = command.get("size", 64)
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]  # exactly size bytes
    started = time.monotonic()
    try:
        result = await node.run_task(
            peer,
            payload,
            timeout=command.get("timeout", 60),
            max_output=len(payload) + 1024,
            stream=len(payload) > 1 << 20,
        )
        output = result.data if hasattr(result, "data") else bytes(result)
    except P2PError as exc:
        emit("task", ok=False, error=str(exc), ms=round((time.monotonic() - started) * 1e3, 2))
        return
    conns = node.connections(peer)
    emit(
        "task",
        ok=hashlib.sha256(output).digest() == hashlib.sha256(payload).digest(),
        size=len(payload),
        ms=round((time.monotonic() - started) * 1e3, 2),
        limited=[c.limited for c in conns if c.is_usable],
    )


async def _wait_direct(node: Node, command: dict[str, Any]) -> None:
    peer = PeerId.from_string(command["peer"])
    started = time.monotonic()
    try:
        async with asyncio.timeout(command.get("timeout", 30)):
            while not any(c.is_usable and not c.limited for c in node.connections(peer)):
                await asyncio.sleep(0.01)
    except TimeoutError:
        emit("direct", ok=False, peer=str(peer))
        return
    direct = next(c for c in node.connections(peer) if c.is_usable and not c.limited)
    waited = round((time.monotonic() - started) * 1e3, 1)
    emit("direct", ok=True, peer=str(peer), addr=str(direct.remote_addr), ms=waited)


async def main(settings: dict[str, Any]) -> None:
    node = await Node.start(Identity.generate(), [settings["listen"]], _config(settings))
    server = TaskServer(node, {"default": EchoHandler()})
    server.install()

    def connection_event(event: ConnectionEvent) -> None:
        if event.kind in ("connected", "disconnected"):
            limited = "/p2p-circuit" in str(event.addr)
            emit(event.kind, peer=str(event.peer_id), addr=str(event.addr), limited=limited)

    node.on_event(connection_event)
    node.on_addresses_changed(
        lambda addrs: emit(
            "addresses",
            addrs=[str(a) for a in addrs],
            reachability=node.reachability,
            relays=sorted(str(p) for p in node.relay_client.reservations),
        )
    )
    node.identify_service.subscribe(
        lambda peer, info: emit(
            "identified",
            peer=str(peer),
            relayed=any(a.is_circuit for a in info.listen_addrs),
        )
    )
    if node.nat.monitor is not None:
        node.nat.monitor.on_change(lambda r: emit("reachability", value=str(r)))
    emit("listening", peer_id=str(node.peer_id), addrs=[str(a) for a in node.listen_addrs])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pending: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            command = json.loads(line)
            handler = {"task": _task, "wait_direct": _wait_direct}[command["cmd"]]
            task = asyncio.ensure_future(handler(node, command))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        for task in pending:
            task.cancel()
        await node.stop()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
