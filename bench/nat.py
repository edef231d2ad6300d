"""NAT traversal figures in the two-NAT namespace topology (p2pnode.demo.nat_topology).

    python -m bench.nat [--runs 20]

Each run builds a fresh topology (no NAT mapping left from the run before) and starts
the four nodes of :func:`p2pnode.demo.nat.nat_peers`. Two kinds of runs alternate:

- *punch* runs (A with hole punching, the default): time from A's start to a confirmed
  relay reservation; B's first task to A (DHT lookup, relayed dial, task); time from B's
  relayed connection to its direct one (DCUtR through both NATs); whether it punched;
- *relay* runs (A without hole punching, a relay allowing 64 MiB per direction):
  the relayed 64 B task round trip (median of 10 on one connection), and the relay's
  CPU time per relayed MB for an 8 MiB echo task (16 MiB relayed).

Needs root, iproute2 and nftables. Prints medians with min-max, and JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from p2pnode.demo.nat import NatPeer, cpu_seconds, nat_peers
from p2pnode.demo.nat_topology import nat_topology, nftables_unavailable
from p2pnode.demo.netns import namespaces_unavailable

MB = 1_000_000


def _relay_slot(a: NatPeer, relay: NatPeer, boot: NatPeer) -> dict[str, Any]:
    slot = a.process.event("addresses", timeout=30, relays=[relay.peer_id])
    for public in (relay, boot):  # they hear of the slot by identify push
        public.process.event("identified", timeout=10, peer=a.peer_id, relayed=True)
    return slot


def punch_run() -> dict[str, Any]:
    with nat_topology() as topology, nat_peers(topology) as peers:
        a, b, relay = peers["a"], peers["b"], peers["relay"]
        slot = _relay_slot(a, relay, peers["bootstrap"])
        first = b.ask("task", cmd="task", peer=a.peer_id, size=64)
        direct = b.ask("direct", wait=35, cmd="wait_direct", peer=a.peer_id, timeout=30)
        result = {
            "reservation_ms": 1e3 * (slot["t"] - a.started),
            "first_task_ms": first["ms"] if first["ok"] else None,
            "punched": direct["ok"],
        }
        to_a = [e for e in b.process.seen if e["event"] == "connected" and e["peer"] == a.peer_id]
        relayed = [e["t"] for e in to_a if e["limited"]]
        joined = [e["t"] for e in to_a if not e["limited"]]
        if direct["ok"] and relayed and joined:
            result["relayed_to_direct_ms"] = 1e3 * (joined[0] - relayed[0])
        return result


def relay_run() -> dict[str, Any]:
    settings = {"relay_limit_data": 64 << 20}
    with (
        nat_topology() as topology,
        nat_peers(topology, a_settings={"hole_punching": False}, relay_settings=settings) as peers,
    ):
        a, b, relay = peers["a"], peers["b"], peers["relay"]
        _relay_slot(a, relay, peers["bootstrap"])
        b.ask("task", cmd="task", peer=a.peer_id, size=64)
        round_trips = []
        for _ in range(10):
            task = b.ask("task", cmd="task", peer=a.peer_id, size=64)
            assert task["ok"] and task["limited"] == [True], task
            round_trips.append(task["ms"])
        before = cpu_seconds(relay.process)
        bulk = b.ask("task", wait=60, cmd="task", peer=a.peer_id, size=8 << 20, timeout=50)
        assert bulk["ok"], bulk
        spent = cpu_seconds(relay.process) - before
        return {
            "relayed_rtt_ms": statistics.median(round_trips),
            "relay_cpu_ms_per_mb": 1e3 * spent / (2 * (8 << 20) / MB),
        }


def _summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):8.1f}  ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each kind")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reason = namespaces_unavailable() or nftables_unavailable()
    if reason is not None:
        raise SystemExit(f"bench.nat needs network namespaces and nftables: {reason}")
    punches, relays = [], []
    for _ in range(args.runs):
        punches.append(punch_run())
        relays.append(relay_run())

    def values(runs: list[dict[str, Any]], key: str) -> list[float]:
        return [run[key] for run in runs if run.get(key) is not None]

    figures = {
        "runs": args.runs,
        "punched": sum(run["punched"] for run in punches),
        "reservation_ms": values(punches, "reservation_ms"),
        "first_task_ms": values(punches, "first_task_ms"),
        "relayed_to_direct_ms": values(punches, "relayed_to_direct_ms"),
        "relayed_rtt_ms": values(relays, "relayed_rtt_ms"),
        "relay_cpu_ms_per_mb": values(relays, "relay_cpu_ms_per_mb"),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"runs of each kind: {args.runs}; median (min-max)")
    print(f"start to confirmed relay reservation, ms   {_summary(figures['reservation_ms'])}")
    print(f"first task B->A via relay (lookup+dial), ms {_summary(figures['first_task_ms'])}")
    print(f"relayed 64 B task round trip, ms           {_summary(figures['relayed_rtt_ms'])}")
    print(f"relayed -> direct connection (DCUtR), ms   {_summary(figures['relayed_to_direct_ms'])}")
    print(f"hole punch success, p2pnode <-> p2pnode     {figures['punched']}/{args.runs}")
    print(f"relay CPU per relayed MB, ms               {_summary(figures['relay_cpu_ms_per_mb'])}")


if __name__ == "__main__":
    main()
