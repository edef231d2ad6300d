"""Circuit relay v2 with js-libp2p (@libp2p/circuit-relay-v2 4.2.13, libp2p 3.3.11), on
loopback, both ways (the js side is tests/interop/js/relay-peer.mjs):

- p2pnode reserves a slot on a js relay and is reached through it, by p2pnode and by js;
- js reserves a slot on a p2pnode relay (listening on ``<relay>/p2p-circuit``) and is
  reached through it by p2pnode; js dials p2pnode through a p2pnode relay.

js opens and serves ``/test/echo/1.0.0`` with ``runOnLimitedConnection: true``, as it
requires on relayed connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from p2pnode import Identity, Multiaddr, Node, NodeConfig, PeerId, Stream
from p2pnode.wire.relay import Limit, RelayLimits

from .jspeer import JS_DIR, JsListener, require_js_peer, start_js_listener

pytestmark = pytest.mark.interop

RELAY_SCRIPT = JS_DIR / "relay-peer.mjs"
ECHO = "/test/echo/1.0.0"
TIMEOUT = 25


@dataclass(frozen=True)
class Served:
    """One echo stream a p2pnode node served."""

    peer: PeerId
    limited: bool
    remote_addr: str
    bytes: int


class Echo:
    """The echo handler of one p2pnode node; remembers what it served."""

    def __init__(self) -> None:
        self.served: list[Served] = []

    async def __call__(self, stream: Stream) -> None:
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
            await stream.write(chunk)
        conn = stream.connection
        remote = str(getattr(conn, "remote_addr", ""))
        # noted before the close: the dialer may go away as soon as it has the echo
        self.served.append(
            Served(stream.remote_peer, bool(getattr(conn, "limited", False)), remote, total)
        )
        await stream.close()


@dataclass
class Started:
    node: Node
    echo: Echo


@pytest.fixture
async def nodes() -> AsyncIterator[list[Started]]:
    started: list[Started] = []
    try:
        yield started
    finally:
        for item in reversed(started):
            await item.node.stop()


async def start(nodes: list[Started], **config: object) -> Started:
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(**config))  # type: ignore[arg-type]
    echo = Echo()
    node.set_handler(ECHO, echo)
    nodes.append(Started(node, echo))
    return nodes[-1]


def addr_of(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


@pytest.fixture
async def js_relay() -> AsyncIterator[JsListener]:
    """A js relay: circuitRelayServer() with its default limits, on 127.0.0.1."""
    relay = await start_js_listener("relay", script=RELAY_SCRIPT)
    try:
        yield relay
    finally:
        await relay.stop()


async def js_reservations(relay: JsListener) -> dict[str, dict[str, Any]]:
    """The js relay's reservation store: peer id -> {limit: {data, duration}, expiry, ...}."""
    assert relay.proc.stdin is not None
    relay.proc.stdin.write(b"reservations\n")
    await relay.proc.stdin.drain()
    event = await relay.next_event("reservations", timeout=10)
    return {entry["peer_id"]: entry for entry in event["reservations"]}


async def js_dial(addr: str, size: int, timeout: float = 20) -> dict[str, Any]:
    """Run `relay-peer.mjs dial ADDR --size N`: an echo round trip over the circuit."""
    node = require_js_peer()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(RELAY_SCRIPT),
        "dial",
        addr,
        "--size",
        str(size),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()  # by its pid: only the process this test started
            await proc.wait()
        raise
    lines: list[dict[str, Any]] = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert proc.returncode == 0 and lines, (
        f"js dial failed (rc {proc.returncode}): {lines} {stderr.decode()[-3000:]}"
    )
    return lines[-1]


async def echoes(stream: Stream, payload: bytes) -> bytes:
    await stream.write(payload)
    return await stream.readexactly(len(payload))


async def test_p2pnode_reserves_on_a_js_relay_and_p2pnode_reaches_it(
    js_relay: JsListener, nodes: list[Started]
) -> None:
    a, b = (await start(nodes)).node, (await start(nodes)).node
    async with asyncio.timeout(TIMEOUT):
        reservation = await a.relay_client.reserve(Multiaddr.from_string(js_relay.addr))
        assert reservation.relay == PeerId.from_string(js_relay.peer_id)
        granted = (await js_reservations(js_relay)).get(str(a.peer_id))
        assert granted is not None, await js_relay.report()
        # What js holds is what it sent. (js keeps the duration in milliseconds, 120000,
        # and puts that number in the protobuf's duration field, which is in seconds.)
        js_limit = granted["limit"]
        assert reservation.limit == Limit(duration=js_limit["duration"], data=js_limit["data"])
        assert abs(reservation.expire - granted["expiry"]) <= 1
        circuit = f"{js_relay.addr}/p2p-circuit/p2p/{a.peer_id}"
        assert Multiaddr.from_string(circuit) in a.advertised_addrs
        conn = await b.dial(circuit)
        assert conn.limited and conn.remote_peer == a.peer_id
        stream = await b.new_stream(a.peer_id, [ECHO])
        payload = os.urandom(5000)
        assert await echoes(stream, payload) == payload
        await stream.close()


async def test_js_reaches_p2pnode_through_a_js_relay(
    js_relay: JsListener, nodes: list[Started]
) -> None:
    a = await start(nodes)
    async with asyncio.timeout(TIMEOUT):
        await a.node.relay_client.reserve(Multiaddr.from_string(js_relay.addr))
        circuit = f"{js_relay.addr}/p2p-circuit/p2p/{a.node.peer_id}"
        result = await js_dial(circuit, 3000)
        assert result["event"] == "echo" and result["ok"] and result["bytes"] == 3000, result
        assert result["peer_id"] == str(a.node.peer_id) and result["limited"], result
        [served] = a.echo.served
        assert served.peer == PeerId.from_string(result["dialer"]) and served.bytes == 3000
        assert served.limited and "/p2p-circuit" in served.remote_addr


async def test_js_reserves_on_a_p2pnode_relay_and_p2pnode_reaches_it(
    nodes: list[Started],
) -> None:
    relay = (await start(nodes, relay_service=RelayLimits())).node
    b = (await start(nodes)).node
    assert relay.relay_service is not None
    async with asyncio.timeout(TIMEOUT):
        js = await start_js_listener("reserve", addr_of(relay), script=RELAY_SCRIPT)
        try:
            js_id = PeerId.from_string(js.peer_id)
            # js prints its address only once the relay granted the reservation
            assert js_id in relay.relay_service.book.reservations(time.time())
            circuit = f"{addr_of(relay)}/p2p-circuit/p2p/{js_id}"
            assert Multiaddr.from_string(js.addr) == Multiaddr.from_string(circuit), js.addr
            conn = await b.dial(circuit)
            assert conn.limited and conn.remote_peer == js_id
            stream = await b.new_stream(js_id, [ECHO])
            payload = os.urandom(4000)
            assert await echoes(stream, payload) == payload, await js.report()
            await stream.close()
            echoed = await js.next_event("echoed", timeout=10)
            assert echoed["bytes"] == len(payload) and echoed["peer_id"] == str(b.peer_id)
            assert echoed["limited"] and not echoed["direct"], echoed
            assert relay.relay_service.relayed_bytes > len(payload)
        finally:
            await js.stop()


async def test_js_reaches_p2pnode_through_a_p2pnode_relay(nodes: list[Started]) -> None:
    relay = (await start(nodes, relay_service=RelayLimits())).node
    a = await start(nodes)
    assert relay.relay_service is not None
    async with asyncio.timeout(TIMEOUT):
        await a.node.relay_client.reserve(Multiaddr.from_string(addr_of(relay)))
        circuit = f"{addr_of(relay)}/p2p-circuit/p2p/{a.node.peer_id}"
        result = await js_dial(circuit, 2000)
        assert result["event"] == "echo" and result["ok"] and result["bytes"] == 2000, result
        assert result["peer_id"] == str(a.node.peer_id) and result["limited"], result
        # js's view of the limit p2pnode's relay sent (go's defaults: 120 s, 128 KiB)
        limit = relay.relay_service.limits.circuit
        assert result["limits"]["seconds"] == pytest.approx(limit.duration, abs=2), result
        [served] = a.echo.served
        assert served.peer == PeerId.from_string(result["dialer"]) and served.limited
        assert relay.relay_service.relayed_bytes > 2000
