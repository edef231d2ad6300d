"""``p2pnode card PEER``: fetch, verify and print a peer's agent card."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from p2pnode.errors import P2PTimeoutError
from p2pnode.node import Node, NodeConfig
from p2pnode.wire.identity import Identity

if TYPE_CHECKING:
    from p2pnode.cli.output import Output
    from p2pnode.protocols.card import AgentCard


def card_text(card: AgentCard) -> str:
    """A card for people: who, what, and each kind on a line."""
    lines = [f"{card.name or '(no name)'}  {card.peer_id}  {card.version}"]
    if card.description:
        lines.append(f"  {card.description}")
    load = card.load
    lines.append(f"  load: {load.running}/{load.max} running, {load.queued} queued")
    lines.append(f"  protocols: {', '.join(card.protocols)}")
    for kind in card.kinds:
        flags = " (streaming)" if kind.streaming else ""
        types = f"{','.join(kind.input_types)} -> {','.join(kind.output_types)}"
        lines.append(f"  {kind.kind}{flags}: {kind.description or '-'}  [{types}]")
        if kind.input_schema is not None:
            lines.append(f"    input schema: {msgspec.json.encode(kind.input_schema).decode()}")
    return "\n".join(lines)


async def print_card(out: Output, identity: Identity, peer: str, timeout: float) -> None:
    node = Node(identity, NodeConfig(keepalive_interval=None, peer_routing=("cache", "mdns")))
    try:
        try:
            async with asyncio.timeout(timeout):
                card = await node.fetch_card(peer, timeout)
        except TimeoutError:
            raise P2PTimeoutError(
                f"no card from {peer} within {timeout:g}s: is it a p2pnode serve that is "
                "running and reachable? (--timeout allows more time)"
            ) from None
    finally:
        await node.stop()
    if out.as_json:
        out.emit("card", "", **msgspec.to_builtins(card))
    else:
        out.line(card_text(card))
