"""Shared fixtures: nodes on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from p2pnode.identity import Identity
from p2pnode.node import Node, NodeConfig

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


async def start_node(**config: object) -> Node:
    return await Node.start(Identity.generate(), [LOOPBACK], NodeConfig(**config))  # type: ignore[arg-type]


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


def addr_of(node: Node) -> str:
    """The first listen address of ``node`` with its /p2p suffix."""
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))
