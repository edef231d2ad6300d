"""The muxer chosen inside Noise with js-libp2p (@chainsafe/libp2p-noise 17), both ways.

js picks the muxer in the handshake by default; ``--no-inline-muxer`` makes the js peer
behave as js-libp2p did before noise 16.1 (no list, multistream-select afterwards).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import pytest

from p2pnode.net.connection import Connection
from p2pnode.net.stream import Stream
from p2pnode.node import Node, NodeConfig
from p2pnode.wire.identity import Identity

from .jspeer import js_dial, start_js_listener

pytestmark = pytest.mark.interop

ECHO = "/p2pnode/echo/1.0.0"
YAMUX, MPLEX = "/yamux/1.0.0", "/mplex/6.7.0"


class EchoRecorder:
    """Echoes like the js peer's echo protocol and records the connections it served."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    async def __call__(self, stream: Stream) -> None:
        self.connections.append(cast(Connection, stream.connection))
        while chunk := await stream.read():
            await stream.write(chunk)
        await stream.close()


@pytest.fixture
async def listener() -> AsyncIterator[tuple[Node, EchoRecorder]]:
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    echo = EchoRecorder()
    node.set_handler(ECHO, echo)
    yield node, echo
    await node.stop()


def full_addr(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


async def js_echo(node: Node, *args: str) -> dict[str, object]:
    result = await js_dial(full_addr(node), "echo", "--size", "100", *args)
    assert result["ok"] is True, result
    return result


@pytest.mark.parametrize(("js_muxers", "chosen"), [("both", YAMUX), ("mplex", MPLEX)])
async def test_js_dials_and_the_muxer_is_chosen_in_noise(
    listener: tuple[Node, EchoRecorder], js_muxers: str, chosen: str
) -> None:
    node, echo = listener
    result = await js_echo(node, "--muxer", js_muxers)
    (conn,) = echo.connections
    assert conn.muxer_in_handshake and conn.muxer_protocol == chosen
    assert result["muxer"] == chosen


@pytest.mark.parametrize(("js_muxers", "chosen"), [("both", YAMUX), ("mplex-first", YAMUX)])
async def test_p2pnode_dials_js_and_its_preference_wins(js_muxers: str, chosen: str) -> None:
    js = await start_js_listener("--muxer", js_muxers)
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    try:
        conn = await node.dial(js.addr)
        assert conn.muxer_in_handshake and conn.muxer_protocol == chosen
        assert len(await node.ping(js.addr, count=2)) == 2
    finally:
        await node.stop()
        await js.stop()


async def test_js_without_inlining_dials_and_multistream_chooses(
    listener: tuple[Node, EchoRecorder],
) -> None:
    node, echo = listener
    result = await js_echo(node, "--no-inline-muxer")
    (conn,) = echo.connections
    assert not conn.muxer_in_handshake and conn.muxer_protocol == YAMUX
    assert result["muxer"] == YAMUX


@pytest.mark.parametrize("ours", ["inline", "no-inline"])
async def test_p2pnode_dials_js_without_inlining(ours: str) -> None:
    js = await start_js_listener("--no-inline-muxer")
    config = NodeConfig(inline_muxer_negotiation=ours == "inline")
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], config)
    try:
        conn = await node.dial(js.addr)
        assert not conn.muxer_in_handshake and conn.muxer_protocol == YAMUX
        assert len(await node.ping(js.addr, count=2)) == 2
    finally:
        await node.stop()
        await js.stop()


async def test_js_and_p2pnode_without_a_common_muxer_fail_the_handshake() -> None:
    js = await start_js_listener("--muxer", "mplex")
    node = await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=("yamux",))
    )
    try:
        with pytest.raises(Exception, match="no stream muxer in common"):
            await node.dial(js.addr)
    finally:
        await node.stop()
        await js.stop()


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="js-libp2p's noise 17.0.0 as initiator picks the first muxer of the responder's "
    "list, the spec (and go, and p2pnode) the first of the initiator's: when js prefers "
    "mplex and we yamux, js runs yamux and we mplex",
)
async def test_js_preferring_mplex_dials_p2pnode_preferring_yamux(
    listener: tuple[Node, EchoRecorder],
) -> None:
    node, _ = listener
    await js_echo(node, "--muxer", "mplex-first")
