"""Two private LANs, each behind its own NAT router, and a public segment, for NAT tests.

Everything lives in private network namespaces made here (root and iproute2 needed,
nftables for the routers)::

    a (LAN 1) --- nat1 ---+                        +--- nat2 --- b (LAN 2)
    10.231.T.2   .1 | wan |--- br0 (public ns) ----| wan | .1    10.233.T.2
                 10.232.T.1     |          |     10.232.T.2
                             relay      bootstrap
                           10.232.T.10  10.232.T.11

Each router forwards, masquerades what leaves its public side (``wan0``), and keeps a
stateful filter: established/related accepted, LAN to public accepted, everything else
arriving on the public side *dropped* (never rejected: a RST or ICMP answer would break
TCP simultaneous open). The public hosts have no route to the LANs. Nothing here has a
route to any real network; all of it is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count

from p2pnode.demo.netns import Host

__all__ = ["Host", "Mapping", "NatTopology", "Router", "nat_topology", "nftables_unavailable"]

LAN1, PUBLIC, LAN2 = "10.231", "10.232", "10.233"
LAN_DEV, WAN_DEV = "lan0", "wan0"  # router interface names (per namespace, so fixed)

_serial = count()
_install_tried = False


@dataclass(frozen=True, slots=True)
class Mapping:
    """One TCP connection tracked by a router: its state, and (src, sport, dst, dport)
    as it arrived (``orig``) and as replies must look (``reply``, after translation)."""

    state: str
    replied: bool  # conntrack has seen a packet in the reply direction
    orig: tuple[str, int, str, int]
    reply: tuple[str, int, str, int]


@dataclass(frozen=True, slots=True)
class Router:
    """A NAT router namespace: its LAN address (the LAN's gateway) and its public one."""

    name: str
    lan_ip: str
    public_ip: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def mappings(self) -> list[Mapping]:
        """The router's tracked TCP connections (from /proc/net/nf_conntrack)."""
        listed = subprocess.run(
            self.argv(["cat", "/proc/net/nf_conntrack"]), capture_output=True, text=True
        )
        found = []
        for line in listed.stdout.splitlines():
            words = line.split()
            if len(words) < 6 or words[2] != "tcp":
                continue
            fields: dict[str, list[str]] = {}
            for word in words:
                key, eq, value = word.partition("=")
                if eq:
                    fields.setdefault(key, []).append(value)
            ends = [
                (
                    fields["src"][i],
                    int(fields["sport"][i]),
                    fields["dst"][i],
                    int(fields["dport"][i]),
                )
                for i in (0, 1)
            ]
            found.append(Mapping(words[5], "[UNREPLIED]" not in words, ends[0], ends[1]))
        return found

    def counters(self) -> dict[str, int]:
        """Packets counted so far by the router's commented rules: ``masquerade`` (new
        connections it translated), ``drop-input`` and ``drop-forward`` (unsolicited
        packets it dropped on its public side)."""
        listed = subprocess.run(
            self.argv(["nft", "-j", "list", "ruleset"]), capture_output=True, text=True, check=True
        )
        found: dict[str, int] = {}
        for item in json.loads(listed.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None or "comment" not in rule:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    found[rule["comment"]] = int(expr["counter"]["packets"])
        return found


@dataclass(frozen=True, slots=True)
class NatTopology:
    """The hosts and routers of one topology (see the module docstring)."""

    a: Host  # in LAN 1, behind nat1
    b: Host  # in LAN 2, behind nat2
    relay: Host  # public
    bootstrap: Host  # public
    nat1: Router
    nat2: Router
    public: str  # the namespace holding the public segment's bridge

    @property
    def namespaces(self) -> tuple[str, ...]:
        hosts = (self.a, self.b, self.relay, self.bootstrap, self.nat1, self.nat2)
        return (self.public, *(h.name for h in hosts))


def nftables_unavailable() -> str | None:
    """None when ``nft`` runs here, else why not. Installs nftables (once) if missing."""
    global _install_tried
    if shutil.which("nft") is None and not _install_tried and shutil.which("apt-get"):
        _install_tried = True
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nftables"],
            capture_output=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            timeout=300,
        )
    if shutil.which("nft") is None:
        return "nftables (`nft`) is not installed and `apt-get install -y nftables` failed"
    result = subprocess.run(["nft", "--version"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`nft --version` failed: {result.stderr.strip()}"
    return None


def _run(argv: Sequence[str], stdin: str | None = None) -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _ip(*args: str, netns: str) -> None:
    _run(["ip", "-n", netns, *args])


def _ruleset(lan: str, wan: str) -> str:
    """The router's nftables rules. Plain masquerade keeps the source port when that
    port is free on the public address (the tests check it)."""
    return f"""
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" counter masquerade comment "masquerade"
    }}
}}
table ip filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{lan}" oifname "{wan}" accept
        iifname "{wan}" counter drop comment "drop-forward"
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan}" ct state established,related accept
        iifname "{wan}" counter drop comment "drop-input"
    }}
}}
"""


@contextmanager
def nat_topology() -> Iterator[NatTopology]:
    """Build the topology (unique names per process and call); delete it afterwards.

    The caller must have stopped the processes it started inside (see ``running``).
    """
    serial = next(_serial)
    tag = f"{os.getpid() % 100000}x{serial}"
    third = str(serial % 250 + 1)
    topo = NatTopology(
        a=Host(f"p2pna{tag}", f"{LAN1}.{third}.2"),
        b=Host(f"p2pnb{tag}", f"{LAN2}.{third}.2"),
        relay=Host(f"p2pnr{tag}", f"{PUBLIC}.{third}.10"),
        bootstrap=Host(f"p2pns{tag}", f"{PUBLIC}.{third}.11"),
        nat1=Router(f"p2pn1{tag}", f"{LAN1}.{third}.1", f"{PUBLIC}.{third}.1"),
        nat2=Router(f"p2pn2{tag}", f"{LAN2}.{third}.1", f"{PUBLIC}.{third}.2"),
        public=f"p2pnp{tag}",
    )
    created: list[str] = []
    try:
        for name in topo.namespaces:
            _run(["ip", "netns", "add", name])
            created.append(name)
            # IPv4 only: no stray IPv6 (router solicitations, DAD) anywhere.
            no_ipv6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
            _run(["ip", "netns", "exec", name, "sysctl", "-qw", *no_ipv6])
            _ip("link", "set", "lo", "up", netns=name)
        _ip("link", "add", "br0", "type", "bridge", netns=topo.public)
        _ip("link", "set", "br0", "up", netns=topo.public)
        # The public segment: each public-side interface is a veth into the bridge.
        public_side = [
            (topo.nat1.name, WAN_DEV, topo.nat1.public_ip),
            (topo.nat2.name, WAN_DEV, topo.nat2.public_ip),
            (topo.relay.name, "eth0", topo.relay.ip),
            (topo.bootstrap.name, "eth0", topo.bootstrap.ip),
        ]
        for i, (name, dev, ip) in enumerate(public_side, 1):
            port = f"port{i}"
            _ip("link", "add", dev, "netns", name, "type", "veth",
                "peer", "name", port, "netns", topo.public, netns=topo.public)  # fmt: skip
            _ip("link", "set", port, "master", "br0", netns=topo.public)
            _ip("link", "set", port, "up", netns=topo.public)
            _ip("addr", "add", f"{ip}/24", "dev", dev, netns=name)
            _ip("link", "set", dev, "up", netns=name)
        # Each LAN: one host and its router, on a veth pair; the router is the gateway.
        for host, router in ((topo.a, topo.nat1), (topo.b, topo.nat2)):
            _ip("link", "add", "eth0", "netns", host.name, "type", "veth",
                "peer", "name", LAN_DEV, "netns", router.name, netns=router.name)  # fmt: skip
            _ip("addr", "add", f"{router.lan_ip}/24", "dev", LAN_DEV, netns=router.name)
            _ip("link", "set", LAN_DEV, "up", netns=router.name)
            _ip("addr", "add", f"{host.ip}/24", "dev", "eth0", netns=host.name)
            _ip("link", "set", "eth0", "up", netns=host.name)
            _ip("route", "add", "default", "via", router.lan_ip, netns=host.name)
            _run(router.argv(["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
            _run(router.argv(["nft", "-f", "-"]), stdin=_ruleset(LAN_DEV, WAN_DEV))
        yield topo
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
