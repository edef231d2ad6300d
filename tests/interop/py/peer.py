"""py-libp2p 0.8.1 test peer for p2pnode's interop tests (tests/interop/test_py.py).

Runs under the py-libp2p venv (``bash bench/contenders/install_pylibp2p.sh``), never p2pnode's:

    bench/.contenders/pylibp2p-venv/bin/python tests/interop/py/peer.py \
        [--muxer yamux|mplex|both] [--seed HEX32] [--task-style one-message|eof]

It listens on 127.0.0.1 (a free port) with Noise and the given muxers (``both``: yamux
preferred), prints ``{"event": "ready", "peer_id", "addrs"}``, then reads one JSON command a
line from stdin, ``{"id": N, "cmd": NAME, ...}``, and answers each with one line,
``{"reply": N, "ok": true, ...}`` or ``{"reply": N, "ok": false, "error": "..."}``. Commands
run concurrently. Other lines are events: ``connected`` / ``disconnected`` for each
connection, ``task-served`` / ``task-error`` for every task its server answered or failed.
The end of stdin, or ``shutdown``, ends the program.

Commands: ``dial addr`` | ``connections peer`` | ``disconnect peer`` | ``ping peer count`` |
``identify peer`` (a manual identify request, fields as received) | ``peerstore peer`` (what
py-libp2p's own automatic identify stored) | ``task peer input [repeat kind timeout_ms
concurrent client_style]`` | ``task-style style`` | ``perf-serve`` (serve ``/perf/1.0.0``
with py-libp2p's PerfService) | ``perf addr upload download`` (its client) | ``shutdown``.

The task protocol (docs/task-protocol.md) is written here the way a py-libp2p user would
write it, in two server styles: ``one-message`` answers once the length prefix is satisfied;
``eof`` reads until the client half-closes, then answers (as request-response codecs do).
Client styles: ``half-close`` (the spec's) closes the write side after the request;
``keep-open`` keeps it open until the response has arrived.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair as create_ed25519_key_pair
from libp2p.crypto.serialization import deserialize_public_key
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TMuxerOptions, TProtocol
from libp2p.host.ping import PingService
from libp2p.identity.identify.identify import ID as IDENTIFY
from libp2p.identity.identify.identify import parse_identify_response
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamClosed, StreamReset
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.perf import PerfService
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

TASK = TProtocol("/p2pnode/task/1.0.0")
MUXERS: dict[str, tuple[TProtocol, Any]] = {
    "yamux": (TProtocol(YAMUX_PROTOCOL_ID), Yamux),
    "mplex": (TProtocol(MPLEX_PROTOCOL_ID), Mplex),
}
MAX_TASK_MESSAGE = 4 << 20  # a 1 MiB input plus JSON, with room to spare
READ_SIZE = 1 << 16
SHORT_OUTPUT = 4096  # longer outputs are reported by length and hash only
IDENTIFY_WAIT = 10.0  # seconds `peerstore` waits for py-libp2p's own identify
SHUTDOWN_GRACE = 2.0  # seconds py-libp2p may take to close its connections


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# --- host ----------------------------------------------------------------------------------


def make_host(muxers: str, seed: bytes | None) -> IHost:
    """Noise only, the given muxers only, an Ed25519 identity (from ``seed`` if given).

    One connection per peer: with py-libp2p's default (3) every dial of a single address
    waits 250 ms for the "happy eyeballs" race to fail (bench/contenders/pylibp2p_bench.py).
    """
    options: TMuxerOptions = {}
    for name in muxers.split(","):
        protocol, muxer = MUXERS[name]
        options[protocol] = muxer
    key_pair = create_ed25519_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt=options,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )


def muxer_name(conn: Any) -> str:
    muxed = conn.muxed_conn
    if isinstance(muxed, Yamux):
        return "yamux"
    if isinstance(muxed, Mplex):
        return "mplex"
    return type(muxed).__name__


class ConnectionEvents(INotifee):
    """Prints ``connected`` / ``disconnected`` events (py-libp2p registers a connection after
    the remote's handshake has finished, so the tests wait for this event)."""

    @staticmethod
    def _event(kind: str, conn: INetConn) -> None:
        peer = str(conn.muxed_conn.peer_id)
        direction = str(conn.direction.name).lower()  # type: ignore[attr-defined]
        out({"event": kind, "peer": peer, "muxer": muxer_name(conn), "direction": direction})

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._event("connected", conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._event("disconnected", conn)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


# --- task framing (docs/task-protocol.md) --------------------------------------------------


def uvarint(value: int) -> bytes:
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def frame(obj: dict[str, Any]) -> bytes:
    body = json.dumps(obj).encode()
    return uvarint(len(body)) + body


def split_prefix(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """``(length, prefix size)`` of the varint at the start of ``buffer``; None if incomplete."""
    value = shift = 0
    for pos, byte in enumerate(buffer[:9]):
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + 1
    if len(buffer) >= 9:
        raise ValueError("a length prefix longer than 9 bytes")
    return None


async def read_chunk(stream: INetStream) -> bytes:
    """At most READ_SIZE bytes; b"" at the end (py-libp2p raises StreamEOF there)."""
    try:
        return await stream.read(READ_SIZE)
    except EOFError:
        return b""


async def read_message(stream: INetStream, max_size: int = MAX_TASK_MESSAGE) -> bytes:
    """One length-prefixed message: read until the prefix is satisfied, not further."""
    buffer = bytearray()
    while (prefix := split_prefix(buffer)) is None:
        chunk = await read_chunk(stream)
        if not chunk:
            raise EOFError("the stream ended before a length prefix")
        buffer += chunk
    size, offset = prefix
    if size > max_size:
        raise ValueError(f"a message of {size} bytes is too large")
    while len(buffer) < offset + size:
        chunk = await read_chunk(stream)
        if not chunk:
            raise EOFError(f"the stream ended after {len(buffer) - offset} of {size} bytes")
        buffer += chunk
    if len(buffer) > offset + size:
        raise ValueError(f"{len(buffer) - offset - size} bytes after the message")
    return bytes(buffer[offset:])


async def read_to_eof(stream: INetStream, limit: int) -> bytes:
    buffer = bytearray()
    while chunk := await read_chunk(stream):
        buffer += chunk
        if len(buffer) > limit:
            raise ValueError(f"more than {limit} bytes before the end of the stream")
    return bytes(buffer)


def unframe(data: bytes) -> bytes:
    """The body of the single message that ``data`` (a whole stream) must hold."""
    prefix = split_prefix(data)
    if prefix is None:
        raise EOFError("the stream ended before a length prefix")
    size, offset = prefix
    if len(data) != offset + size:
        raise ValueError(f"a prefix of {size} bytes, but {len(data) - offset} bytes follow")
    return data[offset:]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- task server ---------------------------------------------------------------------------


class TaskServer:
    """``default`` echoes, ``upper`` upper-cases, other kinds get ``unknown_kind``."""

    KINDS: ClassVar[dict[str, Callable[[str], str]]] = {"default": lambda s: s, "upper": str.upper}

    def __init__(self, style: str) -> None:
        self.style = style

    async def handle(self, stream: INetStream) -> None:
        started = time.perf_counter()
        style = self.style
        peer = str(stream.muxed_conn.peer_id)
        try:
            if style == "eof":
                body = unframe(await read_to_eof(stream, MAX_TASK_MESSAGE + 9))
            else:
                body = await read_message(stream)
            request = json.loads(body)
            task_id, text = request["task_id"], request["input"]
            kind = request.get("kind", "default")
            response: dict[str, Any] = {"task_id": task_id, "output": ""}
            if kind in self.KINDS:
                response["output"] = self.KINDS[kind](text)
            else:
                message = f"no handler for {kind!r}; kinds: {', '.join(self.KINDS)}"
                response["error"] = {"code": "unknown_kind", "message": message}
            response["latency_ms"] = round((time.perf_counter() - started) * 1000)
            await stream.write(frame(response))
            await stream.close()
            out(
                {
                    "event": "task-served",
                    "style": style,
                    "peer": peer,
                    "task_id": task_id,
                    "kind": kind,
                    "input_len": len(text),
                    "input_sha256": digest(text),
                }
            )
        except Exception as exc:
            log(f"task stream failed: {traceback.format_exc()}")
            out({"event": "task-error", "style": style, "peer": peer, "error": repr(exc)})
            await stream.reset()


# --- commands ------------------------------------------------------------------------------


class Peer:
    def __init__(self, host: IHost, server: TaskServer) -> None:
        self.host = host
        self.server = server
        self.ping_service = PingService(host)
        self.perf = PerfService(host)  # serves only after perf-serve
        self.shutdown = trio.Event()

    def peer(self, cmd: dict[str, Any]) -> ID:
        return ID.from_base58(cmd["peer"])

    async def cmd_dial(self, cmd: dict[str, Any]) -> dict[str, Any]:
        info = info_from_p2p_addr(multiaddr.Multiaddr(cmd["addr"]))
        started = time.perf_counter()
        await self.host.connect(info)
        elapsed = (time.perf_counter() - started) * 1000
        conns = self.host.get_network().get_connections(info.peer_id)
        return {"peer_id": str(info.peer_id), "muxer": muxer_name(conns[0]), "connect_ms": elapsed}

    async def cmd_connections(self, cmd: dict[str, Any]) -> dict[str, Any]:
        conns = self.host.get_network().get_connections(self.peer(cmd))
        return {
            "connections": [
                {"muxer": muxer_name(c), "direction": str(c.direction.name).lower()} for c in conns
            ]
        }

    async def cmd_disconnect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        await self.host.disconnect(self.peer(cmd))
        return {}

    async def cmd_ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """py-libp2p's PingService; it reports whole milliseconds, so time each one here too."""
        rtts: list[float] = []
        whole_ms: list[int] = []
        started = time.perf_counter()
        async for rtt in self.ping_service.ping_iter(self.peer(cmd), ping_amt=cmd["count"]):
            now = time.perf_counter()
            rtts.append((now - started) * 1000)
            whole_ms.append(rtt)
            started = now
        return {"rtts_ms": rtts, "libp2p_rtts_ms": whole_ms}

    async def cmd_identify(self, cmd: dict[str, Any]) -> dict[str, Any]:
        peer = self.peer(cmd)
        stream = await self.host.new_stream(peer, [IDENTIFY])
        data = await read_to_eof(stream, 1 << 16)
        await stream.close()
        msg = parse_identify_response(data)
        key_peer_id = str(ID.from_pubkey(deserialize_public_key(msg.public_key)))
        observed = msg.observed_addr
        return {
            "raw_len": len(data),
            "public_key_peer_id": key_peer_id,
            "public_key_matches": key_peer_id == str(peer),
            "protocol_version": msg.protocol_version,
            "agent_version": msg.agent_version,
            "protocols": list(msg.protocols),
            "listen_addrs": [str(multiaddr.Multiaddr(a)) for a in msg.listen_addrs],
            "observed_addr": str(multiaddr.Multiaddr(observed)) if observed else None,
            "signed_peer_record": msg.HasField("signedPeerRecord"),
        }

    async def cmd_peerstore(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """What py-libp2p's automatic identify (run on every new connection) recorded."""
        peer = self.peer(cmd)
        store = self.host.get_peerstore()
        with trio.move_on_after(IDENTIFY_WAIT):
            # py-libp2p has no event for "identify done": poll its record of it, bounded
            while peer not in getattr(self.host, "_identified_peers", {peer: None}):
                await trio.sleep(0.01)
        identified = peer in getattr(self.host, "_identified_peers", {})
        try:
            pubkey = store.pubkey(peer)
            key_peer_id: str | None = str(ID.from_pubkey(pubkey))
        except Exception:
            key_peer_id = None
        return {
            "identified": identified,
            "protocols": sorted(store.get_protocols(peer)),
            "addrs": sorted(str(a) for a in store.addrs(peer)),
            "public_key_peer_id": key_peer_id,
        }

    async def one_task(self, peer: ID, cmd: dict[str, Any], text: str, n: int) -> dict[str, Any]:
        task_id = f"py-{n}-{os.urandom(4).hex()}"
        request: dict[str, Any] = {"task_id": task_id, "input": text}
        if "kind" in cmd:
            request["kind"] = cmd["kind"]
        if "timeout_ms" in cmd:
            request["timeout_ms"] = cmd["timeout_ms"]
        started = time.perf_counter()
        stream = await self.host.new_stream(peer, [TASK])
        half_close = cmd.get("client_style", "half-close") == "half-close"
        try:
            await stream.write(frame(request))
            if half_close:
                await stream.close_write()
        except (StreamReset, StreamClosed) as exc:
            # the spec: a server that refuses early (too_large) answers before it resets,
            # so read the answer even when the write failed
            log(f"task {task_id}: the request write failed ({exc!r}); reading the answer")
        if half_close:
            body = unframe(await read_to_eof(stream, MAX_TASK_MESSAGE + 9))
        else:
            body = await read_message(stream)
        await stream.close()
        response = json.loads(body)
        output = response.get("output", "")
        summary = {
            "sent_task_id": task_id,
            "task_id": response.get("task_id"),
            "output_len": len(output),
            "output_sha256": digest(output),
            "latency_ms": response.get("latency_ms"),
            "round_trip_ms": (time.perf_counter() - started) * 1000,
            "fields": sorted(response),
        }
        if len(output) <= SHORT_OUTPUT:
            summary["output"] = output
        if "error" in response:
            summary["error"] = response["error"]
        return summary

    async def cmd_task(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``concurrent`` tasks at once, each on its own stream of the one connection."""
        peer = self.peer(cmd)
        text = cmd["input"] * cmd.get("repeat", 1)
        results: list[dict[str, Any]] = [{}] * cmd.get("concurrent", 1)

        async def run(n: int) -> None:
            results[n] = await self.one_task(peer, cmd, text, n)

        async with trio.open_nursery() as nursery:
            for n in range(len(results)):
                nursery.start_soon(run, n)
        conns = self.host.get_network().get_connections(peer)
        return {"input_sha256": digest(text), "results": results, "connections": len(conns)}

    async def cmd_task_style(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["style"] not in ("one-message", "eof"):
            raise ValueError(f"unknown task style {cmd['style']!r}")
        self.server.style = cmd["style"]
        return {}

    async def cmd_perf_serve(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if not self.perf.is_started():
            await self.perf.start()
        return {}

    async def cmd_perf(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One measurement to ``addr``: py-libp2p's final report, and the time around it."""
        final: dict[str, Any] = {}
        started = time.perf_counter()
        target = multiaddr.Multiaddr(cmd["addr"])
        async for report in self.perf.measure_performance(target, cmd["upload"], cmd["download"]):
            if report["type"] == "final":
                final = dict(report)
        elapsed = time.perf_counter() - started
        if not final:
            raise RuntimeError("py-libp2p's perf client gave no final report")
        return {**final, "elapsed_s": elapsed}

    async def cmd_shutdown(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.shutdown.set()
        return {}

    async def run_command(self, line: bytes) -> None:
        cmd: dict[str, Any] = {}
        try:
            cmd = json.loads(line)
            method: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = getattr(
                self, "cmd_" + cmd["cmd"].replace("-", "_")
            )
            reply = await method(cmd)
            out({"reply": cmd.get("id"), "ok": True, **reply})
        except Exception as exc:
            leaf: BaseException = exc
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            log(f"command {cmd.get('cmd')!r} failed: {traceback.format_exc()}")
            out({"reply": cmd.get("id"), "ok": False, "error": f"{type(leaf).__name__}: {leaf}"})

    async def read_commands(self, nursery: trio.Nursery) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while chunk := await stdin.receive_some(1 << 20):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    nursery.start_soon(self.run_command, line)
        self.shutdown.set()


async def main(args: argparse.Namespace) -> None:
    seed = bytes.fromhex(args.seed) if args.seed else None
    host = make_host(args.muxer, seed)
    server = TaskServer(args.task_style)
    host.set_stream_handler(TASK, server.handle)
    host.get_network().register_notifee(ConnectionEvents())
    peer = Peer(host, server)
    with trio.CancelScope() as teardown:
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addrs = [str(a) for a in host.get_addrs()]
            out({"event": "ready", "peer_id": str(host.get_id()), "addrs": addrs})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.read_commands, nursery)
                await peer.shutdown.wait()
                nursery.cancel_scope.cancel()
            # py-libp2p's teardown sleeps per connection: bound it
            teardown.deadline = trio.current_time() + SHUTDOWN_GRACE


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--muxer", choices=["yamux", "mplex", "both"], default="both")
    parser.add_argument("--seed", help="32-byte Ed25519 seed, hex (default: a fresh key)")
    parser.add_argument("--task-style", choices=["one-message", "eof"], default="one-message")
    parsed = parser.parse_args()
    if parsed.muxer == "both":
        parsed.muxer = "yamux,mplex"
    code = 0
    try:
        trio.run(main, parsed)
    except BaseException:
        log(traceback.format_exc())
        code = 1
    # py-libp2p leaves threads and background services behind: do not wait for them at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
