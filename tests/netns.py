"""pytest glue for tests that need private network namespaces (all mDNS tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

import pytest

from p2pnode.demo.netns import Host, Process, namespaces_unavailable

__all__ = [
    "Host",
    "Process",
    "SwitchedHost",
    "p2pnode",
    "require_netns",
    "run_json",
    "switched_hosts",
]


def require_netns() -> None:
    """Skip, or fail under P2PNODE_REQUIRE_NETNS=1, when namespaces cannot be made."""
    reason = namespaces_unavailable()
    if reason is not None:
        if os.environ.get("P2PNODE_REQUIRE_NETNS") == "1":
            pytest.fail(f"P2PNODE_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def p2pnode(host: Host, *args: str) -> list[str]:
    return host.argv([sys.executable, "-m", "p2pnode", *args])


def run_json(argv: Sequence[str], env: dict[str, str], timeout: float = 60) -> list[dict[str, Any]]:
    """Run to completion; return its JSON lines (AssertionError on a non-zero exit)."""
    result = subprocess.run(argv, capture_output=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{argv} exited {result.returncode}: {result.stderr.decode()}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


_switch_serial = count()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


@dataclass(frozen=True, slots=True)
class SwitchedHost:
    """A namespace on the switch: its name, its link's name in the switch, its addresses."""

    name: str
    port: str  # its veth end in the switch namespace (set it down to cut the host off)
    switch: str  # the switch namespace
    ips: tuple[str, ...]

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def set_link(self, up: bool) -> None:
        """Plug the host into the switch or pull its cable (its processes keep running)."""
        _ip("-n", self.switch, "link", "set", self.port, "up" if up else "down")


@contextmanager
def switched_hosts(
    hosts: int, addrs_per_host: int, subnet: str = "10.214"
) -> Iterator[list[SwitchedHost]]:
    """``hosts`` namespaces on one Linux bridge (itself in a "switch" namespace).

    Host ``i`` (from 1) has the addresses ``<subnet>.<i>.1`` .. ``.<addrs_per_host>``, all
    in one /16, so every address reaches every other through the bridge. No namespace
    has a route anywhere else, and IPv6 is off in all of them. Everything is deleted
    afterwards (the veths and the bridge go with their namespaces); the caller must
    have stopped the processes it started inside.
    """
    tag = f"{os.getpid() % 100000}x{next(_switch_serial)}"
    switch = f"p2psw{tag}"
    created: list[str] = []
    no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]

    def add_namespace(name: str) -> None:
        _ip("netns", "add", name)
        created.append(name)
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", *no_ipv6], capture_output=True
        )
        _ip("-n", name, "link", "set", "lo", "up")

    try:
        add_namespace(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        result = []
        for i in range(1, hosts + 1):
            name, port = f"p2ph{tag}x{i}", f"sw{i}"
            add_namespace(name)
            _ip("link", "add", "eth0", "netns", name, "type", "veth",
                "peer", "name", port, "netns", switch)  # fmt: skip
            _ip("-n", switch, "link", "set", port, "master", "br0")
            _ip("-n", switch, "link", "set", port, "up")
            ips = tuple(f"{subnet}.{i}.{j}" for j in range(1, addrs_per_host + 1))
            for ip in ips:
                _ip("-n", name, "addr", "add", f"{ip}/16", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            result.append(SwitchedHost(name, port, switch, ips))
        yield result
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
