"""``find-peer`` and ``find``: a short-lived DHT client node asks the network."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from p2pnode.errors import DiscoveryError, LocalProtocolError
from p2pnode.node import Node, NodeConfig
from p2pnode.protocols.kad.dht import DhtConfig, DhtMode
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.kad import provider_key_for_kind
from p2pnode.wire.multiaddr import Multiaddr

if TYPE_CHECKING:
    from p2pnode.cli.output import Output


def dht_config(
    bootstrap: Sequence[str], protocol_id: str, mode: DhtMode = DhtMode.CLIENT
) -> DhtConfig:
    """The DHT settings of a command; a CLI client needs someone to ask."""
    addrs = [Multiaddr.from_string(a) for a in bootstrap]
    for addr in addrs:
        if addr.peer_id is None:
            raise LocalProtocolError(f"--bootstrap {addr} needs /p2p/<peer id> at its end")
    return DhtConfig(protocol_id=protocol_id, mode=mode, bootstrap=addrs, maintain=False)


async def _client(identity: Identity, config: DhtConfig) -> Node:
    if not config.bootstrap:
        raise LocalProtocolError(
            "the DHT needs a first peer to ask: pass --bootstrap MADDR of a DHT node "
            "(e.g. a `p2pnode serve --dht server` node's address)"
        )
    node = Node(identity, NodeConfig(keepalive_interval=None, dht=config))
    assert node.dht is not None
    await node.dht.start()
    if await node.dht.bootstrap() == 0:
        await node.stop()
        raise DiscoveryError("no bootstrap peer answered as a DHT server")
    return node


async def find_peer_cli(
    out: Output, identity: Identity, peer_text: str, config: DhtConfig, timeout: float
) -> None:
    """Print the addresses the DHT knows of a PeerId; exit 3 when nobody does."""
    peer = PeerId.from_string(peer_text)
    started = time.perf_counter()
    node = await _client(identity, config)
    try:
        assert node.dht is not None
        addrs = await node.dht.find_peer(peer, timeout)
        stats = node.dht.last_lookup
    finally:
        await node.stop()
    if not addrs:
        raise DiscoveryError(f"the DHT does not know {peer}: is it running, with --dht on?")
    texts = [str(a) for a in addrs]
    out.emit(
        "found",
        "\n".join(texts),
        peer_id=str(peer),
        addrs=texts,
        hops=stats.hops,
        messages=stats.messages,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
    )


async def find_providers_cli(
    out: Output, identity: Identity, kind: str, config: DhtConfig, timeout: float, limit: int
) -> None:
    """Print peers that serve tasks of ``kind``; exit 3 when none is found."""
    node = await _client(identity, config)
    try:
        assert node.dht is not None
        providers = await node.dht.find_providers(
            provider_key_for_kind(kind), limit=limit, timeout=timeout
        )
    finally:
        await node.stop()
    if not providers:
        raise DiscoveryError(f"no peer in the DHT provides kind {kind!r}")
    for provider in providers:
        texts = [str(a) for a in provider.addrs]
        out.emit(
            "provider",
            f"{provider.peer_id}  " + " ".join(texts),
            peer_id=str(provider.peer_id),
            addrs=texts,
            kind=kind,
        )
