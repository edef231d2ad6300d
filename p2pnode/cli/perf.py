"""``p2pnode perf``: measure throughput to a peer with the libp2p perf protocol."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import click

from p2pnode.errors import P2PTimeoutError
from p2pnode.protocols.perf import MAX_HEADER_VALUE, PerfResult, measure_perf

if TYPE_CHECKING:
    from p2pnode.cli.output import Output

_UNITS: dict[str, int] = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_UNITS.update({f"{p}b": v for p, v in _UNITS.items() if p not in ("", "b")})
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in ``text``: ``4096``, ``10MiB`` (powers of 1024), ``1M`` or ``1MB`` (of 1000).

    ValueError for anything else, or for a size that is not a whole number of bytes.
    """
    match = _SIZE.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(f"{text!r} is not a size: use bytes, or a suffix K M G (KiB MiB GiB)")
    number: str = match.group(1)
    whole, _, fraction = number.partition(".")
    scale: int = 10 ** len(fraction)
    numerator = (int(whole) * scale + int(fraction or 0)) * unit
    if numerator % scale:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return numerator // scale


class ByteSize(click.ParamType):  # type: ignore[type-arg, unused-ignore]
    """A byte count, with an optional K/M/G (SI) or KiB/MiB/GiB suffix."""

    name = "bytes"

    def __init__(self, maximum: int = MAX_HEADER_VALUE) -> None:
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            try:
                size = parse_size(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if size > self.maximum:
            self.fail(f"{value!r} is over the maximum of {self.maximum} bytes", param, ctx)
        return size


def human_size(size: float) -> str:
    """``10.0 MiB``, ``512 B``: binary units, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _phase(name: str, size: int, seconds: float) -> str:
    rate = f" ({human_size(size / seconds)}/s)" if size and seconds > 0 else ""
    return f"{name} {human_size(size)} in {seconds:.3f} s{rate}"


def _per_s(size: int, seconds: float) -> float | None:
    return round(size / seconds, 1) if size and seconds > 0 else None


def describe(result: PerfResult) -> tuple[str, dict[str, Any]]:
    """The human line and the JSON fields of a ``perf`` event."""
    both = result.upload_bytes + result.download_bytes
    human = (
        f"{_phase('upload', result.upload_bytes, result.upload_seconds)}, "
        f"{_phase('download', result.download_bytes, result.download_seconds)}; "
        f"{_phase('total', both, result.total_seconds)}"
    )
    first_byte = result.first_byte_seconds
    fields = {
        "upload_bytes": result.upload_bytes,
        "download_bytes": result.download_bytes,
        "upload_ms": round(result.upload_seconds * 1000, 3),
        "download_ms": round(result.download_seconds * 1000, 3),
        "total_ms": round(result.total_seconds * 1000, 3),
        "first_byte_ms": None if first_byte is None else round(first_byte * 1000, 3),
        "upload_bytes_per_s": _per_s(result.upload_bytes, result.upload_seconds),
        "download_bytes_per_s": _per_s(result.download_bytes, result.download_seconds),
    }
    return human, fields


async def perf_cli(
    out: Output, addr: str, upload: int, download: int, muxers: tuple[str, ...], timeout: float
) -> None:
    """Connect to ``addr``, run one perf measurement and print it."""
    import asyncio

    from p2pnode.node import Node, NodeConfig
    from p2pnode.wire.identity import Identity
    from p2pnode.wire.multiaddr import Multiaddr

    target = Multiaddr.from_string(addr)
    node = Node(Identity.generate(), NodeConfig(muxers=muxers, keepalive_interval=None))
    try:
        async with asyncio.timeout(timeout):
            conn = await node.dial(target)
            out.emit(
                "connected",
                f"connected to {conn.remote_peer} via {conn.muxer_protocol}",
                peer_id=str(conn.remote_peer),
                addr=str(target),
                muxer=conn.muxer_protocol,
            )
            result = await measure_perf(node, conn.remote_peer, upload, download)
    except TimeoutError:
        raise P2PTimeoutError(
            f"perf did not complete within {timeout:g} s (raise --timeout for large sizes)"
        ) from None
    finally:
        await node.stop()
    human, fields = describe(result)
    out.emit("perf", human, peer_id=str(conn.remote_peer), **fields)
