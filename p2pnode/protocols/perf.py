"""The libp2p perf protocol ``/perf/1.0.0``: measure upload and download throughput.

The client sends an 8-byte big-endian byte count (how much it wants back), then its
upload, then half-closes. The server discards the upload as it comes, sends the
requested count of bytes and half-closes.

A node serves it only when asked (``serve_perf``, ``p2pnode serve --perf``): it makes the
node send data on request. What one stream may ask for is capped (``max_download``).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pnode.errors import (
    DecodeError,
    LocalProtocolError,
    ProtocolNotSupportedError,
    RemoteProtocolError,
    StreamResetError,
)

if TYPE_CHECKING:
    from p2pnode.net.host import Host, PeerLike
    from p2pnode.net.stream import Stream

log = logging.getLogger(__name__)

PROTOCOL_ID = "/perf/1.0.0"
HEADER_SIZE = 8
MAX_HEADER_VALUE = (1 << 64) - 1
CHUNK_SIZE = 64 * 1024
# What the server sends for one stream at most. 1 GiB covers the sizes perf runs use
# (libp2p's perf dashboards move 100 MB) while keeping what a peer can make the node send
# per request to seconds of loopback work; the spec's u64 would let it ask for 16 EiB.
DEFAULT_MAX_DOWNLOAD = 1 << 30
HEADER_TIMEOUT = 10.0  # seconds the server waits for the 8-byte request

_ZEROS = memoryview(bytes(CHUNK_SIZE))  # every byte sent is taken from this one block


def encode_header(download: int) -> bytes:
    """The request header: how many bytes the client wants back."""
    if not 0 <= download <= MAX_HEADER_VALUE:
        raise LocalProtocolError(f"a perf download must be 0..2**64-1 bytes, not {download}")
    return download.to_bytes(HEADER_SIZE, "big")


def decode_header(data: bytes) -> int:
    """The byte count in an 8-byte request header; DecodeError for any other length."""
    if len(data) != HEADER_SIZE:
        raise DecodeError(f"a perf header is {HEADER_SIZE} bytes, not {len(data)}")
    return int.from_bytes(data, "big")


@dataclass(frozen=True, slots=True)
class PerfResult:
    """What one perf run moved and how long each phase took (seconds).

    ``upload_seconds`` runs from the header's write to the half-close; ``download_seconds``
    from the half-close to the end of the download, and includes ``first_byte_seconds``
    (None when nothing was downloaded): the wait for the server's first byte.
    """

    upload_bytes: int
    download_bytes: int
    upload_seconds: float
    download_seconds: float
    total_seconds: float
    first_byte_seconds: float | None


async def _send(stream: Stream, size: int) -> None:
    """Write ``size`` bytes taken from the shared block, waiting for credit as needed."""
    full, rest = divmod(size, CHUNK_SIZE)
    for _ in range(full):
        await stream.write(_ZEROS)
    if rest:
        await stream.write(_ZEROS[:rest])


async def handle_perf(stream: Stream, *, max_download: int = DEFAULT_MAX_DOWNLOAD) -> None:
    """Serve one perf request: read the header, discard the upload, send the download.

    A request over ``max_download`` is refused by resetting the stream (and logged);
    a stream that ends inside its header raises DecodeError (the node resets it).
    """
    stream.set_deadline(HEADER_TIMEOUT)
    try:
        header = await stream.readexactly(HEADER_SIZE)
    except DecodeError as exc:
        raise DecodeError(f"perf request from {stream.remote_peer} cut short: {exc}") from None
    stream.set_deadline(None)
    wanted = decode_header(header)
    if wanted > max_download:
        log.warning(
            "perf: refused %s: it asked for %d bytes, over the limit of %d; stream reset",
            stream.remote_peer,
            wanted,
            max_download,
        )
        stream.reset()
        return
    uploaded = 0
    while chunk := await stream.read():
        uploaded += len(chunk)
    await _send(stream, wanted)
    await stream.close_write()
    log.info("perf: %s uploaded %d bytes and downloaded %d", stream.remote_peer, uploaded, wanted)


def serve_perf(host: Host, max_download: int = DEFAULT_MAX_DOWNLOAD) -> None:
    """Serve ``/perf/1.0.0`` on ``host``, sending at most ``max_download`` bytes a stream."""
    host.set_handler(PROTOCOL_ID, functools.partial(handle_perf, max_download=max_download))


async def run_perf(stream: Stream, upload: int, download: int) -> PerfResult:
    """Upload ``upload`` bytes and download ``download`` on an open perf stream.

    RemoteProtocolError when the peer resets the stream or sends another byte count.
    """
    header = encode_header(download)
    if upload < 0:
        raise LocalProtocolError(f"a perf upload must be >= 0 bytes, not {upload}")
    phase = "upload"
    received = 0
    try:
        started = time.perf_counter()
        await stream.write(header)
        await _send(stream, upload)
        await stream.close_write()
        uploaded = time.perf_counter()
        phase = "download"
        first_byte: float | None = None
        while chunk := await stream.read():
            if first_byte is None:
                first_byte = time.perf_counter()
            received += len(chunk)
            if received > download:
                raise RemoteProtocolError(
                    f"the peer sent more than the {download} bytes asked for on {PROTOCOL_ID}"
                )
        done = time.perf_counter()
    except StreamResetError:
        sent = f"{upload} bytes sent, " if phase == "download" else ""
        raise RemoteProtocolError(
            f"the peer reset the perf stream during the {phase} ({sent}{received} of "
            f"{download} bytes received); a server refuses downloads over its limit "
            f"(p2pnode's default: {DEFAULT_MAX_DOWNLOAD >> 30} GiB)"
        ) from None
    if received != download:
        raise RemoteProtocolError(
            f"the peer closed the perf stream after {received} of the {download} bytes asked for"
        )
    await stream.close()
    return PerfResult(
        upload_bytes=upload,
        download_bytes=received,
        upload_seconds=uploaded - started,
        download_seconds=done - uploaded,
        total_seconds=done - started,
        first_byte_seconds=None if first_byte is None else first_byte - uploaded,
    )


async def measure_perf(host: Host, peer: PeerLike, upload: int, download: int) -> PerfResult:
    """Open a perf stream to ``peer`` and run :func:`run_perf` on it."""
    try:
        stream = await host.new_stream(peer, [PROTOCOL_ID])
    except ProtocolNotSupportedError:
        raise ProtocolNotSupportedError(
            f"the peer does not serve {PROTOCOL_ID}; a p2pnode peer serves it only when "
            "started with `p2pnode serve --perf`"
        ) from None
    try:
        return await run_perf(stream, upload, download)
    except BaseException:
        stream.reset()
        raise
