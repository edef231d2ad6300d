"""mDNS between two "hosts" (private network namespaces joined by a veth pair).

Every test here creates its own namespaces (the `hosts` fixture): multicast never
reaches a real interface. Under P2PNODE_REQUIRE_NETNS=1 (CI) they fail rather than skip.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from p2pnode.demo.netns import Host

from .interop.jspeer import PEER_SCRIPT, require_js_peer
from .netns import Process, p2pnode, run_json

pytestmark = pytest.mark.netns


def serve(host: Host, env: dict[str, str], *args: str) -> tuple[Process, dict]:
    server = Process(p2pnode(host, "serve", "--ephemeral", "--json", *args), env)
    return server, server.event("listening")


def test_peers_json_says_when_nobody_answered(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    _, b = hosts
    result = subprocess.run(
        p2pnode(b, "peers", "--json", "--timeout", "0.3"), capture_output=True, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"event": "summary", "count": 0, "timeout_s": 0.3}
    ]
    assert result.stderr == b""


def test_serve_advertises_real_addresses_and_peers_finds_it(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    a, b = hosts
    server, listening = serve(a, cli_env)
    try:
        assert all(f"/ip4/{a.ip}/tcp/" in addr for addr in listening["addrs"]), listening
        found = run_json(p2pnode(b, "peers", "--json", "--timeout", "4"), cli_env)
        (peer,) = [p for p in found if p.get("peer_id") == listening["peer_id"]]
        assert found[-1] == {"event": "summary", "count": 1, "timeout_s": 4.0}
        assert any(addr.startswith(f"/ip4/{a.ip}/tcp/") for addr in peer["addrs"])
        assert not any("0.0.0.0" in addr for addr in peer["addrs"])
        assert "/p2pnode/task/1.0.0" in peer["protocols"]
        assert "/p2pnode/task/2.0.0" in peer["protocols"]
        assert peer["agent_version"].startswith("p2pnode/")
        assert set(peer["kinds"]) >= {"default", "echo"}  # from its agent card
    finally:
        assert server.stop() == 0


def test_send_task_by_peer_id_uses_mdns_then_the_cache(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    a, b = hosts
    server, listening = serve(a, cli_env, "--exec", "upper=tr a-z A-Z")
    try:
        peer = listening["peer_id"]
        argv = p2pnode(b, "send-task", peer, "hello", "--kind", "upper", "--json", "--ephemeral")
        (first,) = run_json(argv, cli_env)
        assert first["output"] == "HELLO"
        assert first["timings"]["resolved_by"] == "mdns"
        assert first["timings"]["discovery_ms"] < 5000
        (second,) = run_json(argv, cli_env)
        assert second["output"] == "HELLO"
        assert second["timings"]["resolved_by"] == "cache"
    finally:
        assert server.stop() == 0


def test_a_peer_that_stops_says_goodbye(hosts: tuple[Host, Host], cli_env: dict[str, str]) -> None:
    a, b = hosts
    watcher = Process(p2pnode(b, "peers", "--watch", "--json", "--timeout", "60"), cli_env)
    try:
        watcher.event("ready")
        server, listening = serve(a, cli_env)
        seen = watcher.event("discovered", peer_id=listening["peer_id"])
        assert any(addr.startswith(f"/ip4/{a.ip}/") for addr in seen["addrs"])
        assert server.stop() == 0
        watcher.event("expired", peer_id=listening["peer_id"], timeout=10)
    finally:
        watcher.stop()


def test_the_mdns_record_gains_the_relayed_address_when_a_slot_is_granted(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    a, b = hosts
    watcher = Process(p2pnode(b, "peers", "--watch", "--json", "--timeout", "60"), cli_env)
    relay, relay_listening = serve(a, cli_env, "--relay-service", "--no-mdns")
    try:
        watcher.event("ready")
        relay_addr = next(x for x in relay_listening["addrs"] if f"/ip4/{a.ip}/" in x)
        node, listening = serve(b, cli_env, "--relay", relay_addr)
        try:
            me = listening["peer_id"]
            first = watcher.event("discovered", peer_id=me)
            assert not any("p2p-circuit" in addr for addr in first["addrs"]), first
            slot = node.event("addresses")
            assert f"{relay_addr}/p2p-circuit/p2p/{me}" in slot["addrs"]
            update = watcher.event("discovered", peer_id=me)
            assert f"{relay_addr}/p2p-circuit" in update["addrs"], update
            assert any(addr.startswith(f"/ip4/{b.ip}/tcp/") for addr in update["addrs"])
        finally:
            assert node.stop() == 0
    finally:
        relay.stop()
        watcher.stop()


def flood(host: Host, count: int) -> None:
    """Send ``count`` malformed mDNS packets from inside ``host`` (bounded)."""
    script = (
        "import os, socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)\n"
        "txt = b'\\x00\\x00\\x84\\x00\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x00'\n"
        "txt += b'\\x05bogus\\x04_p2p\\x04_udp\\x05local\\x00'\n"
        "txt += b'\\x00\\x10\\x00\\x01\\x00\\x00\\x00\\x78'\n"
        "txt += b'\\x00\\x10\\x0fdnsaddr=garbage'\n"
        f"for i in range({count}):\n"
        "    s.sendto(os.urandom(i % 300) if i % 2 else txt, ('224.0.0.251', 5353))\n"
    )
    import subprocess

    subprocess.run(host.argv([sys.executable, "-c", script]), check=True, timeout=30)


def test_malformed_packets_are_ignored_and_discovery_keeps_working(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    a, b = hosts
    server, listening = serve(a, cli_env)
    try:
        flood(b, 2000)
        argv = p2pnode(b, "send-task", listening["peer_id"], "still here", "--json", "--ephemeral")
        (result,) = run_json([*argv, "--no-cache"], cli_env)
        assert result["output"] == "still here"
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


@pytest.fixture
def js_node() -> str:
    return require_js_peer()


def test_js_libp2p_and_p2pnode_find_each_other(
    hosts: tuple[Host, Host], cli_env: dict[str, str], js_node: str
) -> None:
    a, b = hosts
    js = Process(a.argv([js_node, str(PEER_SCRIPT), "listen", "--mdns"]), cli_env)
    try:
        js_peer = js.event("listening")["peer_id"]
        # p2pnode finds js-libp2p and runs a task on it, by PeerId alone.
        found = run_json(p2pnode(b, "peers", "--json", "--timeout", "4"), cli_env)
        (entry,) = [p for p in found if p.get("peer_id") == js_peer]
        assert any(addr.startswith(f"/ip4/{a.ip}/") for addr in entry["addrs"])
        assert entry["agent_version"].startswith("js-libp2p-interop")
        argv = p2pnode(b, "send-task", js_peer, "from p2pnode", "--kind", "upper", "--json")
        (result,) = run_json([*argv, "--ephemeral", "--no-cache"], cli_env)
        assert result["output"] == "FROM P2PNODE"
        ping_addr = next(a_ for a_ in entry["addrs"] if a_.startswith(f"/ip4/{a.ip}/"))
        pings = run_json(
            p2pnode(b, "ping", f"{ping_addr}/p2p/{js_peer}", "-c", "2", "--json"), cli_env
        )
        assert pings[-1]["event"] == "summary"
        # js-libp2p finds p2pnode.
        server, listening = serve(b, cli_env)
        try:
            seen = js.event("discovered", peer_id=listening["peer_id"], timeout=20)
            found_addr = next(x for x in seen["addrs"] if x.startswith(f"/ip4/{b.ip}/"))
            if "/p2p/" not in found_addr:
                found_addr += f"/p2p/{listening['peer_id']}"
            # ... and, at the address it found, pings p2pnode and runs a task on it.
            js_dial = [js_node, str(PEER_SCRIPT), "dial", found_addr]
            (pinged,) = run_json(a.argv([*js_dial, "ping", "--count", "2"]), cli_env)
            assert pinged["event"] == "ping" and len(pinged["rtts_ms"]) == 2
            (tasked,) = run_json(a.argv([*js_dial, "task", "--input", "from js"]), cli_env)
            assert tasked["response"]["output"] == "from js"
        finally:
            assert server.stop() == 0
    finally:
        js.stop()
