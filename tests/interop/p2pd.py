"""A client of the go-libp2p daemon (`p2pd`) and its control protocol, for the interop tests.

The daemon (installed by ``tests/interop/go/install_p2pd.sh``) runs a go-libp2p host and
is driven over a unix socket. Every message on that socket is an unsigned varint (the
length) followed by a protobuf message: we send a ``Request`` and read a ``Response``
(the schema is ``tests/interop/go/bin/p2pd.proto``). After a STREAM_OPEN answered OK the
control connection *becomes* the libp2p stream. For STREAM_HANDLER the daemon connects
to a unix socket that we listen on, once per inbound stream, writes a length-prefixed
``StreamInfo`` and then bridges bytes.

What the bridge cannot carry: the daemon copies each direction with its own loop and,
when either loop ends, closes its destination *fully*. So a half-close does not cross it:
a FIN from the remote peer closes our unix socket in both directions (we can no longer
answer), and EOF on our unix socket becomes a close of the libp2p stream in both
directions (the remote peer's answer is then discarded by the daemon).

Self-contained on purpose: a minimal protobuf codec and no p2pnode imports, so that this
file tests p2pnode from the outside. PeerIds and multiaddrs are raw bytes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GO_DIR = Path(__file__).parent / "go"
P2PD = GO_DIR / "bin" / "p2pd"

MAX_MESSAGE = 4 << 20  # a control message larger than this is a bug on one side

# Request.Type
IDENTIFY = 0
CONNECT = 1
STREAM_OPEN = 2
STREAM_HANDLER = 3
DHT = 4
LIST_PEERS = 5
DISCONNECT = 7
# DHTRequest.Type
DHT_FIND_PEER = 0
DHT_FIND_PROVIDERS = 2
DHT_GET_CLOSEST_PEERS = 3
DHT_GET_VALUE = 5
DHT_PUT_VALUE = 7
DHT_PROVIDE = 8
# DHTResponse.Type
DHT_BEGIN = 0
DHT_VALUE = 1
DHT_END = 2
# Response.Type
OK = 0
ERROR = 1

VARINT = 0
LENGTH_DELIMITED = 2
_FIXED_SIZES = {1: 8, 5: 4}  # wire types 1 (64-bit) and 5 (32-bit): skipped by size

UNIX_CODE = 400  # multiaddr code of /unix (a path: length-prefixed, leading slash kept)


def require_p2pd() -> Path:
    """Path of p2pd; skip (or fail under P2PNODE_REQUIRE_INTEROP=1) when it is missing."""
    if not os.access(P2PD, os.X_OK):
        missing = f"p2pd is not installed: run {GO_DIR / 'install_p2pd.sh'}"
        if os.environ.get("P2PNODE_REQUIRE_INTEROP") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return P2PD


class DaemonError(Exception):
    """The daemon answered ERROR, broke the control protocol, or died."""


# -- protobuf, the few parts the control protocol uses ---------------------------------


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint of a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """``(value, offset after it)``."""
    value = shift = 0
    for _ in range(10):
        if offset >= len(data):
            raise DaemonError("truncated varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise DaemonError("varint longer than 10 bytes")


Value = int | bool | bytes | str


def encode_message(fields: Iterable[tuple[int, Value | None]]) -> bytes:
    """A protobuf message from ``(field number, value)`` pairs; ``None`` values are left out.

    ints and bools are varints; bytes and str are length-delimited (a nested message is
    passed as its encoded bytes). Repeated fields are repeated pairs.
    """
    out = bytearray()
    for number, value in fields:
        if value is None:
            continue
        if isinstance(value, bool | int):
            out += encode_uvarint(number << 3 | VARINT)
            out += encode_uvarint(int(value) & (2**64 - 1))  # negative int64: two's complement
        else:
            raw = value.encode() if isinstance(value, str) else bytes(value)
            out += encode_uvarint(number << 3 | LENGTH_DELIMITED)
            out += encode_uvarint(len(raw)) + raw
    return bytes(out)


def decode_message(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> its values in order (varints as int, length-delimited as bytes)."""
    fields: dict[int, list[int | bytes]] = {}
    offset = 0
    for _ in range(len(data)):  # each field takes at least one byte
        if offset >= len(data):
            return fields
        key, offset = decode_uvarint(data, offset)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, offset = decode_uvarint(data, offset)
        elif wire_type == LENGTH_DELIMITED:
            size, offset = decode_uvarint(data, offset)
            if offset + size > len(data):
                raise DaemonError("truncated length-delimited field")
            value = data[offset : offset + size]
            offset += size
        elif wire_type in _FIXED_SIZES:
            offset += _FIXED_SIZES[wire_type]
            if offset > len(data):
                raise DaemonError("truncated fixed-size field")
            continue
        else:
            raise DaemonError(f"unsupported protobuf wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def _one_bytes(fields: dict[int, list[int | bytes]], number: int) -> bytes:
    values = fields.get(number, [])
    if not values or not isinstance(values[-1], bytes):
        raise DaemonError(f"message lacks length-delimited field {number}: {fields}")
    return values[-1]


def _all_bytes(fields: dict[int, list[int | bytes]], number: int) -> list[bytes]:
    return [v for v in fields.get(number, []) if isinstance(v, bytes)]


def unix_multiaddr(path: str | Path) -> bytes:
    """The binary multiaddr ``/unix/<absolute path>``."""
    raw = str(path).encode()
    return encode_uvarint(UNIX_CODE) + encode_uvarint(len(raw)) + raw


# -- the control protocol's messages ---------------------------------------------------


@dataclass(frozen=True)
class StreamInfo:
    peer: bytes  # the remote PeerId's bytes
    addr: bytes  # the connection's remote multiaddr, binary
    protocol: str

    @classmethod
    def decode(cls, data: bytes) -> StreamInfo:
        fields = decode_message(data)
        return cls(_one_bytes(fields, 1), _one_bytes(fields, 2), _one_bytes(fields, 3).decode())


@dataclass(frozen=True)
class PeerInfo:
    peer: bytes
    addrs: list[bytes] = field(default_factory=list)

    @classmethod
    def decode(cls, data: bytes) -> PeerInfo:
        fields = decode_message(data)
        return cls(_one_bytes(fields, 1), _all_bytes(fields, 2))


@dataclass(frozen=True)
class DhtResponse:
    kind: int  # DHT_BEGIN, DHT_VALUE or DHT_END
    peer: PeerInfo | None = None
    value: bytes | None = None

    @classmethod
    def decode(cls, data: bytes) -> DhtResponse:
        fields = decode_message(data)
        if 5 in fields:  # a Response wrapping it (SEARCH_VALUE streams these)
            fields = decode_message(_one_bytes(fields, 5))
        kinds = [v for v in fields.get(1, []) if isinstance(v, int)]
        peer = PeerInfo.decode(_one_bytes(fields, 2)) if 2 in fields else None
        value = _one_bytes(fields, 3) if 3 in fields else None
        return cls(kinds[-1] if kinds else DHT_BEGIN, peer, value)


@dataclass
class Response:
    ok: bool
    error: str = ""
    stream_info: StreamInfo | None = None
    identify: PeerInfo | None = None  # IdentifyResponse has PeerInfo's shape: id, addrs
    peers: list[PeerInfo] = field(default_factory=list)
    dht: DhtResponse | None = None

    @classmethod
    def decode(cls, data: bytes) -> Response:
        fields = decode_message(data)
        kinds = fields.get(1, [])
        if not kinds or not isinstance(kinds[-1], int):
            raise DaemonError(f"Response without a type: {data!r}")
        response = cls(ok=kinds[-1] == OK)
        if 2 in fields:
            response.error = _one_bytes(decode_message(_one_bytes(fields, 2)), 1).decode()
        if 3 in fields:
            response.stream_info = StreamInfo.decode(_one_bytes(fields, 3))
        if 4 in fields:
            response.identify = PeerInfo.decode(_one_bytes(fields, 4))
        response.peers = [PeerInfo.decode(raw) for raw in _all_bytes(fields, 6)]
        if 5 in fields:
            response.dht = DhtResponse.decode(_one_bytes(fields, 5))
        return response


def request(kind: int, number: int | None = None, body: bytes | None = None) -> bytes:
    """A ``Request`` of type ``kind`` with its sub-message ``body`` in field ``number``."""
    if number is None:
        return encode_message([(1, kind)])
    return encode_message([(1, kind), (number, body)])


async def read_delimited(reader: asyncio.StreamReader, limit: int = MAX_MESSAGE) -> bytes:
    """One uvarint-length-prefixed message (DaemonError at EOF)."""
    prefix = bytearray()
    for _ in range(10):
        byte = await reader.read(1)
        if not byte:
            raise DaemonError("the daemon closed the socket before a whole message")
        prefix += byte
        if not byte[0] & 0x80:
            break
    size, _ = decode_uvarint(bytes(prefix))
    if size > limit:
        raise DaemonError(f"message of {size} bytes announced")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise DaemonError("the daemon closed the socket inside a message") from None


def write_delimited(writer: asyncio.StreamWriter, message: bytes) -> None:
    writer.write(encode_uvarint(len(message)) + message)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# -- the daemon --------------------------------------------------------------------------

StreamCallback = Callable[[StreamInfo, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class P2pd:
    """One p2pd process: a go-libp2p host listening on loopback, driven over a unix socket.

    ``key_file`` is a libp2p protobuf ``PrivateKey`` (so the PeerId is known in advance).
    ``prefix`` (e.g. ``ip netns exec NS``) runs it elsewhere: the unix control socket is a
    file, so it reaches into a network namespace.
    Use ``async with P2pd(...) as go:`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        key_file: Path | None = None,
        host_addrs: Iterable[str] = ("/ip4/127.0.0.1/tcp/0",),
        extra_args: Iterable[str] = (),
        request_timeout: float = 20.0,
        prefix: Iterable[str] = (),
    ) -> None:
        self.key_file = key_file
        self.prefix = list(prefix)  # wraps the command, e.g. ``ip netns exec NS``
        self.host_addrs = list(host_addrs)
        self.extra_args = list(extra_args)
        self.request_timeout = request_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.peer_id_text = ""  # as printed by the daemon at start-up
        self.peer_id = b""  # from IDENTIFY, once started
        self.addrs: list[bytes] = []  # the host's listen addresses, from IDENTIFY
        self.handler_errors: list[BaseException] = []  # raised by add_handler callbacks
        self._dir: Path | None = None
        self._servers: list[asyncio.Server] = []
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._stdout_tail: list[str] = []
        self._drain_task: asyncio.Task[None] | None = None

    @property
    def control_path(self) -> Path:
        assert self._dir is not None, "the daemon is not started"
        return self._dir / "control.sock"

    @property
    def stderr_path(self) -> Path:
        assert self._dir is not None, "the daemon is not started"
        return self._dir / "stderr"

    def stderr(self) -> str:
        """What the daemon wrote to stderr so far (for failure messages)."""
        if self._dir is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-4000:]

    async def __aenter__(self) -> P2pd:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, timeout: float = 30.0) -> None:
        """Start the daemon and wait until it printed its banner (its sockets are then open)."""
        binary = require_p2pd()
        self._dir = Path(tempfile.mkdtemp(prefix="p2pd-"))  # short: unix paths max 107 bytes
        argv = [*self.prefix, str(binary), "-listen", f"/unix{self.control_path}"]
        argv += ["-hostAddrs", ",".join(self.host_addrs)]
        if self.key_file is not None:
            argv += ["-id", str(self.key_file)]
        argv += self.extra_args
        with open(self.stderr_path, "wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        try:
            async with asyncio.timeout(timeout):
                await self._read_banner()
                self._drain_task = asyncio.create_task(self._drain_stdout())
                me = await self.identify()
                self.peer_id, self.addrs = me.peer, me.addrs
        except BaseException as exc:
            stderr_text = self.stderr()
            await self.stop()
            if isinstance(exc, Exception):
                raise DaemonError(f"p2pd did not start: {exc!r}; stderr: {stderr_text}") from exc
            raise

    async def _read_banner(self) -> None:
        # The daemon prints "Control socket: /unix/...", "Peer ID: <id>" and its addresses
        # once the control socket listens; the Peer ID line is the signal we wait for.
        assert self.proc is not None and self.proc.stdout is not None
        for _ in range(100):
            line = await self.proc.stdout.readline()
            if not line:
                raise DaemonError(f"p2pd exited (status {await self.proc.wait()})")
            text = line.decode(errors="replace").strip()
            self._stdout_tail.append(text)
            if text.startswith("Peer ID:"):
                self.peer_id_text = text.split(":", 1)[1].strip()
                return
        raise DaemonError(f"no Peer ID line from p2pd: {self._stdout_tail[-20:]}")

    async def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self._stdout_tail = [*self._stdout_tail[-50:], line.decode(errors="replace")]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop our handler servers and the daemon we started (by its PID: TERM, then KILL)."""
        for server in self._servers:
            server.close()
        for task in list(self._handler_tasks):
            task.cancel()
        await asyncio.gather(*self._handler_tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), timeout)
        self._servers.clear()
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._drain_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
            self._drain_task = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- requests ------------------------------------------------------------------------

    async def _control(
        self, message: bytes, timeout: float | None = None
    ) -> tuple[Response, asyncio.StreamReader, asyncio.StreamWriter]:
        """Send one request on a new control connection; the answer and that connection."""
        if self.proc is None or self.proc.returncode is not None:
            raise DaemonError(f"p2pd is not running; stderr: {self.stderr()}")
        async with asyncio.timeout(timeout or self.request_timeout):
            reader, writer = await asyncio.open_unix_connection(self.control_path)
            try:
                write_delimited(writer, message)
                await writer.drain()
                response = Response.decode(await read_delimited(reader))
            except BaseException:
                await close_writer(writer)
                raise
        if not response.ok:
            await close_writer(writer)
            raise DaemonError(response.error or "the daemon answered ERROR")
        return response, reader, writer

    async def _simple(self, message: bytes, timeout: float | None = None) -> Response:
        response, _, writer = await self._control(message, timeout)
        await close_writer(writer)
        return response

    async def identify(self) -> PeerInfo:
        """The daemon's PeerId (bytes) and its host's listen addresses (binary multiaddrs)."""
        response = await self._simple(request(IDENTIFY))
        if response.identify is None:
            raise DaemonError("IDENTIFY answered without an identity")
        return response.identify

    async def connect(
        self, peer: bytes, addrs: Iterable[bytes] = (), timeout: int | None = None
    ) -> None:
        """Make the go host connect to ``peer`` (at ``addrs``, or those its peer store knows)."""
        body = encode_message([(1, peer), *((2, a) for a in addrs), (3, timeout)])
        await self._simple(request(CONNECT, 2, body), (timeout or 0) + self.request_timeout)

    async def disconnect(self, peer: bytes) -> None:
        await self._simple(request(DISCONNECT, 7, encode_message([(1, peer)])))

    # -- the DHT (the daemon must run with -dht, -dhtServer or -dhtClient) ---------------

    def _dht_request(self, kind: int, timeout: int, **fields: bytes | int) -> bytes:
        numbers = {"peer": 2, "cid": 3, "key": 4, "value": 5, "count": 6}
        body = encode_message(
            [(1, kind), *((numbers[name], value) for name, value in fields.items()), (7, timeout)]
        )
        return request(DHT, 5, body)

    async def _dht_single(self, kind: int, timeout: int, **fields: bytes | int) -> DhtResponse:
        message = self._dht_request(kind, timeout, **fields)
        response = await self._simple(message, timeout + self.request_timeout)
        if response.dht is None:
            raise DaemonError(f"DHT request {kind} answered without a DHT response")
        return response.dht

    async def _dht_stream(
        self, kind: int, timeout: int, **fields: bytes | int
    ) -> list[DhtResponse]:
        message = self._dht_request(kind, timeout, **fields)
        response, reader, writer = await self._control(message, timeout + self.request_timeout)
        values: list[DhtResponse] = []
        try:
            async with asyncio.timeout(timeout + self.request_timeout):
                if response.dht is None or response.dht.kind != DHT_BEGIN:
                    raise DaemonError(f"DHT stream {kind} did not begin: {response}")
                while (item := DhtResponse.decode(await read_delimited(reader))).kind != DHT_END:
                    values.append(item)
        finally:
            await close_writer(writer)
        return values

    async def dht_find_peer(self, peer: bytes, timeout: int = 20) -> PeerInfo:
        """The go DHT's answer for ``peer``: its id and addresses (DaemonError if not found)."""
        answer = await self._dht_single(DHT_FIND_PEER, timeout, peer=peer)
        if answer.peer is None:
            raise DaemonError("FIND_PEER answered without a peer")
        return answer.peer

    async def dht_find_providers(
        self, cid: bytes, count: int = 20, timeout: int = 20
    ) -> list[PeerInfo]:
        """Providers of ``cid`` (a sha2-256 multihash is a CIDv0) that the go DHT finds."""
        found = await self._dht_stream(DHT_FIND_PROVIDERS, timeout, cid=cid, count=count)
        return [item.peer for item in found if item.peer is not None]

    async def dht_closest_peers(self, key: bytes, timeout: int = 20) -> list[bytes]:
        """The PeerIds the go DHT finds closest to ``key``."""
        found = await self._dht_stream(DHT_GET_CLOSEST_PEERS, timeout, key=key)
        return [item.value for item in found if item.value is not None]

    async def dht_provide(self, cid: bytes, timeout: int = 20) -> None:
        """Make the go host announce itself as a provider of ``cid``."""
        await self._simple(self._dht_request(DHT_PROVIDE, timeout, cid=cid), timeout + 5)

    async def dht_get_value(self, key: bytes, timeout: int = 20) -> bytes:
        answer = await self._dht_single(DHT_GET_VALUE, timeout, key=key)
        if answer.value is None:
            raise DaemonError("GET_VALUE answered without a value")
        return answer.value

    async def dht_put_value(self, key: bytes, value: bytes, timeout: int = 20) -> None:
        await self._simple(
            self._dht_request(DHT_PUT_VALUE, timeout, key=key, value=value), timeout + 5
        )

    async def list_peers(self) -> list[PeerInfo]:
        """The peers the go host is connected to (addrs: the connections' remote addresses)."""
        return (await self._simple(request(LIST_PEERS))).peers

    async def open_stream(
        self, peer: bytes, protocols: Iterable[str], timeout: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """Open a libp2p stream from the go host; ``(reader, writer, negotiated protocol)``.

        The unix connection is the stream from then on; closing ``writer`` closes it.
        """
        body = encode_message([(1, peer), *((2, p) for p in protocols), (3, timeout)])
        response, reader, writer = await self._control(
            request(STREAM_OPEN, 3, body), (timeout or 0) + self.request_timeout
        )
        if response.stream_info is None:
            await close_writer(writer)
            raise DaemonError("STREAM_OPEN answered without a StreamInfo")
        return reader, writer, response.stream_info.protocol

    async def add_handler(self, protocols: str | Iterable[str], callback: StreamCallback) -> None:
        """Serve ``protocols`` on the go host with ``callback(info, reader, writer)``.

        The callback runs once per inbound stream; its exceptions are kept in
        ``handler_errors`` (and the stream closed). The writer is closed after it returns.
        """
        protocols = [protocols] if isinstance(protocols, str) else list(protocols)
        assert self._dir is not None, "the daemon is not started"
        path = self._dir / f"handler-{len(self._servers)}.sock"

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handler_tasks.add(task)
            try:
                info = StreamInfo.decode(await read_delimited(reader))
                await callback(info, reader, writer)
            except Exception as exc:  # reported to the test through handler_errors
                self.handler_errors.append(exc)
            finally:
                self._handler_tasks.discard(task)
                await close_writer(writer)

        self._servers.append(await asyncio.start_unix_server(serve, path))
        body = encode_message([(1, unix_multiaddr(path)), *((2, p) for p in protocols), (3, False)])
        await self._simple(request(STREAM_HANDLER, 4, body))
