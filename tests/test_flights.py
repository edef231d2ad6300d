"""What the upgrade sends in how many writes: each write is a send and, on a real link, a
segment the peer waits for. (Round trips over a delayed link: bench/delayed_link.py.)"""

from __future__ import annotations

import asyncio

from p2pnode.net.connection import Connection
from p2pnode.net.transport import (
    TransportConfig,
    _HandshakeProtocol,
    _negotiate_security_listener,
    upgrade,
)
from p2pnode.wire.identity import Identity
from p2pnode.wire.multistream import encode_message
from p2pnode.wire.noise import PROTOCOL_ID as NOISE_ID
from p2pnode.wire.noise import NoiseHandshake
from p2pnode.wire.yamux import PROTOCOL_ID as YAMUX_ID

PROPOSAL = encode_message("/multistream/1.0.0") + encode_message(NOISE_ID)


class RecordingTransport(asyncio.Transport):
    """Keeps every write apart, as separate sends would be."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self._protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 4001) if name in ("peername", "sockname") else default

    def is_closing(self) -> bool:
        return False

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(None)


def handshake_raw() -> tuple[_HandshakeProtocol, RecordingTransport]:
    raw = _HandshakeProtocol()
    transport = RecordingTransport()
    raw.connection_made(transport)
    return raw, transport


def config() -> TransportConfig:
    return TransportConfig(identity=Identity.generate(), muxers=(YAMUX_ID,))


async def until_writes(transport: RecordingTransport, count: int) -> None:
    while len(transport.writes) < count:
        await asyncio.sleep(0)


async def test_the_listener_answers_an_optimistic_dialer_in_one_write() -> None:
    raw, transport = handshake_raw()
    listener = asyncio.ensure_future(_negotiate_security_listener(raw, config()))
    identity = Identity.generate()
    dialer = NoiseHandshake(identity, initiator=True, muxers=(YAMUX_ID,))
    raw.data_received(PROPOSAL + dialer.start())  # header, proposal and message 1 at once
    await until_writes(transport, 1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1  # the multistream echo and message 2 together
    echo, message2 = transport.writes[0][: len(PROPOSAL)], transport.writes[0][len(PROPOSAL) :]
    assert echo == PROPOSAL
    raw.data_received(dialer.receive_data(message2))
    upgraded = await listener
    assert upgraded.remote_peer == identity.peer_id


async def test_the_listener_echoes_at_once_when_message_1_waits_for_the_echo() -> None:
    # go and js dialers wait for the echo before they send message 1: no deadlock
    raw, transport = handshake_raw()
    listener = asyncio.ensure_future(_negotiate_security_listener(raw, config()))
    raw.data_received(PROPOSAL)
    await until_writes(transport, 1)
    assert transport.writes == [PROPOSAL]
    dialer = NoiseHandshake(Identity.generate(), initiator=True, muxers=(YAMUX_ID,))
    raw.data_received(dialer.start())
    await until_writes(transport, 2)
    raw.data_received(dialer.receive_data(transport.writes[1]))
    await listener


async def test_the_dialers_message_3_leaves_with_the_first_streams_bytes() -> None:
    listener_raw, listener_transport = handshake_raw()
    dialer_raw, dialer_transport = handshake_raw()
    listener_config, dialer_config = config(), config()
    listening = asyncio.ensure_future(_negotiate_security_listener(listener_raw, listener_config))

    async def dial_and_write() -> tuple[Connection, int]:
        conn = await upgrade(
            dialer_raw,
            dialer_config,
            is_initiator=True,
            expected_peer=None,
            on_inbound_stream=lambda stream: asyncio.sleep(0),
        )
        writes = len(dialer_transport.writes)  # header, proposal and message 1: one
        stream = await conn.new_stream(["/test/echo/1.0.0"], optimistic=True)
        await stream.write(b"hello")  # as a task client does right after its dial
        return conn, writes

    dialing = asyncio.ensure_future(dial_and_write())

    async def shuttle() -> None:  # carries each write to the other side, write by write
        sent = {id(listener_transport): 0, id(dialer_transport): 0}
        while not dialing.done():
            for source, target in (
                (dialer_transport, listener_raw),
                (listener_transport, dialer_raw),
            ):
                while sent[id(source)] < len(source.writes):
                    target.data_received(source.writes[sent[id(source)]])
                    sent[id(source)] += 1
            await asyncio.sleep(0)

    carrier = asyncio.ensure_future(shuttle())
    conn, writes_when_ready = await dialing
    await carrier
    assert writes_when_ready == 1
    await until_writes(dialer_transport, 2)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(dialer_transport.writes) == 2  # message 3 and the stream, in one write
    listener_raw.data_received(dialer_transport.writes[1])
    upgraded = await listening
    assert upgraded.remote_peer == dialer_config.identity.peer_id
    # the stream's bytes came with message 3: the listener has them once it is done
    assert b"/test/echo/1.0.0" in upgraded.early_plaintext
    assert b"hello" in upgraded.early_plaintext
    await conn.close()
