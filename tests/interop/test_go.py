"""Wire compatibility with go-libp2p (v0.32.1), both directions, through the `p2pd` daemon.

The go peer is the libp2p daemon shipped in the hivemind 1.1.12 wheel (install it with
``tests/interop/go/install_p2pd.sh``), driven by our own client of its control protocol
(``tests/interop/p2pd.py``). Go offers only yamux, so every connection must end up on
``/yamux/1.0.0``.

What the daemon cannot carry: it bridges a libp2p stream to a unix socket with two copy
loops, and the end of either loop closes its destination fully. A half-close therefore
never crosses the bridge: when the remote side sends FIN, the daemon closes the unix
socket in both directions (whoever serves it can no longer answer), and when the unix
side ends its writes, the daemon closes the libp2p stream in both directions (the answer
arriving afterwards is discarded). Every exchange below is therefore length-delimited
and needs no half-close to know where a message ends; the tests that depend on this say
so. The spec's task client (request, then half-close: ``send_task``) cannot be tested
against a server behind the bridge; see ``test_p2pnode_sends_task_to_go``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pnode import (
    EchoHandler,
    Identity,
    Multiaddr,
    Node,
    NodeConfig,
    PeerId,
    Stream,
    TaskServer,
)

from .p2pd import P2pd, StreamInfo, encode_uvarint, read_delimited, require_p2pd

pytestmark = pytest.mark.interop

ECHO = "/test/echo/1.0.0"
BULK = "/test/bulk/1.0.0"
PING = "/ipfs/ping/1.0.0"
TASK = "/p2pnode/task/1.0.0"
YAMUX = "/yamux/1.0.0"
GO_AGENT = "p2pd/0.1"
SIZE_32MIB = 32 * 1024 * 1024
CHUNK = 1 << 20
# Bulk protocol: a header (size, mode). Mode UPLOAD: the opener sends `size` bytes, the
# other side answers their sha256. Mode DOWNLOAD: the other side sends `size` random
# bytes and then their sha256. Lengths are known, so no half-close is needed.
BULK_HEADER = struct.Struct(">QB")
UPLOAD, DOWNLOAD = 0, 1
TIMEOUT = 30  # seconds; bounds every exchange with the daemon
Reader = asyncio.StreamReader  # the go side of a bridged stream, as our handlers see it
Writer = asyncio.StreamWriter


# -- fixtures ------------------------------------------------------------------------------


class Events:
    """p2pnode's connection events, awaitable: ``await events.next("connected", peer)``."""

    def __init__(self, node: Node) -> None:
        self.queue: asyncio.Queue[tuple[str, PeerId | None, str, str | None]] = asyncio.Queue()
        node.on_event(lambda e: self.queue.put_nowait((e.kind, e.peer_id, e.direction, e.muxer)))

    async def next(self, kind: str, peer: PeerId, timeout: float = 10) -> tuple[str, str | None]:
        """``(direction, muxer)`` of the next ``kind`` event for ``peer``; others are dropped."""
        async with asyncio.timeout(timeout):
            while True:
                got_kind, got_peer, direction, muxer = await self.queue.get()
                if got_kind == kind and got_peer == peer:
                    return direction, muxer


class P2pnodeSide:
    """A p2pnode with the test protocols, and what its handlers saw."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.events = Events(node)
        self.echo_done: asyncio.Queue[int] = asyncio.Queue()  # bytes echoed, at EOF
        self.errors: list[BaseException] = []
        node.set_handler(ECHO, self.echo)
        node.set_handler(BULK, self.bulk)
        TaskServer(node, {"default": EchoHandler()}).install()

    @property
    def addr(self) -> Multiaddr:
        return self.node.listen_addrs[0]

    async def echo(self, stream: Stream) -> None:
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
            await stream.write(chunk)
        await stream.close()
        self.echo_done.put_nowait(total)

    async def bulk(self, stream: Stream) -> None:
        try:
            size, mode = BULK_HEADER.unpack(await stream.readexactly(BULK_HEADER.size))
            if mode == UPLOAD:
                digest = hashlib.sha256()
                remaining = size
                while remaining:
                    chunk = await stream.read(min(remaining, CHUNK))
                    if not chunk:
                        raise AssertionError(f"upload ended {remaining} bytes early")
                    digest.update(chunk)
                    remaining -= len(chunk)
                await stream.write(digest.digest())
            else:
                payload = os.urandom(size)
                view = memoryview(payload)
                for offset in range(0, size, CHUNK):
                    await stream.write(view[offset : offset + CHUNK])
                await stream.write(hashlib.sha256(payload).digest())
            await stream.close()
        except BaseException as exc:
            self.errors.append(exc)
            raise


@pytest.fixture
def go_identity(tmp_path: Path) -> tuple[Identity, Path]:
    """The go peer's key, made here so that its PeerId is known before it starts."""
    require_p2pd()
    identity = Identity.generate()
    key_file = tmp_path / "go.key"
    identity.save(key_file)
    return identity, key_file


@pytest.fixture
async def go(go_identity: tuple[Identity, Path]) -> AsyncIterator[P2pd]:
    identity, key_file = go_identity
    daemon = P2pd(key_file)
    await daemon.start()
    try:
        assert PeerId.from_bytes(daemon.peer_id) == identity.peer_id, daemon.peer_id_text
        yield daemon
        assert not daemon.handler_errors, f"go-side handlers failed: {daemon.handler_errors!r}"
    finally:
        await daemon.stop()


@pytest.fixture
async def py() -> AsyncIterator[P2pnodeSide]:
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    side = P2pnodeSide(node)
    try:
        yield side
        assert not side.errors, f"p2pnode handlers failed: {side.errors!r}"
    finally:
        await node.stop()


def go_peer(go: P2pd) -> PeerId:
    return PeerId.from_bytes(go.peer_id)


def go_addr(go: P2pd) -> str:
    """The go host's first listen address with its /p2p suffix."""
    return str(Multiaddr.from_bytes(go.addrs[0]).with_peer_id(go_peer(go)))


async def go_dials(go: P2pd, py: P2pnodeSide) -> None:
    """Make go connect to p2pnode; return once p2pnode has the connection too."""
    await go.connect(py.node.peer_id.to_bytes(), [py.addr.to_bytes()], timeout=TIMEOUT)
    direction, muxer = await py.events.next("connected", go_peer(go))
    assert (direction, muxer) == ("inbound", YAMUX)


async def go_peers(go: P2pd) -> dict[PeerId, list[str]]:
    return {
        PeerId.from_bytes(p.peer): [str(Multiaddr.from_bytes(a)) for a in p.addrs]
        for p in await go.list_peers()
    }


async def go_sees(go: P2pd, peer: PeerId) -> None:
    """Wait until go lists ``peer``: go registers a connection a moment after we have it."""
    async with asyncio.timeout(TIMEOUT):
        while peer not in await go_peers(go):
            await asyncio.sleep(0.01)


async def read_frame(stream: Stream, limit: int = 1 << 20) -> bytes:
    """One uvarint-length-prefixed message from a p2pnode Stream."""
    size = shift = 0
    for _ in range(10):
        byte = (await stream.readexactly(1))[0]
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    assert size <= limit, f"frame of {size} bytes announced"
    return await stream.readexactly(size)


def frame(message: dict[str, object]) -> bytes:
    body = json.dumps(message).encode()
    return encode_uvarint(len(body)) + body


# -- connections -------------------------------------------------------------------------


async def test_go_dials_p2pnode(go: P2pd, py: P2pnodeSide) -> None:
    # go tries its security protocols with multistream-select and must settle on /noise,
    # then on yamux (p2pnode offers yamux and mplex; go only yamux).
    await go_dials(go, py)
    conns = py.node.connections(go_peer(go))
    assert len(conns) == 1 and conns[0].muxer_protocol == YAMUX
    assert conns[0].muxer_in_handshake  # go chose yamux inside Noise, no multistream
    # Noise proved our identity to go: it lists our PeerId, at the address it dialed.
    peers = await go_peers(go)
    assert peers.get(py.node.peer_id) == [str(py.addr)], peers


async def test_p2pnode_dials_go(go: P2pd, py: P2pnodeSide) -> None:
    conn = await py.node.dial(go_addr(go))
    assert conn.remote_peer == go_peer(go)
    assert conn.muxer_protocol == YAMUX and conn.muxer_in_handshake
    # with the muxer chosen in the handshake we are done before go has read message 3
    await go_sees(go, py.node.peer_id)


@pytest.mark.parametrize("direction", ["p2pnode dials", "go dials"])
async def test_muxer_without_inlining_is_negotiated_with_go_by_multistream(
    go: P2pd, direction: str
) -> None:
    node = await Node.start(
        Identity.generate(),
        ["/ip4/127.0.0.1/tcp/0"],
        NodeConfig(inline_muxer_negotiation=False),
    )
    try:
        if direction == "p2pnode dials":
            conn = await node.dial(go_addr(go))
        else:
            await go.connect(
                node.peer_id.to_bytes(), [node.listen_addrs[0].to_bytes()], timeout=TIMEOUT
            )
            async with asyncio.timeout(TIMEOUT):  # go may finish before we register it
                while not node.connections(go_peer(go)):
                    await asyncio.sleep(0.01)
            (conn,) = node.connections(go_peer(go))
        assert conn.muxer_protocol == YAMUX and not conn.muxer_in_handshake
        assert len(await asyncio.wait_for(node.ping(go_peer(go), count=2), TIMEOUT)) == 2
    finally:
        await node.stop()


async def test_go_disconnect_closes_p2pnode_connection(go: P2pd, py: P2pnodeSide) -> None:
    await py.node.dial(go_addr(go))
    await go_sees(go, py.node.peer_id)  # else the disconnect may come before go has it
    await go.disconnect(py.node.peer_id.to_bytes())
    await py.events.next("disconnected", go_peer(go))
    assert py.node.connections(go_peer(go)) == []
    assert py.node.peer_id not in await go_peers(go)


# -- ping --------------------------------------------------------------------------------


async def test_p2pnode_pings_go(go: P2pd, py: P2pnodeSide) -> None:
    rtts = await asyncio.wait_for(py.node.ping(go_addr(go), count=5), TIMEOUT)
    assert len(rtts) == 5 and all(0 < rtt < 5 for rtt in rtts), rtts


async def test_go_pings_p2pnode(go: P2pd, py: P2pnodeSide) -> None:
    await go_dials(go, py)
    reader, writer, protocol = await go.open_stream(py.node.peer_id.to_bytes(), [PING])
    try:
        assert protocol == PING
        async with asyncio.timeout(TIMEOUT):
            for _ in range(5):
                payload = os.urandom(32)
                writer.write(payload)
                await writer.drain()
                assert await reader.readexactly(32) == payload
    finally:
        writer.close()


# -- identify ----------------------------------------------------------------------------


async def test_p2pnode_identifies_go(go: P2pd, py: P2pnodeSide) -> None:
    info = await asyncio.wait_for(py.node.identify(go_addr(go)), TIMEOUT)
    assert info.peer_id == go_peer(go)
    assert info.agent_version == GO_AGENT
    for protocol in ("/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", PING):
        assert protocol in info.protocols, info.protocols
    assert {a.to_bytes() for a in info.listen_addrs} >= set(go.addrs), info.listen_addrs
    assert info.observed_addr is not None
    assert info.observed_addr.value_for("ip4") == "127.0.0.1"


async def test_go_learns_p2pnode_listen_addr_by_identify(go: P2pd, py: P2pnodeSide) -> None:
    # p2pnode dials from an ephemeral port, so the only way go can learn where p2pnode
    # listens is the listen_addrs of p2pnode's identify answer.
    await py.node.dial(go_addr(go))
    await go_sees(go, py.node.peer_id)
    dialed_from = (await go_peers(go))[py.node.peer_id]
    assert dialed_from != [str(py.addr)], "p2pnode dialed from its listen port: no proof here"
    # go's NewStream waits for go's identify of the peer: once a stream from go is
    # open, go has read p2pnode's identify message.
    _, writer, _ = await go.open_stream(py.node.peer_id.to_bytes(), [PING])
    writer.close()
    await go.disconnect(py.node.peer_id.to_bytes())
    await py.events.next("disconnected", go_peer(go))
    # CONNECT with no addresses: go dials what its peer store holds for our PeerId.
    await go.connect(py.node.peer_id.to_bytes(), [], timeout=TIMEOUT)
    direction, muxer = await py.events.next("connected", go_peer(go))
    assert (direction, muxer) == ("inbound", YAMUX)
    assert (await go_peers(go))[py.node.peer_id] == [str(py.addr)]


# -- streams -----------------------------------------------------------------------------


async def test_go_opens_stream_to_p2pnode_handler(go: P2pd, py: P2pnodeSide) -> None:
    await go_dials(go, py)
    reader, writer, protocol = await go.open_stream(py.node.peer_id.to_bytes(), [ECHO])
    assert protocol == ECHO
    sent = 0
    try:
        async with asyncio.timeout(TIMEOUT):
            for size in (1, 100, 5000, 70_000):
                payload = os.urandom(size)
                writer.write(payload)
                await writer.drain()
                assert await reader.readexactly(size) == payload
                sent += size
    finally:
        # The daemon turns the end of our socket into a close of the libp2p stream: the
        # handler's read() must then return b"" and the handler finish.
        writer.close()
    assert await asyncio.wait_for(py.echo_done.get(), TIMEOUT) == sent


async def test_p2pnode_opens_stream_to_go_handler(go: P2pd, py: P2pnodeSide) -> None:
    seen: asyncio.Queue[tuple[StreamInfo, int]] = asyncio.Queue()

    async def echo(info: StreamInfo, reader: Reader, w: Writer) -> None:
        total = 0
        while chunk := await reader.read(65536):
            total += len(chunk)
            w.write(chunk)
            await w.drain()
        seen.put_nowait((info, total))

    await go.add_handler(ECHO, echo)
    stream = await py.node.new_stream(go_addr(go), [ECHO])
    sent = 0
    async with asyncio.timeout(TIMEOUT):
        for size in (1, 100, 5000, 70_000):
            payload = os.urandom(size)
            await stream.write(payload)
            assert await stream.readexactly(size) == payload
            sent += size
        # Our FIN makes the daemon close the handler's socket (it cannot answer after it).
        await stream.close()
        info, total = await seen.get()
    assert (PeerId.from_bytes(info.peer), info.protocol, total) == (py.node.peer_id, ECHO, sent)


# -- 32 MiB each way -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [UPLOAD, DOWNLOAD], ids=["to-p2pnode", "from-p2pnode"])
async def test_go_transfers_32_mib_with_p2pnode(go: P2pd, py: P2pnodeSide, mode: int) -> None:
    await go_dials(go, py)
    reader, writer, _ = await go.open_stream(py.node.peer_id.to_bytes(), [BULK])
    try:
        async with asyncio.timeout(TIMEOUT * 4):
            writer.write(BULK_HEADER.pack(SIZE_32MIB, mode))
            if mode == UPLOAD:
                payload = os.urandom(SIZE_32MIB)
                view = memoryview(payload)
                for offset in range(0, SIZE_32MIB, CHUNK):
                    writer.write(view[offset : offset + CHUNK])
                    await writer.drain()
                assert await reader.readexactly(32) == hashlib.sha256(payload).digest()
            else:
                await writer.drain()
                digest = hashlib.sha256()
                remaining = SIZE_32MIB
                while remaining:
                    chunk = await reader.read(min(remaining, CHUNK))
                    assert chunk, f"download ended {remaining} bytes early"
                    digest.update(chunk)
                    remaining -= len(chunk)
                assert await reader.readexactly(32) == digest.digest()
            assert await reader.read() == b""  # p2pnode closed; the daemon passed it on
    finally:
        writer.close()


async def go_bulk(info: StreamInfo, reader: Reader, w: Writer) -> None:
    """The bulk protocol's server, on the go side."""
    size, mode = BULK_HEADER.unpack(await reader.readexactly(BULK_HEADER.size))
    if mode == UPLOAD:
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            chunk = await reader.read(min(remaining, CHUNK))
            if not chunk:
                raise AssertionError(f"upload ended {remaining} bytes early")
            digest.update(chunk)
            remaining -= len(chunk)
        w.write(digest.digest())
    else:
        payload = os.urandom(size)
        view = memoryview(payload)
        for offset in range(0, size, CHUNK):
            w.write(view[offset : offset + CHUNK])
            await w.drain()
        w.write(hashlib.sha256(payload).digest())
    await w.drain()


@pytest.mark.parametrize("mode", [UPLOAD, DOWNLOAD], ids=["to-go", "from-go"])
async def test_p2pnode_transfers_32_mib_with_go(go: P2pd, py: P2pnodeSide, mode: int) -> None:
    await go.add_handler(BULK, go_bulk)
    stream = await py.node.new_stream(go_addr(go), [BULK])
    async with asyncio.timeout(TIMEOUT * 4):
        await stream.write(BULK_HEADER.pack(SIZE_32MIB, mode))
        if mode == UPLOAD:
            payload = os.urandom(SIZE_32MIB)
            view = memoryview(payload)
            for offset in range(0, SIZE_32MIB, CHUNK):
                await stream.write(view[offset : offset + CHUNK])
            assert await stream.readexactly(32) == hashlib.sha256(payload).digest()
        else:
            digest = hashlib.sha256()
            remaining = SIZE_32MIB
            while remaining:
                chunk = await stream.read(min(remaining, CHUNK))
                assert chunk, f"download ended {remaining} bytes early"
                digest.update(chunk)
                remaining -= len(chunk)
            assert await stream.readexactly(32) == digest.digest()
        assert await stream.read() == b""  # the go handler returned: the daemon closed
        await stream.close()


# -- tasks (/p2pnode/task/1.0.0, docs/task-protocol.md) --------------------------------------


async def go_task_request(go: P2pd, py: P2pnodeSide, request: dict[str, object]) -> object:
    """Send one task from go; the decoded response. The client keeps its write side open:
    a half-close would, through the daemon, close the stream before the answer arrives."""
    reader, writer, protocol = await go.open_stream(py.node.peer_id.to_bytes(), [TASK])
    try:
        assert protocol == TASK
        async with asyncio.timeout(TIMEOUT):
            writer.write(frame(request))
            await writer.drain()
            response = json.loads(await read_delimited(reader))
            assert await reader.read() == b""  # one response, then the server closed
    finally:
        writer.close()
    return response


async def test_go_sends_task_to_p2pnode(go: P2pd, py: P2pnodeSide) -> None:
    await go_dials(go, py)
    response = await go_task_request(go, py, {"task_id": "go-1", "input": "hi from go"})
    assert isinstance(response, dict)
    assert response["task_id"] == "go-1" and response["output"] == "hi from go", response
    assert "error" not in response and isinstance(response["latency_ms"], int), response


async def test_go_sends_task_of_unknown_kind_to_p2pnode(go: P2pd, py: P2pnodeSide) -> None:
    await go_dials(go, py)
    response = await go_task_request(go, py, {"task_id": "go-2", "input": "x", "kind": "nope"})
    assert isinstance(response, dict)
    assert response["task_id"] == "go-2" and response["output"] == "", response
    assert response["error"]["code"] == "unknown_kind", response


async def go_task_server(info: StreamInfo, reader: Reader, w: Writer) -> None:
    """A task server on the go side, from docs/task-protocol.md: its one kind, "default",
    answers the input in upper case (so the answer is visibly the go side's)."""
    request = json.loads(await read_delimited(reader, 1 << 20))
    response: dict[str, object] = {"task_id": request["task_id"], "latency_ms": 0}
    if request.get("kind", "default") == "default":
        response["output"] = request["input"].upper()
    else:
        response["output"] = ""
        response["error"] = {"code": "unknown_kind", "message": "kinds: default"}
    w.write(frame(response))
    await w.drain()


async def test_p2pnode_sends_task_to_go(go: P2pd, py: P2pnodeSide) -> None:
    # send_task is the spec's client: it half-closes after its request. Through the daemon
    # that FIN closes the go handler's socket fully, so the server's answer races the
    # daemon's close and is usually lost (send_task then sees the stream reset: measured
    # 33 answers out of 200 with this daemon). It cannot be tested against a server
    # behind the bridge. What the bridge carries is the keep-open client that p2pnode's
    # own server also accepts: the request, then the response, with no half-close.
    await go.add_handler(TASK, go_task_server)
    for kind, expected in ((None, ("HI FROM P2PNODE", None)), ("nope", ("", "unknown_kind"))):
        request: dict[str, object] = {"task_id": f"py-{kind}", "input": "hi from p2pnode"}
        if kind:
            request["kind"] = kind
        stream = await py.node.new_stream(go_addr(go), [TASK])
        async with asyncio.timeout(TIMEOUT):
            await stream.write(frame(request))
            response = json.loads(await read_frame(stream))
            assert await stream.read() == b""
            await stream.close()
        assert response["task_id"] == request["task_id"], response
        assert (response["output"], response.get("error", {}).get("code")) == expected
