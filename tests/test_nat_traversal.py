"""NAT traversal end to end, in the two-NAT namespace topology (p2pnode.demo.nat_topology).

Public segment: a bootstrap (DHT) node and a relay. A sits behind NAT 1, B behind NAT 2;
both routers masquerade and drop unsolicited inbound packets. Each node is a
``p2pnode.demo.nat_peer`` process (a Node with AutoNAT, relay client, DCUtR and an echo
task handler) answering JSON commands (see p2pnode.demo.nat).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from p2pnode.demo.nat import nat_peers

from .nat_topology import NatTopology, nat_topology, require_nat_topology

pytestmark = pytest.mark.netns


@pytest.fixture
def topology() -> Iterator[NatTopology]:
    require_nat_topology()
    with nat_topology() as built:
        yield built


def test_private_nodes_reach_each_other_through_a_relay_then_directly(
    topology: NatTopology,
) -> None:
    with nat_peers(topology) as nodes:
        a, b, relay = nodes["a"], nodes["b"], nodes["relay"]
        # (1) each private node learns "private", the public ones "public"
        for name in ("a", "b"):
            nodes[name].process.event("reachability", value="private", timeout=30)
        relay.process.event("reachability", value="public", timeout=30)
        # (2) A takes a slot on the relay by itself (private; the relay serves hop), and
        # B finds A by PeerId in the DHT and runs a task through the relay
        slot = a.process.event("addresses", timeout=30, relays=[relay.peer_id])
        circuit = f"{relay.addr}/p2p-circuit/p2p/{a.peer_id}"
        assert circuit in slot["addrs"], slot
        task = b.ask("task", cmd="task", peer=a.peer_id, size=1000)
        assert task["ok"], task
        # (3) A received a relayed connection: DCUtR makes a direct one through both NATs
        direct = b.ask("direct", wait=35, cmd="wait_direct", peer=a.peer_id, timeout=30)
        assert direct["ok"] and topology.nat1.public_ip in direct["addr"], direct
        big = b.ask("task", wait=70, cmd="task", peer=a.peer_id, size=32 << 20, timeout=60)
        assert big["ok"] and False in big["limited"], big  # (the relayed one retires idle)


def test_beyond_the_relay_limit_a_transfer_is_cut_and_explained(topology: NatTopology) -> None:
    settings = {"relay_limit_data": 64 * 1024}
    with nat_peers(topology, a_settings={"hole_punching": False}, relay_settings=settings) as nodes:
        a, b, relay = nodes["a"], nodes["b"], nodes["relay"]
        a.process.event("addresses", timeout=30, relays=[relay.peer_id])
        for public in (relay, nodes["bootstrap"]):  # told by identify push: B asks them
            public.process.event("identified", timeout=10, peer=a.peer_id, relayed=True)
        small = b.ask("task", cmd="task", peer=a.peer_id, size=1000)
        assert small["ok"] and small["limited"] == [True], small
        large = b.ask("task", cmd="task", peer=a.peer_id, size=1 << 20)
        assert not large["ok"], large
        assert "64 KiB per direction" in large["error"], large


def test_when_its_relay_goes_away_a_node_is_reachable_through_another(
    topology: NatTopology,
) -> None:
    with nat_peers(topology, bootstrap_relays=True, a_settings={"hole_punching": False}) as nodes:
        a, b, relay, boot = nodes["a"], nodes["b"], nodes["relay"], nodes["bootstrap"]
        both = sorted([relay.peer_id, boot.peer_id])
        a.process.event("addresses", timeout=30, relays=both)
        relay.process.stop()
        left = a.process.event("addresses", timeout=30, relays=[boot.peer_id])
        assert not any(relay.peer_id in addr for addr in left["addrs"]), left
        boot.process.event("identified", timeout=10, peer=a.peer_id, relayed=True)
        task = b.ask("task", cmd="task", peer=a.peer_id, size=1000)
        assert task["ok"] and task["limited"] == [True], task


def test_make_demo_nat_runs_end_to_end() -> None:
    require_nat_topology()
    result = subprocess.run(
        [sys.executable, "-m", "p2pnode.demo.nat"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout
    assert "A learns it is private" in lines and "task via relay" in lines and "ok=True" in lines
    assert "hole punched" in lines and "32 MiB task, direct through both NATs" in lines
