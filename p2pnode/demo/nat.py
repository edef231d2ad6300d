"""``make demo-nat``: two agents behind two NATs find each other, talk through a relay,
then punch a hole and talk directly, on one machine (network namespaces + nftables).

Also the runner the NAT tests and ``bench/nat.py`` use: :func:`nat_peers` starts a
bootstrap (DHT) node and a relay on the public segment and a node behind each NAT, each
a :mod:`p2pnode.demo.nat_peer` process driven by JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from p2pnode.demo.nat_topology import NatTopology, nat_topology, nftables_unavailable
from p2pnode.demo.netns import Process, namespaces_unavailable

PORT = 4001


@dataclass
class NatPeer:
    """One node of the topology: its process, PeerId and IP."""

    process: Process
    peer_id: str
    ip: str
    started: float  # its clock (CLOCK_MONOTONIC, shared by the namespaces) at listening

    @property
    def addr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{PORT}/p2p/{self.peer_id}"

    def send(self, **command: Any) -> None:
        stdin = self.process.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()

    def ask(self, reply: str, wait: float = 30.0, **command: Any) -> dict[str, Any]:
        """Send ``command`` and return the next ``reply`` event (within ``wait`` s)."""
        self.send(**command)
        return self.process.event(reply, timeout=wait)


@contextmanager
def nat_peers(
    topology: NatTopology,
    *,
    bootstrap_relays: bool = False,
    a_settings: dict[str, Any] | None = None,
    relay_settings: dict[str, Any] | None = None,
) -> Iterator[dict[str, NatPeer]]:
    """``bootstrap`` and ``relay`` (public), ``a`` and ``b`` (behind their NATs), stopped
    (by PID) afterwards. ``bootstrap_relays``: the bootstrap node relays too."""
    started: dict[str, NatPeer] = {}
    with ExitStack() as stack:

        def start(name: str, **settings: Any) -> NatPeer:
            host = getattr(topology, name)
            config = {"listen": f"/ip4/{host.ip}/tcp/{PORT}", **settings}
            argv = [sys.executable, "-m", "p2pnode.demo.nat_peer", json.dumps(config)]
            process = Process(host.argv(argv), None)
            stack.callback(process.stop)
            hello = process.event("listening", timeout=20)
            started[name] = NatPeer(process, hello["peer_id"], host.ip, hello["t"])
            return started[name]

        boot = start("bootstrap", dht_server=True, relay_service=bootstrap_relays)
        relay = start(
            "relay",
            relay_service=True,
            dht_server=True,
            bootstrap=[boot.addr],
            **(relay_settings or {}),
        )
        start("a", bootstrap=[boot.addr, relay.addr], **(a_settings or {}))
        start("b", bootstrap=[boot.addr, relay.addr])
        yield started


def cpu_seconds(process: Process) -> float:
    """User + system CPU time the process used so far."""
    with open(f"/proc/{process.proc.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    reason = namespaces_unavailable() or nftables_unavailable()
    if reason is not None:
        raise SystemExit(f"demo-nat needs network namespaces and nftables: {reason}")
    with nat_topology() as topology, nat_peers(topology) as peers:
        a, b, relay = peers["a"], peers["b"], peers["relay"]
        print(f"public:  bootstrap {peers['bootstrap'].addr}\n         relay     {relay.addr}")
        print(f"NAT 1 ({topology.nat1.public_ip}):  A {a.peer_id} at {a.ip}")
        print(f"NAT 2 ({topology.nat2.public_ip}):  B {b.peer_id} at {b.ip}")
        private = a.process.event("reachability", value="private", timeout=30)
        print(f"A learns it is private (AutoNAT)        {1e3 * (private['t'] - a.started):7.0f} ms")
        slot = a.process.event("addresses", timeout=30, relays=[relay.peer_id])
        print(f"A holds a relay slot, advertises        {1e3 * (slot['t'] - a.started):7.0f} ms")
        for addr in slot["addrs"]:
            if "p2p-circuit" in addr:
                print(f"    {addr}")
        for public in (relay, peers["bootstrap"]):  # they hear of the slot by identify push
            public.process.event("identified", timeout=10, peer=a.peer_id, relayed=True)
        task = b.ask("task", cmd="task", peer=a.peer_id, size=64)
        if not task["ok"]:
            raise SystemExit(f"demo-nat: the relayed task failed: {task.get('error')}")
        print(f"B finds A in the DHT, task via relay    {task['ms']:7.0f} ms  ok={task['ok']}")
        direct = b.ask("direct", wait=35, cmd="wait_direct", peer=a.peer_id, timeout=30)
        if not direct["ok"]:
            raise SystemExit("demo-nat: no direct connection: the hole punch failed")
        print(f"hole punched, B-A direct (DCUtR)       +{direct['ms']:7.0f} ms")
        print(f"    {direct['addr']}")
        big = b.ask("task", wait=70, cmd="task", peer=a.peer_id, size=32 << 20, timeout=60)
        if not big["ok"]:
            raise SystemExit(f"demo-nat: the 32 MiB task failed: {big.get('error')}")
        rate = 2 * 32 / (big["ms"] / 1e3)
        print(f"32 MiB task, direct through both NATs   {big['ms']:7.0f} ms  ({rate:.0f} MiB/s)")


if __name__ == "__main__":
    main()
