"""Prints mDNS discovery events as JSON lines (run inside a test namespace)."""

from __future__ import annotations

import asyncio
import json

from p2pnode.discovery import MdnsDiscovery, PeerDiscovered
from p2pnode.identity import Identity


async def main() -> None:
    discovery = MdnsDiscovery(Identity.generate().peer_id, [], query_interval=1.0)
    await discovery.start()
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        async for event in discovery.events():
            if isinstance(event, PeerDiscovered):
                fields = {
                    "peer_id": str(event.peer.peer_id),
                    "addrs": [str(a) for a in event.peer.addrs],
                }
                print(json.dumps({"event": "discovered", **fields}), flush=True)
            else:
                print(json.dumps({"event": "expired", "peer_id": str(event.peer_id)}), flush=True)
    finally:
        await discovery.stop()


if __name__ == "__main__":
    asyncio.run(main())
