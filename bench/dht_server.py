"""What one p2pnode DHT server costs: memory for provider records, CPU per request.

    python -m bench.dht_server [--records 10000] [--clients 100] [--requests 3000] [--json]

The server is a child process of its own (running :func:`serve`: a p2pnode node in
DHT server mode on 127.0.0.1, no background upkeep), so its RSS (VmRSS in
/proc/PID/status) and CPU time (utime + stime in /proc/PID/stat, 10 ms ticks) are its
own. This process starts ``--clients`` p2pnode DHT servers on loopback, each with its
own identity, and connects each to the server, which identifies them and puts them in
its routing table (so its FIND_NODE answers carry 20 peers, as on a real network).
Then:

1. fill: each client announces ``records / clients`` keys of its own with ADD_PROVIDER
   (random sha2-256 multihash keys, one stream per record, as go and js send them).
   The store's caps (p2pnode/wire/kad/store.py): 1,000 records per providing peer,
   50,000 in all, 64 providers per key; 10,000 records from 100 clients fit, so the
   caps are not raised. The server then reports its store's size (it must equal
   ``--records``, none refused) and GET_PROVIDERS of sampled keys names their provider;
2. RSS of the server before and after the fill (and bytes per record);
3. CPU per answered request: ``--requests`` FIND_NODE (random keys) and as many
   GET_PROVIDERS (stored keys) with a new stream per request (what js and p2pnode
   send; 16 in flight), then the same on four reused streams (what go sends; one
   request at a time on each); the server's CPU time over the run divided by the
   number of answers.

The server's event loop is asyncio's, or uvloop's with P2PNODE_UVLOOP=1 (as for
``p2pnode serve``). Figures are machine-dependent: this VM's speed varies about 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from p2pnode import Identity, Multiaddr, Node, NodeConfig
from p2pnode.net.limits import Limits
from p2pnode.net.stream import Stream
from p2pnode.protocols.kad.dht import DEFAULT_PROTOCOL, DhtConfig, DhtMode
from p2pnode.protocols.kad.rpc import read_message, send_request
from p2pnode.wire.kad import Message, MessageType, PeerInfo
from p2pnode.wire.kad.messages import MessageReader, fit_for_sending, frame_message

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IN_FLIGHT = 16
REUSED_STREAMS = 4
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
# every client connects from 127.0.0.1: the default 64 connections per IP would refuse
# the 65th, so the server allows more (a public server sees one peer per address)
SERVER_LIMITS = Limits(max_inbound_connections_per_ip=4096, max_inbound_handshakes_per_ip=64)


# -- the server process ------------------------------------------------------------------


async def serve() -> None:
    config = NodeConfig(
        keepalive_interval=None,
        limits=SERVER_LIMITS,
        dht=DhtConfig(mode=DhtMode.SERVER, maintain=False),
    )
    node = await Node.start(Identity.generate(), [LOOPBACK], config)
    dht = node.dht
    assert dht is not None
    addr = node.listen_addrs[0].with_peer_id(node.peer_id)
    print(json.dumps({"event": "listening", "addr": str(addr), "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            stats = {
                "event": "stats",
                "records": len(dht.providers),
                "refused": dht.providers.refused,
                "table": len(dht.table),
                "connections": len(node.connections()),
            }
            print(json.dumps(stats), flush=True)
    await node.stop()


# -- measuring it from outside -----------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.proc = proc
        self.addr = Multiaddr.from_string(hello["addr"])
        self.pid = int(hello["pid"])

    async def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        async with asyncio.timeout(10):
            return dict(json.loads(await self.proc.stdout.readline()))


@contextlib.asynccontextmanager
async def server_process() -> AsyncIterator[Server]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from bench.dht_server import serve; "
        "from p2pnode.cli.output import event_loop_runner; event_loop_runner()(serve())",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            hello = json.loads(await proc.stdout.readline())
        yield Server(proc, hello)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def limited(jobs: list[Callable[[], Awaitable[None]]], at_once: int) -> None:
    """Run the jobs, ``at_once`` at a time."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(at_once)))


def random_key(rng: random.Random) -> bytes:
    return b"\x12\x20" + rng.randbytes(32)


async def ask(client: Node, server: Server, request: Message) -> Message | None:
    conn = client.connections(server.addr.peer_id)[0]
    stream = await conn.new_stream([DEFAULT_PROTOCOL])
    return await send_request(
        stream, request, expect_answer=request.type is not MessageType.ADD_PROVIDER
    )


async def ask_on(stream: Stream, request: Message) -> Message:
    await stream.write(frame_message(fit_for_sending(request)))
    answer = await read_message(stream, MessageReader())
    if answer is None:
        raise RuntimeError("the server closed a reused stream")
    return answer


async def answer_all(
    server: Server, clients: list[Node], requests: list[tuple[Node, Message]], style: str
) -> dict[str, Any]:
    """Send the requests (a stream each, or a few reused streams); the server's CPU per answer."""
    answers = {"count": 0, "closer": 0, "providers": 0}

    def tally(answer: Message | None, request: Message) -> None:
        assert answer is not None and answer.type is request.type
        answers["count"] += 1
        answers["closer"] += len(answer.closer_peers)
        answers["providers"] += len(answer.provider_peers)

    def one(client: Node, request: Message) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            tally(await ask(client, server, request), request)

        return job

    async def lane(index: int) -> None:  # one client sends its share on one stream in turn
        conn = clients[index].connections(server.addr.peer_id)[0]
        mine = requests[index::REUSED_STREAMS]
        for start in range(0, len(mine), 1000):  # the server answers 1,024 per stream
            stream = await conn.new_stream([DEFAULT_PROTOCOL])
            for _, request in mine[start : start + 1000]:
                tally(await ask_on(stream, request), request)
            await stream.close()

    cpu_before, started = cpu_seconds(server.pid), time.perf_counter()
    if style == "stream_per_request":
        await limited([one(c, r) for c, r in requests], IN_FLIGHT)
    else:
        await asyncio.gather(*(lane(i) for i in range(REUSED_STREAMS)))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(server.pid) - cpu_before
    count = answers["count"]
    return {
        "requests": count,
        "server_cpu_us_per_request": round(cpu / count * 1e6, 1),
        "requests_per_s": round(count / seconds),
        "closer_peers_per_answer": round(answers["closer"] / count, 1),
        "providers_per_answer": round(answers["providers"] / count, 2),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    per_client = args.records // args.clients
    if per_client * args.clients != args.records or per_client > 1000:
        raise SystemExit("--records must be a multiple of --clients, at most 1,000 per client")
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(server_process())
        rss_started = rss_kib(server.pid)
        clients: list[Node] = []
        for _ in range(args.clients):
            config = NodeConfig(
                keepalive_interval=None, dht=DhtConfig(mode=DhtMode.SERVER, maintain=False)
            )
            node = await Node.start(Identity.generate(), [LOOPBACK], config)
            stack.push_async_callback(node.stop)
            await node.connect(server.addr)
            clients.append(node)
        async with asyncio.timeout(30):  # the server identifies each and fills its table
            while (stats := await server.stats())["table"] < min(20, args.clients):
                await asyncio.sleep(0.1)  # polling the server's state, not timing
        await asyncio.sleep(1)  # let identify settle everywhere before the baseline
        rss_connected = rss_kib(server.pid)
        keys = {c: [random_key(rng) for _ in range(per_client)] for c in clients}

        def provide(client: Node, key: bytes) -> Callable[[], Awaitable[None]]:
            me = PeerInfo(client.peer_id, tuple(client.listen_addrs))
            request = Message(MessageType.ADD_PROVIDER, key=key, provider_peers=(me,))

            async def job() -> None:
                await ask(client, server, request)

            return job

        started = time.perf_counter()
        cpu_before = cpu_seconds(server.pid)
        await limited([provide(c, k) for c in clients for k in keys[c]], IN_FLIGHT)
        # ADD_PROVIDER has no answer: wait until the server has stored them all
        async with asyncio.timeout(60):
            while (stats := await server.stats())["records"] + stats["refused"] < args.records:
                await asyncio.sleep(0.05)
        fill_seconds = time.perf_counter() - started
        fill_cpu = cpu_seconds(server.pid) - cpu_before
        assert stats["records"] == args.records and stats["refused"] == 0, stats
        await asyncio.sleep(0.5)
        rss_filled = rss_kib(server.pid)
        # spot check: GET_PROVIDERS of sampled keys names their provider
        for client in rng.sample(clients, 10):
            key = rng.choice(keys[client])
            answer = await ask(client, server, Message(MessageType.GET_PROVIDERS, key=key))
            assert answer is not None
            assert [p.peer_id for p in answer.provider_peers] == [client.peer_id], answer

        all_keys = [(c, k) for c in clients for k in keys[c]]
        figures: dict[str, Any] = {}
        for kind in (MessageType.FIND_NODE, MessageType.GET_PROVIDERS):
            for style in ("stream_per_request", "reused_streams"):
                requests = []
                for _ in range(args.requests):
                    if kind is MessageType.FIND_NODE:
                        client, key = rng.choice(clients), random_key(rng)
                    else:
                        client, key = rng.choice(all_keys)
                    requests.append((client, Message(kind, key=key)))
                figures[f"{kind.name}_{style}"] = await answer_all(server, clients, requests, style)
        return {
            "records": args.records,
            "clients": args.clients,
            "routing_table": (await server.stats())["table"],
            "rss_kib": {
                "started": rss_started,
                "connected": rss_connected,
                "filled": rss_filled,
            },
            "rss_for_records_kib": rss_filled - rss_connected,
            "bytes_per_record": round((rss_filled - rss_connected) * 1024 / args.records),
            "fill": {
                "seconds": round(fill_seconds, 2),
                "server_cpu_us_per_record": round(fill_cpu / args.records * 1e6, 1),
            },
            "requests": figures,
            "event_loop": "uvloop" if os.environ.get("P2PNODE_UVLOOP") == "1" else "asyncio",
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000, help="of each kind and style")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(result))
        return
    rss = result["rss_kib"]
    print(
        f"DHT server, {result['records']:,} provider records from {result['clients']} peers "
        f"(routing table {result['routing_table']} peers; {result['event_loop']})"
    )
    print(
        f"  RSS: {rss['started'] / 1024:.1f} MiB started, {rss['connected'] / 1024:.1f} MiB "
        f"with {result['clients']} connections, {rss['filled'] / 1024:.1f} MiB filled: "
        f"{result['rss_for_records_kib'] / 1024:.1f} MiB for the records, "
        f"{result['bytes_per_record']} bytes each"
    )
    fill = result["fill"]
    print(
        f"  fill: {fill['seconds']} s, server CPU {fill['server_cpu_us_per_record']} us "
        "per ADD_PROVIDER"
    )
    for name, figure in result["requests"].items():
        print(
            f"  {name}: {figure['server_cpu_us_per_request']} us server CPU per request, "
            f"{figure['requests_per_s']} requests/s, {figure['requests']} requests, "
            f"{figure['closer_peers_per_answer']} closer peers and "
            f"{figure['providers_per_answer']} providers per answer"
        )


if __name__ == "__main__":
    main()
