"""mDNS record handling, the peer table and the peer cache: no sockets, no multicast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pnode.net import addresses
from p2pnode.net.addresses import expand_wildcards
from p2pnode.routing.cache import AddressCache
from p2pnode.routing.mdns import (
    MdnsDiscovery,
    PeerDiscovered,
    PeerExpired,
    PeerTable,
    encode_txt,
    parse_txt,
    peer_from_txt,
)
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr

ALICE = Identity.generate().peer_id
BOB = Identity.generate().peer_id
RELAY = Identity.generate().peer_id


def dnsaddr(text: str) -> str:
    return f"dnsaddr={text}"


def test_txt_encoding_round_trips_and_skips_bad_strings() -> None:
    strings = [dnsaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{ALICE}"), "other=1"]
    assert parse_txt(encode_txt(strings)) == strings
    assert parse_txt(b"\x02\xff\xfe\x01a\x09trunc") == ["a"]
    with pytest.raises(ValueError):
        encode_txt(["x" * 256])


def test_peer_from_txt_accepts_a_good_record() -> None:
    record = [
        dnsaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{ALICE}"),
        dnsaddr(f"/ip4/10.0.0.2/tcp/1/p2p/{ALICE}"),
    ]
    assert peer_from_txt(record, BOB) == (
        ALICE,
        [
            Multiaddr.from_string("/ip4/10.0.0.1/tcp/1"),
            Multiaddr.from_string("/ip4/10.0.0.2/tcp/1"),
        ],
    )


@pytest.mark.parametrize(
    "record",
    [
        [],
        ["hello", "dnsaddr"],
        [dnsaddr("garbage")],
        [dnsaddr("/ip4/10.0.0.1/tcp/1")],  # no /p2p
        [dnsaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{ALICE}"), dnsaddr(f"/ip4/10.0.0.1/tcp/2/p2p/{BOB}")],
        [dnsaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{BOB}")],  # our own id
    ],
    ids=["empty", "not-dnsaddr", "unparsable", "no-p2p", "two-peers", "ourselves"],
)
def test_peer_from_txt_ignores_unusable_records(record: list[str]) -> None:
    assert peer_from_txt(record, BOB) is None


def test_peer_from_txt_bounds_addresses() -> None:
    record = [dnsaddr(f"/ip4/10.0.0.1/tcp/{port}/p2p/{ALICE}") for port in range(1, 100)]
    parsed = peer_from_txt(record, None, max_addrs=16)
    assert parsed is not None and len(parsed[1]) == 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_table_reports_new_peers_and_changes_only() -> None:
    clock = Clock()
    table = PeerTable(clock=clock)
    addr = [Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")]
    event = table.update(ALICE, addr, ttl=120)
    assert isinstance(event, PeerDiscovered) and event.peer.peer_id == ALICE
    assert table.update(ALICE, addr, ttl=120) is None  # a refresh is not news
    changed = table.update(ALICE, [Multiaddr.from_string("/ip4/10.0.0.9/tcp/1")], ttl=120)
    assert isinstance(changed, PeerDiscovered)


def test_table_expires_entries_after_their_ttl() -> None:
    clock = Clock()
    table = PeerTable(clock=clock)
    table.update(ALICE, [Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")], ttl=120)
    table.update(BOB, [Multiaddr.from_string("/ip4/10.0.0.2/tcp/1")], ttl=10)
    clock.now += 11
    assert table.get(BOB) is None
    assert [p.peer_id for p in table.peers()] == [ALICE]
    assert table.expire() == [PeerExpired(BOB)]
    assert table.remove(ALICE) == PeerExpired(ALICE)
    assert table.remove(ALICE) is None


def test_table_is_bounded() -> None:
    table = PeerTable(max_peers=3, clock=Clock())
    addr = [Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")]
    ids = [Identity.generate().peer_id for _ in range(5)]
    events = [table.update(peer, addr, ttl=60) for peer in ids]
    assert sum(e is not None for e in events) == 3
    assert len(table) == 3


def test_wildcards_become_interface_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    monkeypatch.setattr(
        addresses,
        "interface_ips",
        lambda: [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")],
    )
    expanded = expand_wildcards([Multiaddr.from_string("/ip4/0.0.0.0/tcp/7")], for_link=True)
    assert expanded == [Multiaddr.from_string("/ip4/10.1.2.3/tcp/7")]
    explicit = [
        Multiaddr.from_string("/ip4/127.0.0.1/tcp/7"),
        Multiaddr.from_string("/ip4/10.1.2.3/tcp/8"),
    ]
    assert expand_wildcards(explicit, for_link=True) == explicit[1:]

    def no_enumeration() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        raise AssertionError("interfaces enumerated for explicit addresses")

    monkeypatch.setattr(addresses, "interface_ips", no_enumeration)
    assert expand_wildcards(explicit) == explicit  # start-up cost only when needed
    monkeypatch.setattr(addresses, "interface_ips", lambda: [ipaddress.ip_address("127.0.0.1")])
    assert expand_wildcards([Multiaddr.from_string("/ip4/0.0.0.0/tcp/7")]) == [
        Multiaddr.from_string("/ip4/127.0.0.1/tcp/7")
    ]


def test_peer_cache_round_trip_expiry_eviction_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    cache = AddressCache(path, max_entries=2)
    addr = Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")
    cache.put(ALICE, [addr])
    assert cache.get(ALICE) == (addr,)
    assert cache.get(BOB) == ()
    third = Identity.generate().peer_id
    cache.put(BOB, [addr])
    cache.put(third, [addr])
    assert len(json.loads(path.read_text())) == 2
    assert AddressCache(path, max_age=-1).get(third) == ()
    path.write_text("{not json")
    assert cache.get(ALICE) == ()
    path.write_text(json.dumps({str(ALICE): {"seen": "x", "addrs": 3}}))
    assert cache.get(ALICE) == ()
    cache.put(ALICE, [addr])
    assert cache.get(ALICE) == (addr,)


def test_the_record_carries_relayed_addresses_and_a_peer_reads_them_back() -> None:
    circuit = Multiaddr.from_string(f"/ip4/10.0.0.9/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{ALICE}")
    listen = Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")
    discovery = MdnsDiscovery(ALICE, [listen], extra_addrs=[circuit, listen])
    advertised = discovery.advertised_addrs()
    assert advertised == [listen.with_peer_id(ALICE), circuit]  # link first, no duplicate
    record = parse_txt(encode_txt([dnsaddr(str(a)) for a in advertised]))
    assert peer_from_txt(record, BOB) == (
        ALICE,
        [listen, Multiaddr.from_string(f"/ip4/10.0.0.9/tcp/4001/p2p/{RELAY}/p2p-circuit")],
    )
    many = [Multiaddr.from_string(f"/ip4/10.0.0.1/tcp/{port}") for port in range(2, 40)]
    assert len(MdnsDiscovery(ALICE, [listen], extra_addrs=many).advertised_addrs()) == 16


def test_our_query_lists_our_own_record_so_our_responder_stays_quiet() -> None:
    from zeroconf._dns import DNSRRSet
    from zeroconf._protocol.incoming import DNSIncoming

    listen = Multiaddr.from_string("/ip4/10.0.0.1/tcp/1")
    quiet = MdnsDiscovery(ALICE, [])  # a querier with nothing to announce lists nothing
    assert DNSIncoming(quiet.query_packet().packets()[0]).answers() == []
    announcing = MdnsDiscovery(ALICE, [listen])
    announcing._info = announcing.service_info()
    assert announcing._info is not None
    query = DNSIncoming(announcing.query_packet().packets()[0])
    assert [q.name for q in query.questions] == ["_p2p._udp.local."]
    known = DNSRRSet(query.answers())
    assert known.suppresses(announcing._info.dns_pointer())  # our responder: no answer
    other = MdnsDiscovery(BOB, [listen]).service_info()
    assert other is not None and not known.suppresses(other.dns_pointer())  # others answer
