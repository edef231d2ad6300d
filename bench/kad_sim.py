"""The DHT's routing table and lookup engine in a simulated network, in virtual time.

Every simulated node has a real :class:`RoutingTable` and answers FIND_NODE from it;
lookups are real :class:`Lookup` state machines driven by an event queue with seeded
lognormal per-message latency (median 40 ms). Nothing sleeps and nothing touches a
socket, so 10,000 nodes run in seconds and the figures are deterministic per seed.

Tables are filled by the ideal rule: bucket ``i`` of a node gets up to ``k`` peers drawn
at random from all nodes sharing exactly ``i`` leading key bits with it (what a long-
running node's table converges to). "Gone" nodes stay in others' tables but never
answer: requests to them time out (``request_timeout``).

    python -m bench.kad_sim [--nodes 10000] [--lookups 1000] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass

from p2pnode.wire.identity import PeerId
from p2pnode.wire.kad.keys import KEY_BITS, kad_key_for_peer
from p2pnode.wire.kad.lookup import Lookup
from p2pnode.wire.kad.messages import MessageType, PeerInfo
from p2pnode.wire.kad.table import RoutingTable

K = 20
ALPHA = 3
REQUEST_TIMEOUT = 1.0  # virtual seconds before a request to a gone node fails


def synthetic_peer_id(rng: random.Random) -> PeerId:
    """A PeerId of the sha2-256 form (its multihash digest is random): cheap to make."""
    return PeerId.from_bytes(b"\x12\x20" + rng.randbytes(32))


@dataclass
class Network:
    peers: list[PeerId]
    tables: dict[PeerId, RoutingTable]
    gone: set[PeerId]


def build_network(n: int, rng: random.Random, k: int = K) -> Network:
    """``n`` nodes with ideal routing tables (see the module docstring)."""
    peers = [synthetic_peer_id(rng) for _ in range(n)]
    keyed = sorted((int(kad_key_for_peer(p)), p) for p in peers)
    keys = [key for key, _ in keyed]
    tables: dict[PeerId, RoutingTable] = {}
    for key, peer in keyed:
        table = RoutingTable(peer, k=k)
        for cpl in range(KEY_BITS):
            # nodes sharing exactly cpl bits: our first cpl bits, then the other bit
            shift = KEY_BITS - cpl - 1
            prefix = ((key >> (shift + 1)) << 1) | (((key >> shift) & 1) ^ 1)
            low, high = prefix << shift, (prefix + 1) << shift
            start, end = bisect.bisect_left(keys, low), bisect.bisect_left(keys, high)
            if end - start == 0 and cpl > 2 * math.log2(max(n, 2)):
                break
            members = range(start, end)
            for index in rng.sample(members, min(k, len(members))):
                table.add(keyed[index][1], 0.0)
        tables[peer] = table
    return Network(peers, tables, set())


@dataclass
class Outcome:
    found: bool
    hops: int
    messages: int
    latency: float


def run_lookup(net: Network, asker: PeerId, target: PeerId, rng: random.Random) -> Outcome:
    """One FIND_NODE lookup from ``asker`` for ``target``, in virtual time."""
    table = net.tables[asker]
    target_key = kad_key_for_peer(target)
    lookup = Lookup(
        target.to_bytes(),
        table.closest(target_key, K),
        local_id=asker,
        kind=MessageType.FIND_NODE,
        k=K,
        alpha=ALPHA,
        request_timeout=REQUEST_TIMEOUT,
    )
    now = 0.0
    events: list[tuple[float, int, PeerId, bool]] = []
    serial = 0
    while not lookup.done:
        for peer in lookup.next_requests(now):
            serial += 1
            if peer in net.gone:
                heapq.heappush(events, (now + REQUEST_TIMEOUT, serial, peer, False))
            else:
                delay = rng.lognormvariate(math.log(0.040), 0.5)
                heapq.heappush(events, (now + delay, serial, peer, True))
        if not events:
            break
        now, _, peer, answered = heapq.heappop(events)
        if answered:
            closer = [PeerInfo(p) for p in net.tables[peer].closest(target_key, K)]
            lookup.on_response(peer, closer, now=now)
        else:
            lookup.on_failure(peer, now)
    result = lookup.result()
    found = bool(result.closest) and result.closest[0].peer_id == target
    return Outcome(found or result.target is not None, result.hops, result.messages, now)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate(n: int, lookups: int, gone_fraction: float, seed: int) -> dict[str, float]:
    """Figures of ``lookups`` random lookups in an ``n``-node network."""
    rng = random.Random(seed)
    net = build_network(n, rng)
    net.gone = set(rng.sample(net.peers, int(gone_fraction * n)))
    alive = [p for p in net.peers if p not in net.gone]
    outcomes = []
    for _ in range(lookups):
        asker, target = rng.sample(alive, 2)
        outcomes.append(run_lookup(net, asker, target, rng))
    hops = [float(o.hops) for o in outcomes]
    messages = [float(o.messages) for o in outcomes]
    latency = [o.latency * 1000 for o in outcomes]
    return {
        "nodes": n,
        "lookups": lookups,
        "gone": gone_fraction,
        "success": sum(o.found for o in outcomes) / lookups,
        "hops_p50": statistics.median(hops),
        "hops_p99": percentile(hops, 0.99),
        "messages_p50": statistics.median(messages),
        "messages_p99": percentile(messages, 0.99),
        "latency_ms_p50": round(statistics.median(latency), 1),
        "latency_ms_p99": round(percentile(latency, 0.99), 1),
        "log2_n": round(math.log2(n), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [simulate(args.nodes, args.lookups, gone, args.seed) for gone in (0.0, 0.2)]
    elapsed = time.perf_counter() - started
    if args.json:
        for row in rows:
            print(json.dumps({**row, "elapsed_s": round(elapsed, 1)}))
        return
    print(f"Kademlia lookups in a simulated network (k={K}, alpha={ALPHA}, seed {args.seed})")
    print("gone  success  hops p50/p99  messages p50/p99  latency ms p50/p99")
    for r in rows:
        print(
            f"{r['gone']:>4.0%}  {r['success']:>7.1%}  {r['hops_p50']:>4g} / {r['hops_p99']:<4g}"
            f"   {r['messages_p50']:>6g} / {r['messages_p99']:<6g}"
            f"   {r['latency_ms_p50']:>6} / {r['latency_ms_p99']}"
        )
    print(
        f"Kademlia's bound: about log2(N) = {rows[0]['log2_n']} steps of one bit each "
        f"(b = 1); with k = {K} buckets hold many peers, so far fewer hops are needed "
        f"(~log2(N)/log2(k) = {rows[0]['log2_n'] / math.log2(K):.1f} in an ideal table)."
    )
    print(f"({elapsed:.1f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
