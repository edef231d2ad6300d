"""Attacking peers for tests/test_adversarial.py, built from the sans-I/O cores.

``python -m tests.attackers NAME /ip4/.../tcp/.../p2p/<id> [--source IP]`` runs one
attack against a node from its own process (so that its CPU and memory are not the
good peer's, and the node sees a separate host when ``--source`` is another loopback
address). It prints one JSON line ``{"event": "ready"}`` once the attack is under way,
keeps at it until its stdin closes (or ``--max-seconds`` pass), then prints
``{"event": "done", ...}`` with what it saw and exits, which closes every socket.

Each attack is bounded in what it sends and how long it runs. The frames are made
with the cores the node itself runs on (the Noise handshake and ``NoiseTransport``,
``YamuxSession`` and yamux's ``encode_header``, multistream's ``encode_message``, the
task protocol's codec): the attacker speaks the protocols exactly up to the point
where it chooses not to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from p2pnode.errors import HandshakeError, P2PError
from p2pnode.net.transport import TransportConfig, _HandshakeProtocol, _negotiate_security_dialer
from p2pnode.protocols.identify import PROTOCOL_ID as IDENTIFY_ID
from p2pnode.protocols.identify_service import PUSH_PROTOCOL_ID
from p2pnode.protocols.ping import PROTOCOL_ID as PING_ID
from p2pnode.protocols.task.messages import PROTOCOL_ID as TASK_ID
from p2pnode.protocols.task.messages import TaskRequest, encode_request
from p2pnode.wire.framing import FrameDecoder, encode_frame
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.mplex import PROTOCOL_ID as MPLEX_ID
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.multistream import encode_message
from p2pnode.wire.muxer import (
    GoAwayReceived,
    StreamData,
    StreamEnded,
    StreamReset,
)
from p2pnode.wire.noise import PROTOCOL_ID as NOISE_ID
from p2pnode.wire.noise import NoiseHandshake
from p2pnode.wire.varint import encode_uvarint
from p2pnode.wire.yamux import (
    HEADER_SIZE,
    INITIAL_WINDOW,
    Flag,
    FrameType,
    YamuxConfig,
    YamuxSession,
    encode_header,
)
from p2pnode.wire.yamux import PROTOCOL_ID as YAMUX_ID

MULTISTREAM = encode_message("/multistream/1.0.0")
MiB = 1024 * 1024


def proposal(protocol: str) -> bytes:
    """What a dialer sends to select ``protocol`` optimistically on a new stream."""
    return MULTISTREAM + encode_message(protocol)


def task_request(kind: str, input: str, task_id: str) -> bytes:
    return encode_frame(encode_request(TaskRequest(task_id, input, kind)))


@dataclass(slots=True)
class Target:
    host: str
    port: int
    peer_id: PeerId
    source: str | None  # local address to connect from (another "host" on loopback)

    @classmethod
    def parse(cls, maddr: str, source: str | None) -> Target:
        addr = Multiaddr.from_string(maddr)
        host, port = addr.tcp_host_port()
        assert addr.peer_id is not None
        return cls(host, port, addr.peer_id, source)


async def tcp_connect(target: Target, rcvbuf: int | None = None) -> _HandshakeProtocol:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if rcvbuf is not None:  # before connect, so the TCP window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if target.source:
        sock.bind((target.source, 0))
    try:
        await loop.sock_connect(sock, (target.host, target.port))
    except BaseException:
        sock.close()
        raise
    _, raw = await loop.create_connection(_HandshakeProtocol, sock=sock)
    return raw


class RawPeer:
    """One connection past the Noise handshake, with a yamux session we drive by hand.

    ``pump()`` (a task) reads, decrypts and feeds the session, collecting per stream
    the data (its first ``keep`` bytes and a byte count), ends and resets. Credit is
    given back only when ``consume`` is set: a peer that never consumes never grants
    the node more window than the first.
    """

    def __init__(
        self, raw: _HandshakeProtocol, secure: Any, early: bytes, config: YamuxConfig | None
    ) -> None:
        self.raw = raw
        self.secure = secure
        config = config or YamuxConfig(max_ack_backlog=1 << 20)  # we open without waiting
        self.mux = YamuxSession(is_client=True, config=config)
        self.keep = 4096
        self.consume = False
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.received: Counter[int] = Counter()
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.goaway: int | None = None
        self.closed = False
        self.close_reason = ""
        self.changed = asyncio.Event()
        self.bytes_in = 0
        self._pump: asyncio.Task[None] | None = None
        if early:
            self._feed(early)

    @property
    def transport(self) -> asyncio.Transport:
        assert self.raw.transport is not None
        return self.raw.transport

    def write_plain(self, data: bytes | bytearray) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(self.secure.encrypt(data))

    def flush(self) -> None:
        self.write_plain(self.mux.data_to_send())

    def start_pump(self) -> None:
        self._pump = asyncio.ensure_future(self.pump())

    async def pump(self) -> None:
        try:
            while True:
                chunk = await self.raw.receive()
                self.bytes_in += len(chunk)
                self._feed(self.secure.receive_data(chunk))
                self.flush()
        except (HandshakeError, P2PError, OSError) as exc:
            self.close_reason = f"{type(exc).__name__}: {exc}"
            self.closed = True
            self.changed.set()

    def _feed(self, plaintext: bytes | bytearray) -> None:
        for event in self.mux.receive_data(plaintext):
            if isinstance(event, StreamData):
                sid = event.stream_id
                self.received[sid] += len(event.data)
                kept = self.data[sid]
                if len(kept) < self.keep:
                    kept += event.data[: self.keep - len(kept)]
                if self.consume:
                    self.mux.consumed(sid, len(event.data))
            elif isinstance(event, StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                self.reset.add(event.stream_id)
            elif isinstance(event, GoAwayReceived):
                self.goaway = event.code
        self.changed.set()

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until ``done()``; False if it never was."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.closed and not done()):
                return done()
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    async def until_writable(self, high: int, stop: asyncio.Event, timeout: float = 5.0) -> bool:
        """Wait while our own socket buffer holds more than ``high`` bytes (the node reads
        no more from us); False if it still did at ``timeout`` or at ``stop``."""
        deadline = time.monotonic() + timeout
        while self.transport.get_write_buffer_size() > high and not self.transport.is_closing():
            if stop.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def send_all(self, sid: int, data: bytes) -> None:
        """Send ``data`` on ``sid``, waiting (bounded) for credit when the window is short."""
        view = memoryview(data)
        while view:
            view = view[self.mux.send(sid, view) :]
            self.flush()
            if view and not await self.until(
                lambda: self.mux.send_window(sid) > 0 or self.closed, 5
            ):
                raise P2PError(f"no window on stream {sid} for 5 s")
            if self.closed:
                raise P2PError("the node closed the connection")

    def stop_reading(self) -> None:
        self.transport.pause_reading()

    def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self.raw.transport is not None:
            self.raw.transport.abort()


async def secure_connect(
    target: Target,
    identity: Identity,
    *,
    muxers: tuple[str, ...] = (YAMUX_ID,),
    config: YamuxConfig | None = None,
    rcvbuf: int | None = None,
    transport_config: TransportConfig | None = None,
) -> RawPeer:
    raw = await tcp_connect(target, rcvbuf)
    try:
        tconfig = transport_config or TransportConfig(identity=identity, muxers=muxers)
        async with asyncio.timeout(10):
            upgraded = await _negotiate_security_dialer(raw, tconfig, target.peer_id)
            raw.write(upgraded.unsent)  # Noise message 3: the caller sends it
    except BaseException:
        if raw.transport is not None:
            raw.transport.abort()
        raise
    return RawPeer(raw, upgraded.secure, upgraded.early_plaintext, config)


class FrameCounter:
    """Counts the yamux frames in a plaintext byte stream without a session."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.acked: set[int] = set()
        self.reset: set[int] = set()
        self.goaway: int | None = None

    def feed(self, data: bytes | bytearray) -> None:
        buffer = self._buffer
        buffer += data
        pos = 0
        while len(buffer) - pos >= HEADER_SIZE:
            _, kind, flags, sid, length = struct.unpack_from(">BBHII", buffer, pos)
            size = HEADER_SIZE + (length if kind == FrameType.DATA else 0)
            if len(buffer) - pos < size:
                break
            pos += size
            if kind == FrameType.GO_AWAY:
                self.goaway = length
            elif kind in (FrameType.DATA, FrameType.WINDOW_UPDATE):
                if flags & Flag.RST:
                    self.reset.add(sid)
                if flags & Flag.ACK:
                    self.acked.add(sid)
        del buffer[:pos]


@dataclass
class Attack:
    """What every attack gets: where, who it is, and when to stop."""

    target: Target
    stop: asyncio.Event
    report: dict[str, Any] = field(default_factory=dict)
    identity: Identity = field(default_factory=Identity.generate)
    _ready: bool = False

    def ready(self, **fields: Any) -> None:
        if not self._ready:
            self._ready = True
            print(json.dumps({"event": "ready", **fields}), flush=True)

    async def hold(self) -> None:
        """Keep what the attack holds until we are told to go."""
        await self.stop.wait()

    async def pause(self, seconds: float) -> bool:
        """Sleep, or return True at once if the attack is to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()

    def connect(self, **kwargs: Any) -> Awaitable[RawPeer]:
        return secure_connect(self.target, self.identity, **kwargs)


AttackFunc = Callable[[Attack], Awaitable[None]]
ATTACKS: dict[str, AttackFunc] = {}


def attack(func: AttackFunc) -> AttackFunc:
    ATTACKS[func.__name__.removeprefix("attack_")] = func
    return func


# -- floods that never read ---------------------------------------------------------------


@attack
async def attack_ping_flood(a: Attack) -> None:
    """Ping streams, 256 KiB of pings each (all the window a new stream has), and muxer
    pings, as fast as the node takes them; nothing the node sends is ever read."""
    peer = await a.connect()
    a.ready()
    a.report.update(await _ping_flood(a, peer, 4000))
    await a.hold()


@attack
async def attack_ping_flood_8_connections(a: Attack) -> None:
    """The ping flood from one identity over 8 connections at once (the most a peer may
    have): what the node holds for a peer is bounded per peer, not per connection."""
    peers = await asyncio.gather(*(a.connect() for _ in range(8)))
    a.ready()
    reports = await asyncio.gather(*(_ping_flood(a, peer, 1000) for peer in peers))
    a.report.update(
        connections=len(peers),
        streams=sum(r["streams"] for r in reports),
        sent=sum(r["sent"] for r in reports),
        stalls=sum(r["stalls"] for r in reports),
    )
    await a.hold()


async def _ping_flood(a: Attack, peer: RawPeer, max_streams: int) -> dict[str, int]:
    peer.stop_reading()
    pings = os.urandom(32) * (INITIAL_WINDOW // 32)
    head = proposal(PING_ID)
    body = memoryview(pings)[: INITIAL_WINDOW - len(head)]
    streams = sent = stalls = 0
    while not a.stop.is_set() and streams < max_streams:
        for _ in range(8):
            sid = peer.mux.open_stream()
            sent += peer.mux.send(sid, head) + peer.mux.send(sid, body)
            peer.mux.close_stream(sid)
            peer.mux.ping()
            streams += 1
        peer.flush()
        if not await peer.until_writable(4 * MiB, a.stop, timeout=0.5):
            stalls += 1  # the node stopped reading us: wait for it (until told to stop)
            await peer.until_writable(4 * MiB, a.stop, timeout=60)
        await asyncio.sleep(0)
    return {"streams": streams, "sent": sent, "stalls": stalls,
            "unsent_here": peer.transport.get_write_buffer_size()}  # fmt: skip


@attack
async def attack_identify_flood(a: Attack) -> None:
    """Identify requests (SYN, proposal, FIN in one frame each) as fast as the node takes
    them; the answers are never read."""
    peer = await a.connect()
    peer.stop_reading()
    head = proposal(IDENTIFY_ID)
    flags = Flag.SYN | Flag.FIN
    sid = 1
    stalls = 0
    a.ready()
    while not a.stop.is_set() and sid < 2 * 100_000:
        frames = []
        for _ in range(500):
            frames.append(encode_header(FrameType.DATA, flags, sid, len(head)) + head)
            sid += 2
        peer.write_plain(b"".join(frames))
        if not await peer.until_writable(MiB, a.stop, timeout=0.5):
            stalls += 1  # the node stopped reading us: wait for it (until told to stop)
            await peer.until_writable(MiB, a.stop, timeout=60)
        await asyncio.sleep(0.002)
    a.report.update(requests=sid // 2, stalls=stalls,
                    unsent_here=peer.transport.get_write_buffer_size())  # fmt: skip
    await a.hold()


# -- streams and connections held -----------------------------------------------------------


@attack
async def attack_syn_flood(a: Attack) -> None:
    """10,000 stream SYNs on one connection, never a byte of negotiation; what the node
    answers (ACK or RST) is counted."""
    peer = await a.connect()
    counter = FrameCounter()

    async def read() -> None:
        with contextlib.suppress(HandshakeError, P2PError, OSError):
            while True:
                counter.feed(peer.secure.receive_data(await peer.raw.receive()))

    reader = asyncio.ensure_future(read())
    a.ready()
    total = 10_000
    for batch in range(0, total, 500):
        frames = [
            encode_header(FrameType.WINDOW_UPDATE, Flag.SYN, 2 * n + 1, 0)
            for n in range(batch, batch + 500)
        ]
        peer.write_plain(b"".join(frames))
        if await a.pause(0.05):
            break
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not a.stop.is_set():
        if len(counter.acked | counter.reset) >= total:
            break
        await asyncio.sleep(0.05)
    answered = counter.acked | counter.reset
    a.report.update(syns=total, answered=len(answered), acked=len(counter.acked),
                    reset=len(counter.reset),
                    acked_not_reset=len(counter.acked - counter.reset))  # fmt: skip
    await a.hold()
    a.report.update(final_reset=len(counter.reset),
                    final_acked_not_reset=len(counter.acked - counter.reset))  # fmt: skip
    reader.cancel()


@attack
async def attack_idle_streams(a: Attack) -> None:
    """5,000 streams from one identity, spread over as many connections as the node lets
    it keep (8 asked for), each negotiated (ping, task or identify push) and then idle."""
    peers: list[RawPeer] = []
    for _ in range(8):
        with contextlib.suppress(P2PError, OSError):
            peer = await a.connect()
            peer.start_pump()
            peers.append(peer)
    await asyncio.sleep(0.2)  # connections beyond the per-peer limit are closed by now
    peers = [p for p in peers if not p.closed]
    protocols = [PING_ID, TASK_ID, PUSH_PROTOCOL_ID]
    opened: list[tuple[RawPeer, int, str]] = []
    a.ready(connections=len(peers))
    total = 5000
    n = 0
    while n < total and peers and not a.stop.is_set():
        for _ in range(250):
            peer = peers[n % len(peers)]
            protocol = protocols[n % len(protocols)]
            sid = peer.mux.open_stream()
            peer.mux.send(sid, proposal(protocol))
            opened.append((peer, sid, protocol))
            n += 1
        for peer in peers:
            peer.flush()
        if await a.pause(0.03):
            break

    def negotiated(peer: RawPeer, sid: int, protocol: str) -> bool:
        return bytes(peer.data[sid]).startswith(proposal(protocol))

    def settled() -> bool:
        return all(
            sid in p.reset or p.closed or negotiated(p, sid, proto) for p, sid, proto in opened
        )

    deadline = time.monotonic() + 8
    while not settled() and time.monotonic() < deadline and not a.stop.is_set():
        await asyncio.sleep(0.05)
    alive = Counter(
        proto for p, sid, proto in opened
        if not p.closed and sid not in p.reset and negotiated(p, sid, proto)
    )  # fmt: skip
    a.report.update(opened=len(opened), connections=len(peers), alive=dict(alive),
                    reset=sum(1 for p, sid, _ in opened if sid in p.reset),
                    settled=settled())  # fmt: skip
    await a.hold()
    for peer in peers:
        peer.close()


@attack
async def attack_window_fill(a: Attack) -> None:
    """32 ping streams, each sent every byte of window the node grants, none of its
    echo ever consumed (and no window granted to it beyond the first 256 KiB)."""
    peer = await _window_fill_peer(a)
    a.ready()
    a.report.update(await _window_fill(a, peer))
    await a.hold()


@attack
async def attack_window_fill_8_connections(a: Attack) -> None:
    """The window fill from one identity over 8 connections at once: the windows the
    node grants one peer come from one budget, however many connections it opens."""
    peers = await asyncio.gather(*(_window_fill_peer(a) for _ in range(8)))
    a.ready()
    reports = await asyncio.gather(*(_window_fill(a, peer) for peer in peers))
    a.report.update(
        connections=len(peers),
        sent=sum(r["sent"] for r in reports),
        echoed=sum(r["echoed"] for r in reports),
        full=all(r.get("full") for r in reports),
        refused=sum(r["reset"] for r in reports),
    )
    await a.hold()


async def _window_fill_peer(a: Attack) -> RawPeer:
    peer = await a.connect(config=YamuxConfig(max_receive_window=INITIAL_WINDOW,
                                              max_ack_backlog=1024))  # fmt: skip
    peer.keep = 0
    peer.start_pump()
    return peer


async def _window_fill(a: Attack, peer: RawPeer) -> dict[str, Any]:
    streams = [peer.mux.open_stream() for _ in range(32)]
    for sid in streams:
        peer.mux.send(sid, proposal(PING_ID))
    peer.flush()
    await peer.until(lambda: all(s in peer.reset or peer.mux._streams[s].acked
                                 for s in streams), 5)  # fmt: skip
    streams = [s for s in streams if s not in peer.reset]  # refused: over the peer's budget
    block = os.urandom(32) * 2048
    sent = len(streams) * len(proposal(PING_ID))
    report: dict[str, Any] = {}
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not a.stop.is_set() and not peer.closed:
        progress = 0
        for sid in streams:
            if sid in peer.reset:
                continue
            while (window := peer.mux.send_window(sid)) > 0:
                progress += peer.mux.send(sid, block[: min(window, len(block))])
            peer.flush()
        sent += progress
        if progress:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            report["full"] = True  # no window left for half a second: the node holds it all
            break
        await peer.until_writable(4 * MiB, a.stop)
        peer.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.changed.wait(), 0.1)
    report.update(sent=sent, echoed=sum(peer.received.values()), closed=peer.closed,
                  reset=len(peer.reset))  # fmt: skip
    return report


@attack
async def attack_slow_reader(a: Attack) -> None:
    """32 task streams at once, each asking for an 8 MiB answer, read at ~300 KB/s
    (a small socket buffer, a read every 20 ms); finished ones are replaced (200 in all)."""
    peer = await a.connect(rcvbuf=32 * 1024)
    peer.consume = True
    peer.keep = 256
    peer.stop_reading()
    size = str(8 * MiB)
    head = proposal(TASK_ID)
    asked: list[int] = []

    def ask() -> None:
        sid = peer.mux.open_stream()
        peer.mux.send(sid, head + task_request("big", size, f"slow{len(asked)}"))
        peer.mux.close_stream(sid)
        asked.append(sid)

    for _ in range(32):
        ask()
    peer.flush()
    a.ready()
    deadline = time.monotonic() + 60
    while not a.stop.is_set() and not peer.closed and time.monotonic() < deadline:
        peer.transport.resume_reading()
        try:
            chunk = await asyncio.wait_for(peer.raw.receive(), 0.5)
        except TimeoutError:
            chunk = b""
        except (HandshakeError, OSError):
            peer.closed = True
            break
        peer.transport.pause_reading()
        if chunk:
            peer.bytes_in += len(chunk)
            peer._feed(peer.secure.receive_data(chunk))
        done = [s for s in asked if s in peer.ended or s in peer.reset]
        while len(asked) - len(done) < 32 and len(asked) < 200:
            ask()
            done = [s for s in asked if s in peer.ended or s in peer.reset]
        peer.flush()
        await asyncio.sleep(0.02)
    outcomes: Counter[str] = Counter()
    for sid in asked:
        text = bytes(peer.data[sid])
        if sid in peer.reset:
            outcomes["reset"] += 1
        elif sid not in peer.ended:
            outcomes["unfinished"] += 1
        elif b'"busy"' in text:
            outcomes["busy"] += 1
        elif b'"output":"xxx' in text and peer.received[sid] > 8 * MiB:
            outcomes["answered"] += 1
        else:
            outcomes["other"] += 1
    a.report.update(asked=len(asked), bytes_in=peer.bytes_in, closed=peer.closed, **outcomes)
    await a.hold()


@attack
async def attack_idle_connections(a: Attack) -> None:
    """500 connections from one identity (16 dialing at once), each left idle once its
    handshake is done; counts how many the node kept."""
    config = TransportConfig(identity=a.identity, muxers=(YAMUX_ID,))
    peers: list[RawPeer] = []
    failed = 0
    a.ready()
    attempts = 500
    gate = asyncio.Semaphore(16)

    async def one() -> None:
        nonlocal failed
        async with gate:
            if a.stop.is_set():
                return
            try:
                peer = await a.connect(transport_config=config)
            except (P2PError, OSError):
                failed += 1
                return
            peer.start_pump()
            peers.append(peer)

    await asyncio.gather(*(one() for _ in range(attempts)))
    await asyncio.sleep(0.5)
    open_now = sum(1 for p in peers if not p.closed)
    a.report.update(attempts=attempts, handshakes=len(peers), failed=failed, kept=open_now)
    await a.hold()
    a.report.update(kept_at_end=sum(1 for p in peers if not p.closed))
    for peer in peers:
        peer.close()


@attack
async def attack_half_handshakes(a: Attack) -> None:
    """300 connections that send the first half of the Noise handshake's first message,
    then nothing; counts how many the node closed at once and how many it holds."""
    raws: list[_HandshakeProtocol] = []
    failed = 0
    noise = NoiseHandshake(a.identity, initiator=True)
    partial = MULTISTREAM + encode_message(NOISE_ID) + noise.start()[:20]
    a.ready()
    for _ in range(300 // 25):
        for _ in range(25):
            try:
                raw = await tcp_connect(a.target)
            except OSError:
                failed += 1
                continue
            raw.write(partial)
            raws.append(raw)
        if await a.pause(0.05):
            break
    await asyncio.sleep(0.5)

    def alive() -> int:
        return sum(1 for r in raws if r._error is None)

    a.report.update(opened=len(raws), failed=failed, held=alive())
    await a.hold()
    a.report.update(held_at_end=alive())
    for raw in raws:
        if raw.transport is not None:
            raw.transport.abort()


# -- malformed input ------------------------------------------------------------------------


async def _closed_by_node(raw: _HandshakeProtocol, timeout: float = 5.0) -> bool:
    """Read until the node closes the connection; False if it did not within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await raw.receive()
    except HandshakeError:
        return True
    except TimeoutError:
        return False


def _abort(raw: _HandshakeProtocol) -> None:
    if raw.transport is not None:
        raw.transport.abort()


def _response_of(peer: RawPeer, sid: int, protocol: str) -> bytes | None:
    """The task response body on ``sid`` (after the multistream echo), if whole."""
    data = bytes(peer.data[sid])
    head = proposal(protocol)
    if not data.startswith(head):
        return None
    messages = FrameDecoder(16 * MiB).receive_data(data[len(head) :])
    return messages[0] if messages else None


@attack
async def attack_oversized(a: Attack) -> None:
    """Each length field the node reads, set beyond its limit, round after round: a
    multistream line, a Noise message, yamux Data frames, a SYN carrying more than the
    first window, an mplex frame, a multistream line, a task request and an identify
    push inside streams. Each must end only what it concerns."""
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []

    def expect(case: str, ok: bool) -> None:
        outcomes[f"{case}:{'ok' if ok else 'unexpected'}"] += 1
        if not ok and len(unexpected) < 20:
            unexpected.append(case)

    async def ms_line() -> None:
        raw = await tcp_connect(a.target)
        raw.write(encode_uvarint(1 << 20) + os.urandom(4096))
        expect("multistream_line", await _closed_by_node(raw))
        _abort(raw)

    async def ms_proposal() -> None:  # a valid header, then a proposal over the limit
        raw = await tcp_connect(a.target)
        raw.write(MULTISTREAM + encode_uvarint(1025) + b"/" * 1024 + b"\n")
        expect("multistream_proposal", await _closed_by_node(raw))
        _abort(raw)

    async def yamux_closing(case: str, frame: bytes) -> None:
        peer = await a.connect()
        peer.write_plain(frame)
        closed = await _closed_by_node(peer.raw)
        expect(case, closed)
        peer.close()

    async def mplex_frame() -> None:
        peer = await a.connect(muxers=(MPLEX_ID,))
        peer.write_plain(encode_uvarint(3 << 3 | 0) + encode_uvarint(0) +  # new stream 3
                         encode_uvarint(3 << 3 | 2) + encode_uvarint(64 * MiB))  # fmt: skip
        expect("mplex_frame", await _closed_by_node(peer.raw))
        peer.close()

    async def in_streams() -> None:
        peer = await a.connect()
        peer.keep = 2 * MiB
        peer.start_pump()
        line = peer.mux.open_stream()
        peer.mux.send(line, MULTISTREAM + encode_uvarint(100_000) + os.urandom(8192))
        task = peer.mux.open_stream()
        peer.mux.send(task, proposal(TASK_ID) + encode_uvarint(64 * MiB) + os.urandom(200_000))
        push = peer.mux.open_stream()
        oversized_push = encode_uvarint(8 * MiB) + os.urandom(100_000)
        peer.mux.send(push, proposal(PUSH_PROTOCOL_ID) + oversized_push)
        peer.flush()
        await peer.until(lambda: {line, push} <= peer.reset and (
            task in peer.reset or task in peer.ended), 5)  # fmt: skip
        if peer.closed:
            expect(f"in_streams connection closed: {peer.close_reason}", False)
        expect("stream_multistream_line", line in peer.reset)
        expect("identify_push", push in peer.reset)
        body = _response_of(peer, task, TASK_ID)
        expect("task_request", body is not None and b"too_large" in body)
        # ... and the connection still works: a ping on it
        ping = peer.mux.open_stream()
        payload = os.urandom(32)
        peer.mux.send(ping, proposal(PING_ID) + payload)
        peer.flush()
        pong = proposal(PING_ID) + payload
        expect("connection_survives",
               await peer.until(lambda: bytes(peer.data[ping]) == pong, 5))  # fmt: skip
        # a task id of 900 kB: a line of that size in serve's log, and an answer with it
        huge = peer.mux.open_stream()
        await peer.send_all(huge, proposal(TASK_ID) + task_request("echo", "x", "L" * 900_000))
        peer.mux.close_stream(huge)
        peer.flush()
        await peer.until(lambda: huge in peer.ended or huge in peer.reset, 5)
        body = _response_of(peer, huge, TASK_ID)
        expect("huge_task_id", body is not None and b'"output":"x"' in body and len(body) > 900_000)
        peer.close()

    cases: list[Callable[[], Awaitable[None]]] = [
        ms_line,
        ms_proposal,
        lambda: yamux_closing("yamux_data_frame", encode_header(FrameType.DATA, 0, 0, 64 * MiB)),
        lambda: yamux_closing(
            "yamux_data_beyond_window",
            encode_header(FrameType.DATA, Flag.SYN, 1, 17 * MiB) + os.urandom(65536),
        ),
        lambda: yamux_closing(
            "yamux_syn_over_first_window",
            encode_header(FrameType.DATA, Flag.SYN, 1, INITIAL_WINDOW + 1)
            + os.urandom(INITIAL_WINDOW + 1),
        ),
        mplex_frame,
        in_streams,
    ]
    a.ready()
    rounds = 0
    while rounds < 15 and not a.stop.is_set():
        for case in cases:
            try:
                await case()
            except (P2PError, OSError) as exc:
                expect(f"error {type(exc).__name__}: {exc}", False)
        rounds += 1
        await asyncio.sleep(0.05)
    a.report.update(rounds=rounds, outcomes=dict(outcomes), unexpected=unexpected)
    await a.hold()


@attack
async def attack_random_bytes(a: Attack) -> None:
    """Connections with a valid handshake, then random bytes: unencrypted, encrypted
    (as muxer frames), as a stream's negotiation, and as a task stream's request."""
    outcomes: Counter[str] = Counter()

    async def raw_random() -> None:
        peer = await a.connect()
        peer.transport.write(os.urandom(70_000))  # holds at least one whole Noise frame
        outcomes["raw:" + ("closed" if await _closed_by_node(peer.raw, 3) else "open")] += 1
        peer.close()

    async def encrypted_random() -> None:
        peer = await a.connect()
        peer.write_plain(os.urandom(4096))
        outcomes["muxer:" + ("closed" if await _closed_by_node(peer.raw, 3) else "open")] += 1
        peer.close()

    async def in_streams() -> None:
        peer = await a.connect()
        peer.start_pump()
        garbage = peer.mux.open_stream()
        peer.mux.send(garbage, os.urandom(2048))
        task = peer.mux.open_stream()
        peer.mux.send(task, proposal(TASK_ID) + os.urandom(2048))
        peer.mux.close_stream(task)
        peer.flush()
        await peer.until(lambda: garbage in peer.reset and (
            task in peer.reset or task in peer.ended), 5)  # fmt: skip
        outcomes["negotiation:" + ("reset" if garbage in peer.reset else "open")] += 1
        body = _response_of(peer, task, TASK_ID)
        if body is not None and (b"bad_request" in body or b"too_large" in body):
            outcomes["task:refused"] += 1
        else:
            outcomes["task:" + ("reset" if task in peer.reset else "other")] += 1
        peer.close()

    a.ready()
    rounds = 0
    while rounds < 40 and not a.stop.is_set():
        for case in (raw_random, encrypted_random, in_streams):
            try:
                await case()
            except (P2PError, OSError) as exc:
                outcomes[f"error:{type(exc).__name__}"] += 1
        rounds += 1
    a.report.update(rounds=rounds, outcomes=dict(outcomes))
    await a.hold()


def deep_bodies() -> dict[str, bytes]:
    """Task requests of about 1 MiB (the request limit) nested as deep as that allows."""
    depth = 500_000
    return {
        "array_field": b'{"task_id":"d1","input":"x","extra":' + b"[" * depth + b"]" * depth + b"}",
        "object_field": b'{"task_id":"d2","input":"x","extra":' + b'{"a":' * (depth // 6)
        + b"1" + b"}" * (depth // 6) + b"}",
        "array_input": b'{"task_id":"d3","input":' + b"[" * depth + b"]" * depth + b"}",
        "unclosed": b'{"task_id":"d4","input":"x","extra":' + b"[" * (2 * depth),
        "top_level": b"[" * depth + b"]" * depth,
    }  # fmt: skip


@attack
async def attack_deep_json(a: Attack) -> None:
    """Task requests nested as deep as a 1 MiB request allows, 8 in flight, 100 in all;
    each must come back as ``bad_request``."""
    peer = await a.connect()
    peer.consume = True
    peer.start_pump()
    bodies = list(deep_bodies().values())
    head = proposal(TASK_ID)
    asked: list[int] = []
    a.ready()
    deadline = time.monotonic() + 30
    while len(asked) < 100 and not a.stop.is_set() and not peer.closed:
        if time.monotonic() > deadline:
            break
        pending = [s for s in asked if s not in peer.ended and s not in peer.reset]
        while len(pending) < 8 and len(asked) < 100:
            sid = peer.mux.open_stream()
            await peer.send_all(sid, head + encode_frame(bodies[len(asked) % len(bodies)]))
            peer.mux.close_stream(sid)
            asked.append(sid)
            pending.append(sid)
        peer.flush()
        await peer.until(lambda p=pending: any(s in peer.ended or s in peer.reset for s in p), 5)
    await peer.until(lambda: all(s in peer.ended or s in peer.reset for s in asked), 10)
    outcomes: Counter[str] = Counter()
    for sid in asked:
        body = _response_of(peer, sid, TASK_ID)
        outcomes["bad_request" if body and b"bad_request" in body else "other"] += 1
    a.report.update(asked=len(asked), outcomes=dict(outcomes), closed=peer.closed)
    await a.hold()


@attack
async def attack_output_flood(a: Attack) -> None:
    """What makes ``serve`` print: 4,000 echo tasks (32 in flight; one log line each) and
    200 connections opened and closed (two lines each)."""
    peer = await a.connect()
    peer.consume = True
    peer.start_pump()
    head = proposal(TASK_ID)
    asked: list[int] = []
    a.ready()
    churned = 0

    async def churn() -> None:
        nonlocal churned
        for _ in range(200):
            if a.stop.is_set():
                return
            with contextlib.suppress(P2PError, OSError):
                extra = await Attack(a.target, a.stop).connect()
                extra.close()
                churned += 1
            await asyncio.sleep(0.005)

    churning = asyncio.ensure_future(churn())
    deadline = time.monotonic() + 30
    while len(asked) < 4000 and not a.stop.is_set() and not peer.closed:
        if time.monotonic() > deadline:
            break
        pending = [s for s in asked if s not in peer.ended and s not in peer.reset]
        while len(pending) < 32 and len(asked) < 4000:
            sid = peer.mux.open_stream()
            peer.mux.send(sid, head + task_request("echo", f"flood {len(asked)}", f"f{len(asked)}"))
            peer.mux.close_stream(sid)
            asked.append(sid)
            pending.append(sid)
        peer.flush()
        await peer.until(lambda p=pending: any(s in peer.ended or s in peer.reset for s in p), 5)
    await peer.until(lambda: all(s in peer.ended or s in peer.reset for s in asked), 10)
    await churning
    answered = sum(1 for s in asked if (b := _response_of(peer, s, TASK_ID)) and b'"output"' in b
                   and b'"error"' not in b)  # fmt: skip
    a.report.update(asked=len(asked), answered=answered, churned=churned)
    await a.hold()


# -- running one --------------------------------------------------------------------------


async def run(name: str, target: Target, max_seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_for_stdin() -> None:
        with contextlib.suppress(OSError):
            while os.read(sys.stdin.fileno(), 4096):  # until the test closes our stdin
                pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_for_stdin, daemon=True).start()
    loop.call_later(max_seconds, stop.set)
    a = Attack(target, stop)
    started = time.monotonic()
    try:
        await ATTACKS[name](a)
    except Exception as exc:  # reported, so that the test can say what went wrong
        a.report["error"] = f"{type(exc).__name__}: {exc}"
        a.ready()
    a.report["seconds"] = round(time.monotonic() - started, 3)
    return a.report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.attackers")
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("target", help="the node's multiaddr, ending in /p2p/<id>")
    parser.add_argument("--source", default=None, help="local IP address to connect from")
    parser.add_argument("--max-seconds", type=float, default=40.0)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    target = Target.parse(args.target, args.source)
    report = asyncio.run(run(args.attack, target, args.max_seconds))
    print(json.dumps({"event": "done", **report}), flush=True)


if __name__ == "__main__":
    main()
