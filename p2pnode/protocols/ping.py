"""The libp2p ping protocol: the dialer sends 32 random bytes, the listener echoes them."""

from __future__ import annotations

import os
import time

from p2pnode.errors import DecodeError, RemoteProtocolError
from p2pnode.net.stream import Stream

PROTOCOL_ID = "/ipfs/ping/1.0.0"
PING_SIZE = 32


def _same(data: bytes) -> bytes:
    return data


async def handle_ping(stream: Stream) -> None:
    """Echo what the peer sends until it closes the stream.

    The echo is byte for byte, so 32-byte pings split or joined in transit come back
    whole; it is sent from the receive path (:meth:`Stream.answer_inline`).
    """
    await stream.answer_inline(_same)
    await stream.close()


async def ping_rtts(stream: Stream, count: int) -> list[float]:
    """Send ``count`` pings on an open ping stream; return each round-trip time in seconds."""
    rtts: list[float] = []
    for _ in range(count):
        payload = os.urandom(PING_SIZE)
        started = time.perf_counter()
        await stream.write(payload)
        try:
            answer = await stream.readexactly(PING_SIZE)
        except DecodeError as exc:
            raise RemoteProtocolError(f"peer stopped answering pings: {exc}") from exc
        rtts.append(time.perf_counter() - started)
        if answer != payload:
            raise RemoteProtocolError("ping answer does not match what was sent")
    await stream.close()
    return rtts
