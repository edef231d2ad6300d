"""Hole punching (DCUtR) between p2pnode and go-libp2p (p2pd, v0.32.1) across two NATs.

The two-NAT namespace topology (:mod:`p2pnode.demo.nat_topology`): p2pnode "A" behind
NAT 1, go behind NAT 2, and on the public segment a p2pnode relay, a p2pnode bootstrap
node and two more p2pnode nodes that only *observe* go (see below).

What go-libp2p v0.32.1 needs before it takes part in DCUtR at all
(``p2p/protocol/holepunch/svc.go``, ``watchForPublicAddr``): an observed address of its
own that ``manet.IsPublicAddr`` calls public. Only then does it serve ``/libp2p/dcutr``
(the role of the peer that dialed through the relay), and only once it is also
``private`` (``-forceReachabilityPrivate``) does it start its hole puncher (the role of
the peer that received the relayed connection). And identify's observed-address manager
(``p2p/protocol/identify/obsaddr.go``) trusts an address only once ``ActivationThresh =
4`` distinct observer IPs reported it. Hence:

- the stock topology's public segment is 10.232.0.0/16, private to go: go never learns a
  public address and never hole punches, in either role
  (:func:`test_go_never_enables_dcutr_when_the_public_segment_is_rfc1918`);
- the hole-punching tests rebuild the same topology with the public segment on
  100.232.0.0/16 (outside 100.64.0.0/10, so "public" to go; the namespaces have no route
  to any real network), and give go four observers (relay, bootstrap, two extra nodes on
  secondary addresses of the bootstrap host).

Pair 2 (go receives the relayed connection) needs go to be reachable through the relay,
which p2pd only arranges after go's 3-minute autorelay boot delay; instead the test's
relay grants go a slot without a RESERVE (go's circuit client accepts a STOP from any
relay). Everything else is the real protocol.

The p2pnode nodes are this module run as a script (``python -m
tests.interop.test_go_holepunch CONFIG_JSON``): :mod:`p2pnode.demo.nat_peer`'s node and
events, plus the commands ``dial`` and ``grant`` and a ``punch`` event per finished hole
punch; p2pnode's DCUtR logs go to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import p2pnode.demo.nat_topology as nat_topology_module
from p2pnode import Identity, Multiaddr, Node, PeerId
from p2pnode.demo import nat_peer
from p2pnode.demo.netns import Process
from p2pnode.net.connection import Connection

from ..nat_topology import NatTopology, nat_topology, require_nat_topology
from .p2pd import P2pd, require_p2pd

pytestmark = [pytest.mark.interop, pytest.mark.netns]

PORT = 4001
PUBLIC_PREFIX = "100.232"  # not private/unroutable for go's manet.IsPublicAddr
GO_LOG = "error,p2p-holepunch=debug,net/identify=debug"
GO_PUBLIC = "Host now has a public address"  # svc.go: go starts serving /libp2p/dcutr
GO_WAITING = "waiting until we have at least one public address"
PAIR_TIMEOUT = 90


# -- the p2pnode peer process (this module run as a script) -------------------------------


async def _peer_main(settings: dict[str, Any]) -> None:
    if settings.get("log_file"):
        logging.basicConfig(
            filename=settings["log_file"],
            level=logging.INFO,
            format="%(created).3f %(name)s %(levelname)s %(message)s",
        )
        logging.getLogger("p2pnode.protocols.dcutr").setLevel(logging.DEBUG)
    node = await Node.start(Identity.generate(), [settings["listen"]], nat_peer._config(settings))
    emit = nat_peer.emit

    def on_event(event: Any) -> None:
        if event.kind in ("connected", "disconnected"):
            limited = "/p2p-circuit" in str(event.addr)
            emit(
                event.kind,
                peer=str(event.peer_id),
                addr=str(event.addr),
                limited=limited,
                direction=event.direction,
            )

    node.on_event(on_event)
    node.on_addresses_changed(
        lambda addrs: emit(
            "addresses",
            addrs=[str(a) for a in addrs],
            relays=sorted(str(p) for p in node.relay_client.reservations),
        )
    )
    if node.nat.monitor is not None:
        node.nat.monitor.on_change(lambda r: emit("reachability", value=str(r)))
    punched = node.nat._punched

    def on_punch(peer: PeerId, conn: Connection | None) -> None:
        addr = None if conn is None else str(conn.remote_addr)
        emit("punch", peer=str(peer), ok=conn is not None, addr=addr)
        punched(peer, conn)

    # the initiator's success
    node.nat._punched = on_punch  # type: ignore[method-assign,assignment]
    punch = node.nat._punch

    async def punch_and_tell(relayed: Connection) -> None:  # the initiator's failure
        failed = node.nat.punches["failed"]
        await punch(relayed)
        if node.nat.punches["failed"] > failed:
            emit("punch", peer=str(relayed.remote_peer), ok=False, addr=None)

    node.nat._punch = punch_and_tell  # type: ignore[method-assign]
    if node.nat.dcutr is not None:
        node.nat.dcutr.on_result = on_punch  # the responder's result
    emit("listening", peer_id=str(node.peer_id))

    async def dial(command: dict[str, Any]) -> None:
        try:
            conn = await node.dial(command["addr"])
        except Exception as exc:  # reported to the test
            emit("dialed", ok=False, error=f"{type(exc).__name__}: {exc}")
            return
        emit("dialed", ok=True, limited=conn.limited, addr=str(conn.remote_addr))

    async def grant(command: dict[str, Any]) -> None:
        assert node.relay_service is not None
        status = node.relay_service.book.reserve(
            PeerId.from_string(command["peer"]), None, time.time()
        )
        emit("granted", status=status.name)

    async def wait_direct(command: dict[str, Any]) -> None:
        await nat_peer._wait_direct(node, command)

    handlers = {"dial": dial, "grant": grant, "wait_direct": wait_direct}
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pending: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            command = json.loads(line)
            task = asyncio.ensure_future(handlers[command["cmd"]](command))
            pending.add(task)
            task.add_done_callback(pending.discard)
    finally:
        for task in pending:
            task.cancel()
        await node.stop()


# -- the test side ------------------------------------------------------------------------


@dataclass
class Peer:
    process: Process
    peer_id: str
    ip: str
    log: Path

    @property
    def addr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{PORT}/p2p/{self.peer_id}"

    def send(self, **command: Any) -> None:
        stdin = self.process.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()

    async def event(self, name: str, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.process.event, name, timeout, **match)

    async def ask(self, reply: str, timeout: float = 30.0, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return await self.event(reply, timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class World:
    topology: NatTopology
    relay: Peer
    boot: Peer
    observers: list[Peer]
    a: Peer  # p2pnode behind NAT 1
    go: P2pd  # behind NAT 2
    go_id: PeerId
    go_log: str = ""

    def go_stderr(self) -> str:
        if self.go._dir is not None and self.go.stderr_path.exists():
            self.go_log = self.go.stderr_path.read_text(errors="replace")
        return self.go_log

    def go_lines(self, text: str) -> list[str]:
        return [line for line in self.go_stderr().splitlines() if text in line]

    async def go_logged(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.go_lines(text):
                return True
            await asyncio.sleep(0.25)
        return False

    async def go_count(self, text: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.go_lines(text)) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.25)

    def evidence(self) -> str:
        go = "\n".join(
            line
            for line in self.go_stderr().splitlines()
            if "holepunch" in line or "hole punch" in line
        )
        a = self.a.log_text()[-4000:]
        return f"\n--- go (p2p-holepunch) ---\n{go[-6000:]}\n--- p2pnode A ---\n{a}"


def _add_address(namespace: str, ip: str) -> None:
    subprocess.run(
        ["ip", "-n", namespace, "addr", "add", f"{ip}/24", "dev", "eth0"],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def stock_topology() -> Iterator[NatTopology]:
    require_nat_topology()
    require_p2pd()
    with nat_topology() as built:
        yield built


@pytest.fixture
def topology(monkeypatch: pytest.MonkeyPatch) -> Iterator[NatTopology]:
    """The same topology with a public segment that go calls public (see the module doc)."""
    require_nat_topology()
    require_p2pd()
    monkeypatch.setattr(nat_topology_module, "PUBLIC", PUBLIC_PREFIX)
    with nat_topology() as built:
        yield built


@contextlib.asynccontextmanager
async def world(
    topology: NatTopology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[World]:
    """Relay, bootstrap, two observers (public), p2pnode A (NAT 1) and go (NAT 2); go is
    connected to the four public nodes (its observers)."""
    monkeypatch.setenv("GOLOG_LOG_LEVEL", GO_LOG)
    with ExitStack() as stack:

        def start(host_name: str, ip: str, name: str, **settings: Any) -> Peer:
            log = tmp_path / f"{name}.log"
            config = {"listen": f"/ip4/{ip}/tcp/{PORT}", "log_file": str(log), **settings}
            argv = [sys.executable, "-m", __name__, json.dumps(config)]
            process = Process(getattr(topology, host_name).argv(argv), None)
            stack.callback(process.stop)
            hello = process.event("listening", timeout=20)
            return Peer(process, hello["peer_id"], ip, log)

        boot_ip = topology.bootstrap.ip
        boot = start("bootstrap", boot_ip, "boot", dht_server=True)
        relay = start(
            "relay",
            topology.relay.ip,
            "relay",
            relay_service=True,
            relay_limit_data=1 << 20,
            dht_server=True,
            bootstrap=[boot.addr],
        )
        observers = []
        for n in (12, 13):
            ip = boot_ip.rsplit(".", 1)[0] + f".{n}"
            _add_address(topology.bootstrap.name, ip)
            observers.append(start("bootstrap", ip, f"obs{n}", bootstrap=[boot.addr]))
        a = start(
            "a",
            topology.a.ip,
            "a",
            bootstrap=[boot.addr],
            relays=[relay.addr],
            observed_threshold=2,
        )
        identity = Identity.generate()
        key = tmp_path / "go.key"
        identity.save(key)
        go = P2pd(
            key,
            host_addrs=[f"/ip4/{topology.b.ip}/tcp/{PORT}"],
            extra_args=["-autonat", "-forceReachabilityPrivate"],
            prefix=topology.b.argv([]),
        )
        await go.start()
        built = World(topology, relay, boot, observers, a, go, identity.peer_id)
        try:
            for peer in (relay, boot, *observers):
                peer_id = PeerId.from_string(peer.peer_id).to_bytes()
                addr = Multiaddr.from_string(f"/ip4/{peer.ip}/tcp/{PORT}").to_bytes()
                await go.connect(peer_id, [addr])
            # A holds a slot on the relay (so go can reach it) and knows its observed address
            await a.event("addresses", timeout=30, relays=[relay.peer_id])
            yield built
        finally:
            built.go_stderr()
            await go.stop()


def circuit_to(w: World, peer: str) -> str:
    return f"{w.relay.addr}/p2p-circuit/p2p/{peer}"


async def go_direct_addrs(w: World) -> list[str]:
    """go's connections' remote addresses to A that are not relayed."""
    a_id = PeerId.from_string(w.a.peer_id).to_bytes()
    found = []
    for info in await w.go.list_peers():
        if info.peer == a_id:
            found += [str(Multiaddr.from_bytes(raw)) for raw in info.addrs]
    return [addr for addr in found if "/p2p-circuit" not in addr]


async def test_go_never_enables_dcutr_when_the_public_segment_is_rfc1918(
    stock_topology: NatTopology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stock topology (10.232/16 "public"): go records its observed address from four
    observers, but as the address is private it never serves /libp2p/dcutr, so p2pnode's
    DCUtR stream is refused; no direct connection."""
    async with world(stock_topology, tmp_path, monkeypatch) as w, asyncio.timeout(PAIR_TIMEOUT):
        nat2 = stock_topology.nat2.public_ip
        await w.go.connect(
            PeerId.from_string(w.a.peer_id).to_bytes(),
            [Multiaddr.from_string(f"{w.relay.addr}/p2p-circuit").to_bytes()],
        )
        punch = await w.a.event("punch", timeout=40)
        assert not punch["ok"], punch
        # go recorded its observed address from its four observers (go's threshold) ...
        observed = [line for line in w.go_lines("added own observed listen addr") if nat2 in line]
        assert len(observed) >= 4, w.go_stderr()[-3000:]
        # ... and, polling at most every 5 s (svc.go), never called it public
        await asyncio.sleep(6)
        log = w.evidence()
        assert w.go_lines(GO_WAITING), log
        assert not w.go_lines(GO_PUBLIC), log
        assert "hole punch to" in w.a.log_text() and "failed" in w.a.log_text(), log
        assert await go_direct_addrs(w) == []
        print(f"stock topology: {punch}{log}")


async def test_go_dials_p2pnode_through_the_relay_and_p2pnode_punches_through(
    topology: NatTopology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pair 1: go (NAT 2) dials p2pnode (NAT 1) through the relay; p2pnode received the
    relayed connection, so it runs DCUtR's initiating role, go answers."""
    async with world(topology, tmp_path, monkeypatch) as w, asyncio.timeout(PAIR_TIMEOUT):
        assert await w.go_logged(GO_PUBLIC, 30), w.go_stderr()[-3000:]
        started = time.monotonic()
        await w.go.connect(
            PeerId.from_string(w.a.peer_id).to_bytes(),
            [Multiaddr.from_string(f"{w.relay.addr}/p2p-circuit").to_bytes()],
        )
        await w.a.event("connected", timeout=10, peer=str(w.go_id), limited=True)
        punch = await w.a.event("punch", timeout=45)
        elapsed = time.monotonic() - started
        log = w.evidence()
        # go served the exchange: CONNECT received from p2pnode, answered, dialed
        assert w.go_lines("received hole punch request"), log
        assert punch["ok"], f"{punch}{log}"
        await w.go_count("hole punch successful", 1, 10)
        log = w.evidence()
        assert w.go_lines("hole punch successful"), log
        # go v0.32's responder dials as the security server; p2pnode's initiator is the
        # server on attempt 1 (as the spec says), the client on attempt 2
        attempts = [line for line in w.a.log_text().splitlines() if ", attempt " in line]
        assert attempts and attempts[-1].endswith("client)"), log
        assert topology.nat2.public_ip in punch["addr"], punch
        direct = await w.a.ask("direct", cmd="wait_direct", peer=str(w.go_id), timeout=5)
        assert direct["ok"], direct
        addrs = await go_direct_addrs(w)
        assert any(topology.nat1.public_ip in addr for addr in addrs), (addrs, log)
        print(f"pair 1 punched in {elapsed:.1f} s: {punch['addr']}; go sees {addrs}{log}")


async def test_p2pnode_dials_go_through_the_relay_and_go_punches(
    topology: NatTopology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pair 2: p2pnode (NAT 1) dials go (NAT 2) through the relay; go received the relayed
    connection, so go runs DCUtR's initiating role and p2pnode answers.

    go-libp2p v0.32's initiator dials as the security *client* on every attempt (the
    spec and go >= v0.41 make it the server); p2pnode's responder alternates its role
    per exchange, so the second attempt has opposite roles and punches through.
    """
    async with world(topology, tmp_path, monkeypatch) as w, asyncio.timeout(PAIR_TIMEOUT):
        assert await w.go_logged(GO_PUBLIC, 30), w.go_stderr()[-3000:]
        granted = await w.relay.ask("granted", cmd="grant", peer=str(w.go_id))
        assert granted["status"] == "OK", granted
        started = time.monotonic()
        dialed = await w.a.ask("dialed", cmd="dial", addr=circuit_to(w, str(w.go_id)))
        assert dialed["ok"] and dialed["limited"], dialed
        punches = []
        for _ in range(3):  # p2pnode answers one DCUtR stream per go attempt
            punches.append(punch := await w.a.event("punch", timeout=30))
            if punch["ok"]:
                break
        elapsed = time.monotonic() - started
        await w.go_count("hole punch attempt with peer failed", len(punches), 10)
        log = w.evidence()
        print(f"pair 2 after {elapsed:.1f} s: {punches}{log}")
        # go's hole puncher ran and finished the CONNECT/CONNECT/SYNC exchange each time
        assert w.go_lines("got inbound proxy conn"), log
        assert len(w.go_lines("starting hole punch in")) == len(punches), log
        # go v0.32's initiator is the security client on every attempt; p2pnode's
        # responder alternates (client, server, client): attempt 1 has two Noise
        # initiators and fails, attempt 2 meets go with opposite roles
        assert [p["ok"] for p in punches] == [False, True], (punches, log)
        assert w.go_lines("noise: message is too short"), log
        addrs = await go_direct_addrs(w)
        assert any(topology.nat1.public_ip in addr for addr in addrs), (addrs, log)


if __name__ == "__main__":
    asyncio.run(_peer_main(json.loads(sys.argv[1])))
