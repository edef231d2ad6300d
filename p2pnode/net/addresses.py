"""Which of our addresses to tell peers: wildcard listen addresses become interface addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from p2pnode.wire.multiaddr import Multiaddr


def interface_ips() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """IP addresses of this host's interfaces (IPv6 link-local ones left out: they need a zone)."""
    import ifaddr

    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            address = ipaddress.ip_address(raw)
            if address.version == 6 and address.is_link_local:
                continue
            found.append(address)
    return found


def expand_wildcards(addrs: Sequence[Multiaddr], for_link: bool = False) -> list[Multiaddr]:
    """Replace 0.0.0.0 / :: listen addresses with this host's real interface addresses.

    Loopback addresses are kept only when there is nothing else (or ``for_link`` is
    False and they were listened on explicitly): peers on the link cannot reach them.
    """
    ips = interface_ips() if any(addr.is_wildcard() for addr in addrs) else []
    result: list[Multiaddr] = []
    for addr in addrs:
        if not addr.is_wildcard():
            result.append(addr)
            continue
        version = 4 if addr.value_for("ip4") is not None else 6
        port = addr.value_for("tcp")
        family = [ip for ip in ips if ip.version == version]
        routable = [ip for ip in family if not ip.is_loopback] or family
        for ip in routable:
            result.append(Multiaddr.from_string(f"/ip{version}/{ip}/tcp/{port}"))
    if for_link:
        reachable = [a for a in result if not _is_loopback(a)]
        return reachable or result
    return result


def _is_loopback(addr: Multiaddr) -> bool:
    host = addr.value_for("ip4") or addr.value_for("ip6")
    return host is not None and ipaddress.ip_address(host).is_loopback
