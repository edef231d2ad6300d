"""The perf protocol /perf/1.0.0 against py-libp2p 0.8.1's PerfService, both directions.

The py peer (``tests/interop/py/peer.py``) serves perf after ``perf-serve`` and runs
py-libp2p's own perf client with ``perf``; each side checks the byte counts it moved.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from p2pnode.node import Node, NodeConfig
from p2pnode.protocols.perf import measure_perf, serve_perf
from p2pnode.wire.identity import Identity

from .pypeer import PeerCommandError, PyPeer, start_py_peer

pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module")]

MIB = 1 << 20
UPLOAD, DOWNLOAD = MIB, 2 * MIB


@pytest.fixture(scope="module", params=["yamux", "mplex"])
def muxer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def py(muxer: str) -> AsyncIterator[PyPeer]:
    """The py-libp2p peer, offering only ``muxer``, serving /perf/1.0.0."""
    peer = await start_py_peer("--muxer", muxer)
    await peer.command("perf-serve")
    yield peer
    assert await peer.stop() == 0, peer.stderr()


@pytest_asyncio.fixture(loop_scope="module")
async def node(muxer: str) -> AsyncIterator[Node]:
    node = await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=(muxer,), mdns=False)
    )
    yield node
    await node.stop()


def full_addr(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


async def test_p2pnode_client_py_server(py: PyPeer, node: Node, muxer: str) -> None:
    result = await measure_perf(node, py.addr, UPLOAD, DOWNLOAD)
    assert (result.upload_bytes, result.download_bytes) == (UPLOAD, DOWNLOAD)
    (conn,) = node.connections(py.peer_id)
    assert conn.muxer_protocol.startswith(f"/{muxer}/")


async def test_p2pnode_client_py_server_zero_bytes(py: PyPeer, node: Node) -> None:
    result = await measure_perf(node, py.addr, 0, 0)
    assert (result.upload_bytes, result.download_bytes) == (0, 0)


async def test_py_client_p2pnode_server(
    py: PyPeer, node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "p2pnode.protocols.perf")
    serve_perf(node)
    report = await py.command("perf", addr=full_addr(node), upload=UPLOAD, download=DOWNLOAD)
    assert report["type"] == "final"
    assert (report["upload_bytes"], report["download_bytes"]) == (UPLOAD, DOWNLOAD)
    # what the p2pnode server counted on its side
    assert f"{py.peer_id} uploaded {UPLOAD} bytes and downloaded {DOWNLOAD}" in caplog.text


async def test_py_client_gets_refused_by_a_p2pnode_without_perf(py: PyPeer, node: Node) -> None:
    # py-libp2p names no protocol: "failed to open a stream" is multistream-select's "na"
    with pytest.raises(PeerCommandError, match="StreamFailure: failed to open a stream"):
        await py.command("perf", addr=full_addr(node), upload=0, download=1)
