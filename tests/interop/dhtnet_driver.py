"""Several p2pnode DHT servers in one process (one event loop), driven by JSON lines on stdin.

    ip netns exec NS python -m tests.interop.dhtnet_driver

tests/interop/test_dht_network.py runs one of these per network namespace ("host"), so
that a host's p2pnode nodes cost one interpreter. Every stdin line is a command,
``{"id": N, "cmd": NAME, ...}``; each gets one ``{"event": "result", "id": N, "ok": true,
...}`` (or ``"ok": false, "error": ...``) line on stdout. Commands run concurrently; the
ones naming a node run one at a time for that node (so ``dht.last_lookup`` is the
command's own lookup). Nodes serve the DHT, have no mDNS and no background upkeep: the
test bootstraps them. Stdin closing stops every node and the process.

    start {name, key_file, listen}        -> {peer_id, addrs}
    stop {name}                           -> {}   (graceful: GoAway on every connection)
    bootstrap {name, seeds}               -> {table}
    table {name}                          -> {peers}
    find {name, targets, timeout}         -> {results: [{peer_id, addrs, hung_up, hops,
                                              messages, ms, error}]}
        each target: our connections to it are closed first, so find_peer runs a lookup
    closest {name, keys, timeout}         -> {results: [{key, peers, hops, messages, ms}]}
    provide {name, key}                   -> {took}
    find_providers {name, key, limit, timeout}
                                          -> {providers: [{peer_id, addrs}], hops, messages, ms}
    addrs {name, peer_id}                 -> {addrs, connected, in_table}  (its peer store)
    ping {name, peer_id}                  -> {rtt_ms}   (connect by PeerId: peer store, then DHT)
Keys are hex.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from p2pnode import Identity, Multiaddr, Node, NodeConfig, PeerId
from p2pnode.protocols.kad.dht import DhtConfig, DhtMode, KadDHT


class Driver:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def out(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def dht(self, name: str) -> KadDHT:
        dht = self.nodes[name].dht
        assert dht is not None
        return dht

    async def run(self, request: dict[str, Any]) -> None:
        try:
            handler = getattr(self, "cmd_" + request["cmd"])
            name = request.get("name")
            if name is not None and request["cmd"] != "start":
                async with self.locks[name]:
                    answer = await handler(**request)
            else:
                answer = await handler(**request)
            self.out({"event": "result", "id": request["id"], "ok": True, **answer})
        except Exception as exc:  # reported to the test, which decides
            error = f"{type(exc).__name__}: {exc}"
            self.out({"event": "result", "id": request.get("id"), "ok": False, "error": error})

    async def cmd_start(self, name: str, key_file: str, listen: str, **_: Any) -> dict[str, Any]:
        config = DhtConfig(mode=DhtMode.SERVER, maintain=False)
        identity = Identity.load(Path(key_file))
        node = await Node.start(identity, [listen], NodeConfig(mdns=False, dht=config))
        self.nodes[name] = node
        self.locks[name] = asyncio.Lock()
        return {"peer_id": str(node.peer_id), "addrs": [str(a) for a in node.listen_addrs]}

    async def cmd_stop(self, name: str, **_: Any) -> dict[str, Any]:
        node = self.nodes.pop(name)
        await node.stop()
        return {}

    async def cmd_bootstrap(self, name: str, seeds: list[str], **_: Any) -> dict[str, Any]:
        dht = self.dht(name)
        own = str(self.nodes[name].peer_id)
        dht.config.bootstrap = [Multiaddr.from_string(s) for s in seeds if own not in s]
        return {"table": await dht.bootstrap()}

    async def cmd_table(self, name: str, **_: Any) -> dict[str, Any]:
        return {"peers": [str(p) for p in self.dht(name).table.peers()]}

    async def cmd_find(
        self, name: str, targets: list[str], timeout: float = 20, **_: Any
    ) -> dict[str, Any]:
        node, dht = self.nodes[name], self.dht(name)
        results = []
        for text in targets:
            target = PeerId.from_string(text)
            conns = node.connections(target)
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
            started = time.perf_counter()
            entry: dict[str, Any] = {"peer_id": text, "hung_up": len(conns), "error": None}
            try:
                addrs = await dht.find_peer(target, timeout)
            except Exception as exc:  # a failed find is a result, not a crash
                addrs = []
                entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["ms"] = (time.perf_counter() - started) * 1000
            entry["addrs"] = [str(a) for a in addrs]
            stats = dht.last_lookup
            entry["hops"], entry["messages"] = stats.hops, stats.messages
            results.append(entry)
        return {"results": results}

    async def cmd_closest(
        self, name: str, keys: list[str], timeout: float = 20, **_: Any
    ) -> dict[str, Any]:
        dht = self.dht(name)
        results = []
        for key in keys:
            started = time.perf_counter()
            peers = await dht.closest_peers(bytes.fromhex(key), timeout)
            ms = (time.perf_counter() - started) * 1000
            stats = dht.last_lookup
            results.append(
                {
                    "key": key,
                    "peers": [str(p) for p in peers],
                    "hops": stats.hops,
                    "messages": stats.messages,
                    "ms": ms,
                }
            )
        return {"results": results}

    async def cmd_provide(self, name: str, key: str, **_: Any) -> dict[str, Any]:
        return {"took": await self.dht(name).provide(bytes.fromhex(key))}

    async def cmd_find_providers(
        self, name: str, key: str, limit: int = 20, timeout: float = 20, **_: Any
    ) -> dict[str, Any]:
        dht = self.dht(name)
        before = dht.last_lookup
        started = time.perf_counter()
        providers = await dht.find_providers(bytes.fromhex(key), limit=limit, timeout=timeout)
        ms = (time.perf_counter() - started) * 1000
        stats = dht.last_lookup
        return {
            "providers": [
                {"peer_id": str(p.peer_id), "addrs": [str(a) for a in p.addrs]} for p in providers
            ],
            "lookup": stats is not before,
            "hops": stats.hops,
            "messages": stats.messages,
            "ms": ms,
        }

    async def cmd_addrs(self, name: str, peer_id: str, **_: Any) -> dict[str, Any]:
        node, peer = self.nodes[name], PeerId.from_string(peer_id)
        return {
            "addrs": [str(a) for a in node.peer_store.addrs(peer)],
            "connected": bool(node.connections(peer)),
            "in_table": peer in self.dht(name).table,
        }

    async def cmd_ping(self, name: str, peer_id: str, **_: Any) -> dict[str, Any]:
        rtt = await self.nodes[name].ping(PeerId.from_string(peer_id))
        return {"rtt_ms": rtt[0] * 1000}

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self.out({"event": "ready"})
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                task = asyncio.create_task(self.run(json.loads(line)))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for node in list(self.nodes.values()):
                with contextlib.suppress(Exception):
                    await node.stop()


if __name__ == "__main__":
    asyncio.run(Driver().main())
