"""TCP transport and the connection upgrade: multistream -> Noise -> muxer.

Every step is a sans-I/O state machine; this module only moves their bytes
over an asyncio transport and enforces the handshake timeout. Messages of
consecutive steps are pipelined where the protocols allow it, and the muxer is
chosen inside the Noise handshake, so a dial costs TCP's handshake plus one round
trip. With a peer that does not offer muxers in the handshake, multistream-select
chooses it afterwards (one more round trip).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from p2pnode.errors import (
    ConnectionClosedError,
    DialError,
    HandshakeError,
    MultiaddrError,
    NegotiationError,
    P2PError,
    P2PTimeoutError,
    PeerIdMismatchError,
)
from p2pnode.net.connection import Connection, InboundStreamHandler
from p2pnode.net.limits import Limits, PeerBudgets, Refusals
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.mplex import PROTOCOL_ID as MPLEX_ID
from p2pnode.wire.mplex import MplexConfig, MplexSession
from p2pnode.wire.multiaddr import Multiaddr
from p2pnode.wire.multistream import MultistreamDialer, MultistreamListener
from p2pnode.wire.muxer import CreditPool, MuxerSession
from p2pnode.wire.noise import PROTOCOL_ID as NOISE_ID
from p2pnode.wire.noise import NoiseHandshake, NoiseStaticKey, NoiseTransport
from p2pnode.wire.yamux import PROTOCOL_ID as YAMUX_ID
from p2pnode.wire.yamux import YamuxConfig, YamuxSession

MUXERS = {"yamux": YAMUX_ID, "mplex": MPLEX_ID}


@dataclass(slots=True)
class TransportConfig:
    """How connections are set up and which muxers are offered, in order of preference."""

    identity: Identity
    muxers: Sequence[str] = (YAMUX_ID, MPLEX_ID)
    # offer the muxers inside the Noise handshake, saving multistream-select's round trip
    inline_muxer_negotiation: bool = True
    handshake_timeout: float = 10.0
    keepalive_interval: float | None = 30.0
    yamux: YamuxConfig = field(default_factory=YamuxConfig)
    mplex: MplexConfig = field(default_factory=MplexConfig)
    limits: Limits = field(default_factory=Limits)
    refusals: Refusals = field(default_factory=Refusals)
    noise_key: NoiseStaticKey = field(init=False)  # one static key for every handshake
    # per peer, shared by its connections' muxers (Limits.peer_receive_memory)
    receive_memory: PeerBudgets = field(init=False)

    def __post_init__(self) -> None:
        self.noise_key = NoiseStaticKey(self.identity)
        limits = self.limits
        self.receive_memory = PeerBudgets(limits.node_receive_memory, limits.peer_receive_memory)
        if self.yamux.max_inbound_streams != self.limits.max_inbound_streams:
            self.yamux = dataclasses.replace(
                self.yamux, max_inbound_streams=self.limits.max_inbound_streams
            )

    @property
    def handshake_muxers(self) -> Sequence[str]:
        """The muxers to list in the Noise handshake (none when inlining is off)."""
        return self.muxers if self.inline_muxer_negotiation else ()

    def make_muxer(
        self, protocol_id: str, *, is_initiator: bool, credit: CreditPool | None = None
    ) -> MuxerSession:
        if protocol_id == YAMUX_ID:
            return YamuxSession(is_client=is_initiator, config=self.yamux, credit=credit)
        return MplexSession(is_initiator=is_initiator, config=self.mplex, credit=credit)


@dataclass(slots=True)
class _Upgraded:
    """What the handshake produced: the secure channel, the proven peer and the muxer."""

    secure: NoiseTransport
    remote_peer: PeerId
    muxer_id: str
    early_plaintext: bytes
    muxer_in_handshake: bool = False
    # the dialer's last handshake message, not yet sent: it leaves with the first streams'
    # bytes (one send, one segment for the listener) in the connection's first flush
    unsent: bytes = b""


class _SecurityUpgrade:
    """multistream-select for Noise, the Noise XX handshake and, when the handshake chose no
    muxer, multistream-select for it: sans-I/O, one object per connection and side.

    :meth:`receive_data` takes the peer's bytes and returns ours to send; once :attr:`result`
    is set the upgrade is done and later bytes belong to the connection.
    """

    __slots__ = (
        "_config",
        "_initiator",
        "_muxer_select",
        "_noise",
        "_secure",
        "_security",
        "result",
    )

    def __init__(
        self, config: TransportConfig, *, initiator: bool, expected_peer: PeerId | None
    ) -> None:
        self._config = config
        self._initiator = initiator
        self._security: MultistreamDialer | MultistreamListener = (
            MultistreamDialer([NOISE_ID], optimistic=True)
            if initiator
            else MultistreamListener([NOISE_ID])
        )
        self._noise = NoiseHandshake(
            config.noise_key,
            initiator=initiator,
            expected_peer=expected_peer,
            muxers=config.handshake_muxers,
        )
        self._secure: NoiseTransport | None = None
        self._muxer_select: MultistreamDialer | MultistreamListener | None = None
        self.result: _Upgraded | None = None

    def initial_bytes(self) -> bytes:
        """The dialer's first flight: the Noise proposal and message 1 together."""
        if not self._initiator:
            return b""
        assert isinstance(self._security, MultistreamDialer)
        return self._security.initial_bytes() + self._noise.start()

    def receive_data(self, data: bytes | bytearray) -> bytes:
        """Feed the peer's bytes; return ours to send (possibly b"")."""
        out = b""
        security = self._security
        if not security.done:
            out = security.receive_data(data)
            if not security.done:
                return out
            # an optimistic dialer's message 1 came with its proposal: our answer to the
            # proposal is held back to leave with message 2, in one send
            data = security.leftover()
            if not data:
                return out
        secure = self._secure
        if secure is None:
            noise = self._noise
            out += noise.receive_data(data)
            if not noise.complete:
                return out
            secure = self._secure = noise.transport()
            if noise.muxer is not None:  # chosen in the handshake: streams may start at once
                early = bytes(secure.receive_data(b""))  # what the peer sent after it
                # the dialer's message 3 is held back to leave with the first streams' bytes
                unsent, out = (out, b"") if self._initiator else (b"", out)
                self.result = _Upgraded(secure, noise.remote_peer, noise.muxer, early, True, unsent)
                return out
            muxers = list(self._config.muxers)
            if self._initiator:
                dialer = MultistreamDialer(muxers)
                self._muxer_select = dialer
                out += secure.encrypt(dialer.initial_bytes())
            else:
                self._muxer_select = MultistreamListener(muxers)
            data = b""  # the rest of this read is in the secure channel's buffer
        selector = self._muxer_select
        assert selector is not None
        plaintext = secure.receive_data(data)
        if plaintext:
            reply = selector.receive_data(plaintext)
            if reply:
                out += secure.encrypt(reply)
        if selector.done:
            assert selector.selected is not None
            self.result = _Upgraded(
                secure, self._noise.remote_peer, selector.selected, selector.leftover()
            )
        return out


class _HandshakeProtocol(asyncio.Protocol):
    """Feeds raw bytes to the upgrade as they come (in ``data_received``, no task switch per
    message); buffers them for a reader once no upgrade is attached, until the Connection
    takes the transport over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._error: P2PError | None = None
        self._upgrade: _SecurityUpgrade | None = None
        self._finish: Callable[[_Upgraded], Connection] | None = None
        self._connection: Connection | None = None
        self._failure: Exception | None = None  # raised by ``finish``

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        upgrade = self._upgrade
        if upgrade is None:
            self._buffer += data
        else:
            try:
                reply = upgrade.receive_data(data)
            except P2PError as exc:
                self._upgrade = None
                self._error = exc
            else:
                if reply:
                    self.write(reply)
                if upgrade.result is None:
                    return
                self._upgrade = None
                self._finish_now(upgrade.result)
        self._wake()

    def _finish_now(self, result: _Upgraded) -> None:
        finish, self._finish = self._finish, None
        if finish is not None:
            try:
                self._connection = finish(result)
            except Exception as exc:  # raised in the task that waits, not in asyncio's callback
                self._failure = exc

    def eof_received(self) -> bool:
        self._error = HandshakeError("the peer closed the connection during the handshake")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = HandshakeError(f"connection lost during the handshake: {exc}")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    async def run(self, upgrade: _SecurityUpgrade) -> _Upgraded:
        """Drive ``upgrade`` with the bytes that come; return its result or raise its error.

        Bytes that come after it finished stay buffered for :meth:`receive`.
        """
        first = upgrade.initial_bytes()
        if first:
            self.write(first)
        self._upgrade = upgrade
        try:
            if self._buffer:  # bytes that came before the upgrade was attached
                self.data_received(self.take_buffered())
            while upgrade.result is None:
                if self._error is not None:
                    raise self._error
                await self._wait()
        finally:
            self._upgrade = None
        return upgrade.result

    async def run_then(
        self, upgrade: _SecurityUpgrade, finish: Callable[[_Upgraded], Connection]
    ) -> Connection:
        """Like :meth:`run`, then ``finish`` makes the connection: in the read callback that
        completed the upgrade, so the bytes that came with the last message (streams the
        peer opened at once) are handled without waiting for this task to wake."""
        self._finish = finish
        try:
            await self.run(upgrade)  # its result is set only in data_received, which finishes
        finally:
            self._finish = None
        if self._failure is not None:
            raise self._failure
        assert self._connection is not None
        return self._connection

    def take_buffered(self) -> bytes:
        """The bytes buffered so far (b"" if none); the buffer is empty afterwards."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def receive(self) -> bytes:
        while not self._buffer:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self.take_buffered()

    def write(self, data: bytes | bytearray) -> None:
        assert self.transport is not None
        self.transport.write(data)


def _sockaddr_to_multiaddr(sockaddr: tuple[str, int] | tuple[str, int, int, int]) -> Multiaddr:
    host, port = sockaddr[0].split("%")[0], sockaddr[1]  # a socket's address: well formed
    return Multiaddr.from_string(f"/{'ip6' if ':' in host else 'ip4'}/{host}/tcp/{port}")


async def _negotiate_security_dialer(
    raw: _HandshakeProtocol, config: TransportConfig, expected_peer: PeerId | None
) -> _Upgraded:
    """Dialer side of the upgrade, up to the muxer (later bytes stay in ``raw``)."""
    return await raw.run(_SecurityUpgrade(config, initiator=True, expected_peer=expected_peer))


async def _negotiate_security_listener(
    raw: _HandshakeProtocol, config: TransportConfig
) -> _Upgraded:
    """Listener side of the upgrade, up to the muxer (later bytes stay in ``raw``)."""
    return await raw.run(_SecurityUpgrade(config, initiator=False, expected_peer=None))


async def upgrade(
    raw: _HandshakeProtocol,
    config: TransportConfig,
    *,
    is_initiator: bool,
    expected_peer: PeerId | None,
    on_inbound_stream: InboundStreamHandler,
    addrs: tuple[Multiaddr, Multiaddr] | None = None,
    adopt: Callable[[Connection], None] | None = None,
) -> Connection:
    """Run the whole upgrade on a fresh raw connection; close it on any failure.

    ``addrs`` (remote, local) name the connection when the transport is no socket.
    ``adopt`` sees the connection before any bytes the peer sent after the handshake
    (streams it opened at once) are handled, and may close it.
    """
    transport = raw.transport
    assert transport is not None

    def finish(done: _Upgraded) -> Connection:
        peer = done.remote_peer
        credit = config.receive_memory.acquire(peer)
        muxer = config.make_muxer(done.muxer_id, is_initiator=is_initiator, credit=credit)
        if addrs is None:
            remote = _sockaddr_to_multiaddr(transport.get_extra_info("peername"))
            local = _sockaddr_to_multiaddr(transport.get_extra_info("sockname"))
        else:
            remote, local = addrs
        conn = Connection(
            transport,
            done.secure,
            muxer,
            remote_peer=peer,
            remote_addr=remote,
            local_addr=local,
            is_initiator=is_initiator,
            on_inbound_stream=on_inbound_stream,
            keepalive_interval=config.keepalive_interval,
        )
        conn.muxer_in_handshake = done.muxer_in_handshake
        conn.on_close(lambda _: config.receive_memory.let_go(peer))
        conn.start(done.early_plaintext if adopt is None else b"", done.unsent)
        if adopt is not None:
            adopt(conn)
            if done.early_plaintext and not conn.is_closed:
                conn.receive_early(done.early_plaintext)
        return conn

    # made before the first bytes come (the ephemeral key too): off the path from message
    # 1 to message 2 at the listener
    upgrading = _SecurityUpgrade(config, initiator=is_initiator, expected_peer=expected_peer)
    try:
        async with asyncio.timeout(config.handshake_timeout):
            if adopt is not None:
                # finished in the read callback that brought the last message, the streams
                # that came with it too (``adopt`` has seen the connection first). Without
                # an owner the caller sets the connection up after this returns, and a
                # dialer finishes in its task so that message 3 leaves with the bytes of
                # the streams the task opens next (one send).
                return await raw.run_then(upgrading, finish)
            done = await raw.run(upgrading)
            leftover = raw.take_buffered()  # came after the handshake, before we woke
            if leftover:
                done.early_plaintext += bytes(done.secure.receive_data(leftover))
            return finish(done)
    except TimeoutError:
        transport.abort()
        raise P2PTimeoutError(
            f"handshake did not finish within {config.handshake_timeout}s: "
            "the peer is silent or too slow"
        ) from None
    except BaseException:
        transport.abort()
        raise


async def upgrade_transport(
    transport: asyncio.Transport,
    config: TransportConfig,
    *,
    is_initiator: bool,
    expected_peer: PeerId | None,
    on_inbound_stream: InboundStreamHandler,
    addrs: tuple[Multiaddr, Multiaddr],
) -> Connection:
    """Upgrade a raw connection that is not a TCP socket (a relayed circuit, for one)."""
    raw = _HandshakeProtocol()
    transport.set_protocol(raw)
    raw.connection_made(transport)
    return await upgrade(
        raw,
        config,
        is_initiator=is_initiator,
        expected_peer=expected_peer,
        on_inbound_stream=on_inbound_stream,
        addrs=addrs,
    )


async def dial(
    addr: Multiaddr,
    config: TransportConfig,
    on_inbound_stream: InboundStreamHandler,
    *,
    local_port: int | None = None,
    as_initiator: bool = True,
) -> Connection:
    """Connect to ``addr`` and upgrade; the remote must prove the /p2p id if the address has one.

    ``local_port``: send from this port (a listener's, for a TCP simultaneous open when
    hole punching), sharing it by SO_REUSEADDR and SO_REUSEPORT. ``as_initiator``: the
    role in the upgrade (Noise, multistream, muxer); DCUtR makes one side of a
    simultaneous open the responder, though both sides dialed.
    """
    unsupported = addr.unsupported_part()
    if unsupported is not None:
        raise MultiaddrError(f"cannot dial {addr}: {unsupported}")
    host, port = addr.tcp_host_port()
    loop = asyncio.get_running_loop()
    try:
        connecting = (
            loop.create_connection(_HandshakeProtocol, host, port)
            if local_port is None
            else _connect_from(loop, host, port, local_port)
        )
        _, raw = await asyncio.wait_for(connecting, timeout=config.handshake_timeout)
    except TimeoutError:
        raise DialError(f"could not connect to {addr}: timed out") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise DialError(
            f"could not connect to {addr}: {reason}; check that the peer runs and listens there"
        ) from None
    try:
        conn = await upgrade(
            raw,
            config,
            is_initiator=as_initiator,
            expected_peer=addr.peer_id,
            on_inbound_stream=on_inbound_stream,
        )
    except (HandshakeError, NegotiationError, P2PTimeoutError):
        raise
    except ConnectionClosedError as exc:
        raise HandshakeError(f"handshake with {addr} failed: {exc}") from exc
    except P2PError as exc:
        raise HandshakeError(f"handshake with {addr} failed: {exc}") from exc
    if addr.peer_id is not None and conn.remote_peer != addr.peer_id:
        # the Noise responder does not check whom it expected: the dialer must
        await conn.close()
        raise PeerIdMismatchError(
            f"dialed {addr.peer_id} at {addr} but the peer proved to be {conn.remote_peer}"
        )
    return conn


def _reusable_socket(family: int) -> socket.socket:
    """A non-blocking TCP socket that may share its port with a listener and other dials."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # asyncio turns Nagle off only on sockets it makes itself: with it on, a small
        # write waiting for the peer's delayed ACK cost 40 ms per relayed task (measured)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_from(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_port: int
) -> tuple[asyncio.BaseTransport, _HandshakeProtocol]:
    """``create_connection`` from ``local_port``: asyncio binds no port it can share."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    family, _, _, _, sockaddr = infos[0]
    sock = _reusable_socket(family)
    try:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
        await loop.sock_connect(sock, sockaddr)
        return await loop.create_connection(_HandshakeProtocol, sock=sock)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
        # that port already has a connection to this address: send from another one
        return await loop.create_connection(_HandshakeProtocol, host, port)
    except BaseException:
        sock.close()
        raise


class Listener:
    """A TCP listener that upgrades every accepted connection."""

    def __init__(
        self,
        server: asyncio.Server,
        handshakes: set[asyncio.Task[None]],
    ) -> None:
        self._server = server
        self._handshakes = handshakes

    @property
    def addrs(self) -> list[Multiaddr]:
        """The bound addresses (with the real port when 0 was asked for)."""
        return [_sockaddr_to_multiaddr(sock.getsockname()) for sock in self._server.sockets]

    async def close(self) -> None:
        """Stop accepting and abandon handshakes still in progress."""
        self._server.close()
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
        await self._server.wait_closed()


async def listen(
    addr: Multiaddr,
    config: TransportConfig,
    on_connection: Callable[[Connection], None],
    on_inbound_stream: InboundStreamHandler,
    on_handshake_error: Callable[[Exception, Multiaddr], None],
) -> Listener:
    """Listen on a TCP multiaddr; each upgraded connection is passed to ``on_connection``."""
    if addr.value_for("ip4") is None and addr.value_for("ip6") is None:
        raise MultiaddrError(f"can only listen on /ip4 or /ip6 TCP addresses, not {addr}")
    unsupported = addr.without_peer_id().unsupported_part()
    if unsupported is not None:
        raise MultiaddrError(f"cannot listen on {addr}: {unsupported}")
    host, port = addr.tcp_host_port()
    loop = asyncio.get_running_loop()
    handshakes: set[asyncio.Task[None]] = set()
    per_ip: Counter[str] = Counter()
    limits, refusals = config.limits, config.refusals

    async def run_upgrade(raw: _HandshakeProtocol) -> None:
        assert raw.transport is not None
        peername = raw.transport.get_extra_info("peername")
        remote = _sockaddr_to_multiaddr(peername)
        ip = str(peername[0])
        if len(handshakes) > limits.max_inbound_handshakes:
            refusals.refuse("max_inbound_handshakes", ip, f"{len(handshakes) - 1} in progress")
            raw.transport.abort()
            return
        if per_ip[ip] >= limits.max_inbound_handshakes_per_ip:
            refusals.refuse("max_inbound_handshakes_per_ip", ip, f"{per_ip[ip]} in progress")
            raw.transport.abort()
            return
        per_ip[ip] += 1
        try:
            await _upgrade_inbound(raw, remote)
        finally:
            per_ip[ip] -= 1
            if not per_ip[ip]:
                del per_ip[ip]

    async def _upgrade_inbound(raw: _HandshakeProtocol, remote: Multiaddr) -> None:
        try:
            await upgrade(
                raw,
                config,
                is_initiator=False,
                expected_peer=None,
                on_inbound_stream=on_inbound_stream,
                adopt=on_connection,
            )
        except P2PError as exc:
            on_handshake_error(exc, remote)

    def accept() -> _HandshakeProtocol:
        raw = _HandshakeProtocol()
        original = raw.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            original(transport)
            task = loop.create_task(run_upgrade(raw))
            handshakes.add(task)
            task.add_done_callback(handshakes.discard)

        raw.connection_made = connection_made  # type: ignore[method-assign]
        return raw

    family = socket.AF_INET6 if addr.value_for("ip6") is not None else socket.AF_INET
    try:
        # SO_REUSEPORT: dials for a hole punch send from this port (see dial's local_port)
        server = await loop.create_server(
            accept,
            host,
            port,
            family=family,
            reuse_address=True,
            reuse_port=hasattr(socket, "SO_REUSEPORT"),
        )
    except OSError as exc:
        raise DialError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    return Listener(server, handshakes)
