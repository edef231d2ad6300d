"""pytest glue for the two-NAT topology (:mod:`p2pnode.demo.nat_topology`, shared with
``make demo-nat``): skip or fail when it cannot be built, run processes inside it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from p2pnode.demo.nat_topology import (
    Host,
    Mapping,
    NatTopology,
    Router,
    nat_topology,
    nftables_unavailable,
)

from .netns import Process, require_netns

__all__ = [
    "Host",
    "Mapping",
    "NatTopology",
    "Process",
    "Router",
    "nat_topology",
    "nftables_unavailable",
    "require_nat_topology",
    "running",
]


def require_nat_topology() -> None:
    """Skip, or fail under P2PNODE_REQUIRE_NETNS=1, when the topology cannot be built."""
    require_netns()
    reason = nftables_unavailable()
    if reason is not None:
        if os.environ.get("P2PNODE_REQUIRE_NETNS") == "1":
            pytest.fail(f"P2PNODE_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


@contextmanager
def running(
    host: Host | Router, command: Sequence[str], env: dict[str, str] | None = None
) -> Iterator[Process]:
    """Run a long-lived ``command`` inside ``host`` (stdin/stdout/stderr piped; read its
    JSON-line events with ``Process.event``); stopped by its PID when the block ends.

    ``ip netns exec`` execs the command, so the PID is the command's own.
    """
    process = Process(host.argv(command), dict(os.environ) if env is None else env)
    try:
        yield process
    finally:
        process.stop()
