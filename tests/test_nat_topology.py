"""The NAT topology (tests/nat_topology.py) behaves like two home routers and the Internet.

Small Python scripts run inside the namespaces: outbound TCP works and is masqueraded
(keeping the source port), unsolicited inbound SYNs are dropped (a connect times out,
never refused), and TCP simultaneous open between the two LANs works through both NATs.
Under P2PNODE_REQUIRE_NETNS=1 (CI) they fail rather than skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from .nat_topology import (
    Host,
    NatTopology,
    Process,
    Router,
    nat_topology,
    require_nat_topology,
    running,
)

pytestmark = pytest.mark.netns

DROP_BOUND_S = 1.5  # how long a connect to a dropping router is given before it is a timeout

# Accept connections and echo the first bytes; one JSON line per connection.
ECHO_SERVER = r"""
import json, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, port))
srv.listen(16)
print(json.dumps({"event": "listening", "addr": srv.getsockname()}), flush=True)
while True:
    conn, peer = srv.accept()
    conn.settimeout(5)
    data = conn.recv(64)
    conn.sendall(data)
    conn.close()
    print(json.dumps({"event": "accepted", "peer": list(peer), "data": data.decode()}), flush=True)
"""

# Connect once (from a fixed source port if one is given) and say how it went.
CLIENT = r"""
import errno, json, socket, sys, time
src_port, ip, port, timeout = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", src_port))
s.settimeout(timeout)
start = time.monotonic()
out = {}
try:
    s.connect((ip, port))
    s.sendall(b"hello")
    out = {"result": "connected", "local": list(s.getsockname()), "echo": s.recv(64).decode()}
except socket.timeout:
    out = {"result": "timeout"}
except OSError as e:
    out = {"result": "error", "errno": errno.errorcode.get(e.errno, str(e.errno))}
out["elapsed_s"] = time.monotonic() - start
print(json.dumps(out), flush=True)
"""

# One side of a hole punch, as a libp2p node does it: a SO_REUSEPORT listener on PORT,
# and, at the start time read from stdin, one connect from PORT to the peer's public
# address. That connect's own SYN opens our router's mapping; a SYN of the peer that
# the peer's router dropped (no mapping there yet) is retransmitted by the kernel.
# No separate "primer" socket first: measured here, a primer poisons the mapping. With a
# full TTL the second primer reaches the first host's listener, which then holds the
# 4-tuple (the real connect gets EADDRNOTAVAIL); with TTL 2 the real SYN, carrying a
# new ISN, is out of conntrack's window for the primed entry, so it leaves
# untranslated and is dropped (0 of 30 rounds connected, against 30 of 30 without).
PUNCH = r"""
import errno, json, select, socket, sys, time
me, port, peer_ip, peer_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def bound():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s

listener = bound()
listener.listen(8)
listener.setblocking(False)
s = bound()
print(json.dumps({"event": "ready"}), flush=True)
start = float(sys.stdin.readline())
while time.time() < start - 0.002:
    time.sleep(0.001)
while time.time() < start:  # spin the last moments so that both SYNs leave together
    pass
began = time.monotonic()
s.settimeout(8)  # covers the SYN retransmissions at about 1 s and 3 s
result = {"event": "result", "me": me}
try:
    s.connect((peer_ip, peer_port))
    result.update(connect="ok", local=list(s.getsockname()), peer=list(s.getpeername()))
    s.sendall(("from-" + me).encode())
    s.settimeout(3)
    result["received"] = s.recv(64).decode()
except socket.timeout:
    result["connect"] = "timeout"
except OSError as e:
    result["connect"] = errno.errorcode.get(e.errno, str(e.errno))
result["connect_ms"] = (time.monotonic() - began) * 1000
ready, _, _ = select.select([listener], [], [], 0)
result["listener_accepted"] = bool(ready)
print(json.dumps(result), flush=True)
"""


@pytest.fixture
def topo() -> Iterator[NatTopology]:
    require_nat_topology()
    with nat_topology() as built:
        yield built


def py(script: str, *args: object) -> list[str]:
    """A command running ``script`` with ``args`` in this interpreter."""
    return [sys.executable, "-c", script, *map(str, args)]


def connect(host: Host | Router, ip: str, port: int, src_port: int = 0, timeout: float = 3) -> Any:
    """Run CLIENT in ``host``; its one JSON result."""
    argv = host.argv(py(CLIENT, src_port, ip, port, timeout))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_lan_hosts_reach_the_relay_through_masquerade_keeping_their_port(
    topo: NatTopology,
) -> None:
    relay = topo.relay
    with running(relay, py(ECHO_SERVER, relay.ip, 4001)) as server:
        server.event("listening", timeout=10)
        for host, router, src_port in ((topo.a, topo.nat1, 40101), (topo.b, topo.nat2, 40202)):
            before = router.counters()["masquerade"]
            out = connect(host, relay.ip, 4001, src_port=src_port)
            assert out["result"] == "connected", out
            assert out == {**out, "local": [host.ip, src_port], "echo": "hello"}
            # The relay sees the router's public address, and the source port unchanged.
            seen = server.event("accepted", timeout=5)
            assert seen["peer"] == [router.public_ip, src_port], (seen, router)
            assert seen["data"] == "hello"
            assert router.counters()["masquerade"] == before + 1
        # Public hosts talk to each other directly, untranslated.
        out = connect(topo.bootstrap, relay.ip, 4001, src_port=40303)
        assert out["result"] == "connected", out
        assert server.event("accepted", timeout=5)["peer"] == [topo.bootstrap.ip, 40303]


def test_unsolicited_inbound_syns_are_dropped_not_refused(topo: NatTopology) -> None:
    a, nat1, relay = topo.a, topo.nat1, topo.relay
    with running(a, py(ECHO_SERVER, "0.0.0.0", 4002)) as server:
        server.event("listening", timeout=10)
        # The listener is there: its own router reaches it from the LAN side.
        out = connect(nat1, a.ip, 4002)
        assert out["result"] == "connected", out
        server.event("accepted", timeout=5)

        # The public side has no route to the LAN at all.
        out = connect(relay, a.ip, 4002, timeout=DROP_BOUND_S)
        assert out == {**out, "result": "error", "errno": "ENETUNREACH"}, out

        # The router's public address, on the port a listens on: no port forward, so
        # the SYN meets the router's input filter and is dropped: a timeout, no RST.
        before = nat1.counters()
        out = connect(relay, nat1.public_ip, 4002, timeout=DROP_BOUND_S)
        assert out["result"] == "timeout", out
        assert DROP_BOUND_S - 0.1 < out["elapsed_s"] < DROP_BOUND_S + 1.0, out
        assert nat1.counters()["drop-input"] > before["drop-input"]

        # Even a neighbour on the public segment that routes the LAN via nat1 gets
        # nothing through: the forward filter drops its SYN.
        route = ["ip", "route", "add", f"{a.ip}/32", "via", nat1.public_ip]
        subprocess.run(relay.argv(route), check=True, capture_output=True)
        out = connect(relay, a.ip, 4002, timeout=DROP_BOUND_S)
        assert out["result"] == "timeout", out
        after = nat1.counters()
        assert after["drop-forward"] > before["drop-forward"]
        assert after["masquerade"] == before["masquerade"]  # nothing went out from the LAN
        with pytest.raises(AssertionError, match="no 'accepted' event"):
            server.event("accepted", timeout=0.2)  # a never saw any of those connections


@contextmanager
def punchers(topo: NatTopology, port_a: int, port_b: int) -> Iterator[tuple[Process, Process]]:
    """PUNCH running on a (from ``port_a``) and on b (from ``port_b``), both ready."""
    a, b, nat1, nat2 = topo.a, topo.b, topo.nat1, topo.nat2
    with (
        running(a, py(PUNCH, "a", port_a, nat2.public_ip, port_b)) as pa,
        running(b, py(PUNCH, "b", port_b, nat1.public_ip, port_a)) as pb,
    ):
        pa.event("ready", timeout=10)
        pb.event("ready", timeout=10)
        yield pa, pb


def start_at(process: Process, when: float) -> None:
    """Tell PUNCH the wall-clock time to connect at (all namespaces share the clock)."""
    assert process.proc.stdin is not None
    process.proc.stdin.write(f"{when}\n".encode())
    process.proc.stdin.flush()


def assert_connected_to_each_other(topo: NatTopology, ra: Any, rb: Any, pa: int, pb: int) -> None:
    assert ra["connect"] == "ok" and rb["connect"] == "ok", (ra, rb)
    assert ra["local"] == [topo.a.ip, pa] and ra["peer"] == [topo.nat2.public_ip, pb], ra
    assert rb["local"] == [topo.b.ip, pb] and rb["peer"] == [topo.nat1.public_ip, pa], rb
    assert ra["received"] == "from-b" and rb["received"] == "from-a", (ra, rb)
    # Both connect() calls succeeded, on one connection: a simultaneous open. Neither
    # listener took the other's SYN as an ordinary inbound connection.
    assert not ra["listener_accepted"] and not rb["listener_accepted"], (ra, rb)
    # Each router mapped its host's port to the same port on its public address.
    (m1,) = [m for m in topo.nat1.mappings() if m.orig == (topo.a.ip, pa, topo.nat2.public_ip, pb)]
    assert m1.reply == (topo.nat2.public_ip, pb, topo.nat1.public_ip, pa), m1
    (m2,) = [m for m in topo.nat2.mappings() if m.orig == (topo.b.ip, pb, topo.nat1.public_ip, pa)]
    assert m2.reply == (topo.nat1.public_ip, pa, topo.nat2.public_ip, pb), m2
    # The routers saw the handshake complete (the sockets may be closed by now).
    done = {"ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"}
    assert m1.replied and m2.replied and {m1.state, m2.state} <= done, (m1, m2)


def test_tcp_simultaneous_open_through_both_nats(topo: NatTopology) -> None:
    """Both dial at one start time. Whichever SYN reaches a router first either finds
    the mapping the other host's SYN opened, and so meets that host's dialing socket, or
    is dropped and retransmitted: it can never meet a listener."""
    for attempt in range(3):  # every attempt must work, each from fresh ports
        port_a, port_b = 40400 + attempt, 40500 + attempt
        with punchers(topo, port_a, port_b) as (pa, pb):
            when = time.time() + 0.05
            start_at(pa, when)
            start_at(pb, when)
            ra, rb = pa.event("result", timeout=12), pb.event("result", timeout=12)
        assert_connected_to_each_other(topo, ra, rb, port_a, port_b)


def test_simultaneous_open_after_the_first_syn_was_dropped(topo: NatTopology) -> None:
    """a dials first: nat2 drops that SYN (b has no mapping yet) but nat1 now maps a's
    port, so b's later SYN reaches a's dialing socket: a still-SYN_SENT simultaneous
    open, as when one side of a hole punch starts a round trip early."""
    port_a, port_b = 40600, 40700
    with punchers(topo, port_a, port_b) as (pa, pb):
        dropped = topo.nat2.counters()["drop-input"]
        start_at(pa, time.time())
        deadline = time.monotonic() + 5
        while topo.nat2.counters()["drop-input"] == dropped:
            assert time.monotonic() < deadline, "nat2 never dropped a's SYN"
            time.sleep(0.01)
        start_at(pb, time.time())
        ra, rb = pa.event("result", timeout=12), pb.event("result", timeout=12)
    assert_connected_to_each_other(topo, ra, rb, port_a, port_b)
    assert ra["connect_ms"] > rb["connect_ms"], (ra, rb)  # a waited for b's SYN
