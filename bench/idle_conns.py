"""Opens N idle p2pnode connections to ADDR, prints "ready", and holds them until stdin closes."""

from __future__ import annotations

import asyncio
import sys

from p2pnode.cli.output import raise_open_file_limit
from p2pnode.net.transport import TransportConfig, dial
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr


async def main(addr: str, count: int) -> None:
    async def no_streams(stream: object) -> None:
        return None

    target = Multiaddr.from_string(addr)
    conns = []
    for _ in range(count):  # one peer per connection, as many agents would be
        config = TransportConfig(identity=Identity.generate(), keepalive_interval=None)
        conns.append(await dial(target, config, no_streams))  # type: ignore[arg-type]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for conn in conns:
        await conn.close()


if __name__ == "__main__":
    raise_open_file_limit()
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
