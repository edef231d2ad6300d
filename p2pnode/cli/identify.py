"""``p2pnode id PEER``: what a remote peer says about itself (as ``ipfs id PEER`` does)."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from p2pnode.errors import P2PTimeoutError, RemoteProtocolError

if TYPE_CHECKING:
    from p2pnode.cli.output import Output
    from p2pnode.protocols.identify import IdentifyInfo


def describe_peer(info: IdentifyInfo) -> tuple[str, dict[str, Any]]:
    """The human lines and the JSON fields of a remote ``id`` event."""
    key = info.public_key
    fields: dict[str, Any] = {
        "peer_id": str(info.peer_id) if info.peer_id else None,
        "public_key": base64.b64encode(key.to_protobuf()).decode() if key else None,
        "agent_version": info.agent_version,
        "protocol_version": info.protocol_version,
        "listen_addrs": [str(a) for a in info.listen_addrs],
        "protocols": sorted(info.protocols),
        "observed_addr": str(info.observed_addr) if info.observed_addr else None,
    }
    lines = [
        f"peer_id           {fields['peer_id']}",
        f"public_key        {fields['public_key']}",
        f"agent_version     {info.agent_version or '(none)'}",
        f"protocol_version  {info.protocol_version or '(none)'}",
        "addresses",
        *(f"  {a}" for a in fields["listen_addrs"]),
        "protocols",
        *(f"  {p}" for p in fields["protocols"]),
        f"sees us at        {fields['observed_addr'] or '(not said)'}",
    ]
    return "\n".join(lines), fields


async def identify_cli(out: Output, target: str, timeout: float) -> None:
    """Connect to ``target`` (a multiaddr with /p2p, or a PeerId to look up), identify it."""
    import asyncio

    from p2pnode.node import Node, NodeConfig
    from p2pnode.wire.identity import Identity

    node = Node(
        Identity.generate(), NodeConfig(keepalive_interval=None, peer_routing=("cache", "mdns"))
    )
    try:
        async with asyncio.timeout(timeout):
            conn = await node.connect(target)
            info = await node.identify_service.identify(conn.remote_peer)
    except TimeoutError:
        raise P2PTimeoutError(
            f"the peer did not identify itself within --timeout {timeout:g}s"
        ) from None
    finally:
        await node.stop()
    if info.peer_id is not None and info.peer_id != conn.remote_peer:
        raise RemoteProtocolError(
            f"{conn.remote_peer} sent the public key of another peer ({info.peer_id})"
        )
    human, fields = describe_peer(info)
    fields["peer_id"] = str(conn.remote_peer)
    fields["addr"] = str(conn.remote_addr)
    out.emit("peer", human, **fields)
