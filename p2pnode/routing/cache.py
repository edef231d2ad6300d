"""The address cache on disk: where peers were reachable recently, across processes."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from p2pnode.errors import P2PError
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr


class AddressCache:
    """A small on-disk cache of peer addresses that worked, shared by the commands of a user.

    As a router it answers with what it remembers; the node tells it what connected.
    """

    name = "cache"

    def __init__(
        self, path: Path | None = None, max_entries: int = 256, max_age: float = 3600
    ) -> None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        self.path = path or Path(base) / "p2pnode" / "peers.json"
        self.max_entries = max_entries
        self.max_age = max_age

    def _load(self) -> dict[str, tuple[float, list[str]]]:
        """``{peer: (seen, addrs)}``; a missing or corrupt file reads as empty."""
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries: dict[str, tuple[float, list[str]]] = {}
        if isinstance(raw, dict):
            for key, value in raw.items():
                if not isinstance(value, dict):
                    continue
                seen, addrs = value.get("seen"), value.get("addrs")
                if isinstance(seen, int | float) and isinstance(addrs, list):
                    entries[str(key)] = (float(seen), [a for a in addrs if isinstance(a, str)])
        return entries

    def get(self, peer_id: PeerId) -> tuple[Multiaddr, ...]:
        """Cached addresses of ``peer_id`` that are not too old."""
        entry = self._load().get(str(peer_id))
        if entry is None or time.time() - entry[0] > self.max_age:
            return ()
        addrs: list[Multiaddr] = []
        for text in entry[1]:
            with contextlib.suppress(P2PError):
                addrs.append(Multiaddr.from_string(text))
        return tuple(addrs)

    def put(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Remember ``addrs`` for ``peer_id`` (atomic write; oldest entries evicted)."""
        entries = self._load()
        entries[str(peer_id)] = (time.time(), [str(a) for a in addrs])
        newest = sorted(entries.items(), key=lambda kv: kv[1][0])[-self.max_entries :]
        data = {key: {"seen": seen, "addrs": texts} for key, (seen, texts) in newest}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    async def find_peer(self, peer_id: PeerId, timeout: float) -> Sequence[Multiaddr]:
        """The cached addresses of ``peer_id`` (no I/O beyond reading the file)."""
        return self.get(peer_id)

    def remember(self, peer_id: PeerId, addrs: Sequence[Multiaddr]) -> None:
        """Addresses of ``peer_id`` that just worked."""
        with contextlib.suppress(OSError):
            self.put(peer_id, addrs)
