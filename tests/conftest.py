"""Shared fixtures: nodes on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from p2pnode.demo.netns import Host, two_hosts
from p2pnode.net.connection import Connection
from p2pnode.node import Node, NodeConfig
from p2pnode.protocols.task.handlers import EchoHandler, TaskHandler
from p2pnode.protocols.task.server import TaskServer
from p2pnode.wire.identity import Identity, PeerId

from .netns import require_netns

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
MakeServer = Callable[..., Awaitable[TaskServer]]


async def start_node(**config: object) -> Node:
    return await Node.start(Identity.generate(), [LOOPBACK], NodeConfig(**config))  # type: ignore[arg-type]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    """Start task servers (a node each, echo unless told), stopped after the test."""
    nodes: list[Node] = []

    async def make(handlers: dict[str, TaskHandler] | None = None, **options: object) -> TaskServer:
        node = await start_node()
        nodes.append(node)
        server = TaskServer(
            node,
            handlers or {"default": EchoHandler()},
            **options,  # type: ignore[arg-type]
        )
        server.install()
        return server

    yield make
    for node in nodes:
        await node.stop()


@pytest.fixture
async def server() -> AsyncIterator[Node]:
    node = await start_node()
    yield node
    await node.stop()


@pytest.fixture
async def client() -> AsyncIterator[Node]:
    node = await start_node()
    yield node
    await node.stop()


async def inbound_connection(server: Node, peer: PeerId, timeout: float = 10) -> Connection:
    """The listener's side of a connection ``peer`` dialed: with the muxer chosen in the
    Noise handshake, the dialer is done half a round trip before the listener."""
    async with asyncio.timeout(timeout):
        while not server.connections(peer):
            await asyncio.sleep(0.001)
    (conn,) = server.connections(peer)
    return conn


def addr_of(node: Node) -> str:
    """The first listen address of ``node`` with its /p2p suffix."""
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    """Two private network namespaces joined by a veth pair (mDNS stays inside)."""
    require_netns()
    with two_hosts() as pair:
        yield pair


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for p2pnode subprocesses: key files and caches under tmp_path."""
    return dict(
        os.environ,
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
