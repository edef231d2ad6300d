"""The DHT's sans-I/O core: message codec, routing table, lookup, record store."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.kad_sim import build_network, run_lookup, simulate, synthetic_peer_id
from p2pnode.errors import DecodeError, P2PError, RecordError
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.kad import (
    AddStatus,
    Lookup,
    Message,
    MessageReader,
    MessageType,
    PeerInfo,
    ProviderStore,
    Record,
    RoutingTable,
    accept_provider,
    common_prefix_length,
    decode_message,
    encode_message,
    fit_for_sending,
    frame_message,
    is_multihash,
    kad_key,
    kad_key_for_peer,
    pk_record_key,
    provider_key_for_kind,
    validate_pk_record,
)
from p2pnode.wire.multiaddr import Multiaddr

RNG = random.Random(5)
PEERS = [synthetic_peer_id(RNG) for _ in range(64)]
ADDR = Multiaddr.from_string("/ip4/10.0.0.1/tcp/4001")  # only encoded, never dialed


# -- messages --------------------------------------------------------------------------


def test_a_find_node_request_has_the_bytes_the_spec_gives() -> None:
    peer = PEERS[0]
    raw = encode_message(Message(MessageType.FIND_NODE, key=peer.to_bytes()))
    # field 1 (type) varint 4, field 2 (key) length-delimited
    assert raw == b"\x08\x04" + b"\x12" + bytes([len(peer.to_bytes())]) + peer.to_bytes()
    assert frame_message(Message(MessageType.PING)) == b"\x02\x08\x05"


def test_an_absent_type_is_put_value_and_unknown_fields_are_skipped() -> None:
    message = decode_message(b"\x12\x01k" + b"\x50\x07" + b"\x62\x00")  # key, field 10, field 12
    assert message.type is MessageType.PUT_VALUE and message.key == b"k"


def test_bad_peers_are_skipped_but_the_message_is_kept() -> None:
    good = PeerInfo(PEERS[1], (ADDR,))
    raw = encode_message(Message(MessageType.FIND_NODE, b"k", closer_peers=(good,)))
    garbage_peer = b"\x42\x05\x0a\x03abc"  # closerPeers with an id that is no PeerId
    bad_addr_peer = b"\x42" + bytes([len(PEERS[2].to_bytes()) + 6]) + b"\x0a"
    bad_addr_peer += bytes([len(PEERS[2].to_bytes())]) + PEERS[2].to_bytes() + b"\x12\x02\xff\xff"
    message = decode_message(raw + garbage_peer + bad_addr_peer)
    assert [p.peer_id for p in message.closer_peers] == [PEERS[1], PEERS[2]]
    assert message.closer_peers[0].addrs == (ADDR,) and message.closer_peers[1].addrs == ()
    assert message.skipped_peers == 1


@pytest.mark.parametrize(
    "raw",
    [b"\x08", b"\x08\x09", b"\x12\x05ab", b"\x0a\x01x", b"\x1a\x02\x2a\x05",
     b"\x1a\x03\x2a\x01\xff"],
    ids=["truncated-type", "unknown-type", "key-past-end", "type-wire-type", "record-past-end",
         "time-not-utf8"],
)  # fmt: skip
def test_malformed_messages_are_decode_errors(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(raw)


def test_the_reader_refuses_an_oversized_length_before_buffering_it() -> None:
    reader = MessageReader(max_size=1024)
    with pytest.raises(DecodeError):
        reader.receive_data(b"\x81\x08")  # 1025
    reader = MessageReader()
    framed = frame_message(Message(MessageType.GET_PROVIDERS, b"key"))
    assert reader.receive_data(framed[:2]) == []
    assert reader.in_message
    (message,) = reader.receive_data(framed[2:])
    assert message.key == b"key" and reader.buffered == 0


def test_what_we_send_is_trimmed_below_rusts_limit() -> None:
    addrs = tuple(Multiaddr.from_string(f"/ip4/10.0.{i}.1/tcp/4001") for i in range(30))
    peers = tuple(PeerInfo(p, addrs) for p in PEERS)
    big = Message(MessageType.FIND_NODE, b"k", closer_peers=peers)
    fitted = fit_for_sending(big)
    assert len(encode_message(fitted)) <= 16 * 1024
    assert all(len(p.addrs) <= 8 for p in fitted.closer_peers)
    assert [p.peer_id for p in fitted.closer_peers] == list(PEERS[: len(fitted.closer_peers)])


peer_infos = st.builds(
    PeerInfo,
    st.sampled_from(PEERS),
    st.lists(st.just(ADDR), max_size=3).map(tuple),
)
messages = st.builds(
    Message,
    st.sampled_from(list(MessageType)),
    st.binary(max_size=40),
    st.none()
    | st.builds(Record, st.binary(max_size=20), st.binary(max_size=20), st.text(max_size=5)),
    st.lists(peer_infos, max_size=4).map(tuple),
    st.lists(peer_infos, max_size=4).map(tuple),
)  # fmt: skip


@given(messages)
def test_messages_round_trip(message: Message) -> None:
    decoded = decode_message(encode_message(message))
    assert decoded.type == message.type and decoded.key == message.key
    assert decoded.closer_peers == message.closer_peers
    assert decoded.provider_peers == message.provider_peers
    assert (decoded.record or Record()) == (message.record or Record())


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_message_or_our_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_message(data)
    reader = MessageReader(max_size=256)
    with contextlib.suppress(DecodeError):
        reader.receive_data(data)


# -- keys --------------------------------------------------------------------------------


def test_keys() -> None:
    key = provider_key_for_kind("summarize")
    assert key[:2] == b"\x12\x20" and len(key) == 34 and is_multihash(key)
    assert not is_multihash(b"\x12\x20abc")
    assert pk_record_key(PEERS[0]) == b"/pk/" + PEERS[0].to_bytes()
    a = kad_key_for_peer(PEERS[0])
    assert common_prefix_length(a, a) == 256
    assert common_prefix_length(a, kad_key(b"x")) < 256


# -- routing table -------------------------------------------------------------------------


def test_a_full_bucket_names_its_oldest_peer_and_keeps_it_if_alive() -> None:
    local = PEERS[0]
    table = RoutingTable(local, k=2)
    same_bucket: dict[int, list[PeerId]] = {}
    for peer in PEERS[1:]:
        same_bucket.setdefault(table.bucket_for(peer), []).append(peer)
    index, group = max(same_bucket.items(), key=lambda item: len(item[1]))
    first, second, third = group[:3]
    assert table.add(first, 1.0).status is AddStatus.ADDED
    assert table.add(second, 2.0).status is AddStatus.ADDED
    assert table.add(first, 3.0).status is AddStatus.UPDATED  # now second is the oldest
    full = table.add(third, 4.0)
    assert full.status is AddStatus.FULL and full.check == second
    table.keep(second, 5.0)
    assert third not in table and table.bucket(index) == [first, second]
    again = table.add(third, 6.0)
    assert again.check == first
    assert table.evict(first, third)
    assert table.bucket(index) == [second, third]
    assert table.add(local, 7.0).status is AddStatus.REJECTED


def test_closest_is_sorted_by_xor_distance() -> None:
    table = RoutingTable(PEERS[0])
    for peer in PEERS[1:]:
        table.add(peer, 0.0)
    target = kad_key(b"target")
    closest = table.closest(target, 5)
    expected = sorted(PEERS[1:], key=lambda p: kad_key_for_peer(p) ^ target)[:5]
    assert closest == expected


def test_stale_buckets_get_random_targets_inside_them() -> None:
    table = RoutingTable(PEERS[0], now=0.0)
    for peer in PEERS[1:]:
        table.add(peer, 0.0)
    stale = table.buckets_needing_refresh(1000.0, random.Random(1))
    assert stale
    for cpl, target in stale:
        assert common_prefix_length(kad_key_for_peer(PEERS[0]), kad_key(target)) == cpl
    for _, target in stale:
        table.mark_refreshed(kad_key(target), 1000.0)
    assert table.buckets_needing_refresh(1000.0, random.Random(1)) == []


# -- lookups -------------------------------------------------------------------------------


def test_a_lookup_finds_the_target_in_a_simulated_network() -> None:
    rng = random.Random(3)
    net = build_network(300, rng)
    for _ in range(20):
        asker, target = rng.sample(net.peers, 2)
        outcome = run_lookup(net, asker, target, rng)
        assert outcome.found and outcome.hops <= 9 and outcome.messages <= 200


def test_a_lookup_never_queries_a_peer_twice_and_ignores_ourselves_and_garbage() -> None:
    me, target = PEERS[0], PEERS[1]
    lookup = Lookup(target.to_bytes(), PEERS[2:5], local_id=me, k=3, alpha=2)
    queried: list[PeerId] = []
    now = 0.0
    while not lookup.done:
        batch = lookup.next_requests(now)
        assert len(batch) <= 2
        queried += batch
        for peer in batch:
            # every peer names us, itself, and the same handful again
            liars = [PeerInfo(me), PeerInfo(peer), *(PeerInfo(p) for p in PEERS[2:8])]
            lookup.on_response(peer, liars, now=now)
        now += 1
    assert len(queried) == len(set(queried)) and me not in queried
    result = lookup.result()
    assert result.ignored.get("self", 0) > 0 and result.ignored.get("responder", 0) > 0
    assert not lookup.on_response(PEERS[9], [], now=now)  # unsolicited: ignored


def test_a_lookup_that_never_converges_is_bounded() -> None:
    me = PEERS[0]
    rng = random.Random(9)
    lookup = Lookup(b"k", PEERS[1:4], local_id=me, k=20, alpha=3, max_queries=60)
    now = 0.0
    while not lookup.done:
        for peer in lookup.next_requests(now):
            fresh = [PeerInfo(synthetic_peer_id(rng)) for _ in range(40)]  # endless new peers
            lookup.on_response(peer, fresh, now=now)
        now += 1
    result = lookup.result()
    assert result.messages <= 60 and result.stop_reason in ("max_queries", "converged")


def test_failed_requests_time_out_and_the_lookup_goes_on() -> None:
    lookup = Lookup(b"k", PEERS[1:4], local_id=PEERS[0], k=3, alpha=3, request_timeout=5)
    sent = lookup.next_requests(0.0)
    assert len(sent) == 3
    assert lookup.next_deadline() == 5.0
    assert lookup.expired(4.9) == [] and set(lookup.expired(5.0)) == set(sent)
    for peer in sent:
        lookup.on_failure(peer, 5.0)
    assert lookup.done and lookup.result().failures == 3 and lookup.result().closest == ()


def test_simulation_figures_hold_on_a_small_network() -> None:
    healthy = simulate(400, 50, 0.0, seed=2)
    assert healthy["success"] == 1.0 and healthy["hops_p99"] <= healthy["log2_n"]
    degraded = simulate(400, 50, 0.2, seed=2)
    assert degraded["success"] >= 0.95


# -- store -----------------------------------------------------------------------------------


def test_the_provider_store_is_capped_and_expires() -> None:
    store = ProviderStore(max_records=3, max_per_peer=2, max_per_key=2, ttl=10)
    key_a, key_b, key_c = (provider_key_for_kind(k) for k in "abc")
    assert store.add(key_a, PEERS[1], [ADDR], 0)
    assert store.add(key_b, PEERS[1], [ADDR], 0)
    assert not store.add(key_c, PEERS[1], [ADDR], 0)  # per peer
    assert store.add(key_a, PEERS[2], [ADDR], 1)
    assert not store.add(key_a, PEERS[3], [ADDR], 1)  # per key, and in all
    assert store.add(key_a, PEERS[1], [ADDR], 5)  # a refresh always fits
    assert [p.peer_id for p in store.get(key_a, 6)] == [PEERS[1], PEERS[2]]
    assert store.expire(11.5) == 2 and len(store) == 1  # b and PEERS[2]'s; a was refreshed
    assert [p.peer_id for p in store.get(key_a, 11.5)] == [PEERS[1]]
    assert store.refused == 2


def test_only_the_senders_own_record_with_addresses_is_accepted() -> None:
    sender = PEERS[1]
    offered = [PeerInfo(PEERS[2], (ADDR,)), PeerInfo(sender), PeerInfo(sender, (ADDR,))]
    assert accept_provider(sender, offered) == [PeerInfo(sender, (ADDR,))]


def test_pk_records_are_checked() -> None:
    identity = Identity.generate()
    key = pk_record_key(identity.peer_id)
    public = identity.public_key.to_protobuf()
    assert validate_pk_record(key, public) == identity.peer_id
    with pytest.raises(RecordError, match="not"):
        validate_pk_record(key, Identity.generate().public_key.to_protobuf())
    with pytest.raises(RecordError, match="only /pk/"):
        validate_pk_record(b"/ipns/x", None)
    for bad in (b"/pk/garbage", b"/pk/"):
        with pytest.raises(RecordError):
            validate_pk_record(bad, None)
    with pytest.raises(P2PError):
        validate_pk_record(key, b"\x08\x01\x12\x03abc")
