"""Multiaddrs: js-libp2p's binary encodings, errors, and fuzzing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pnode.errors import MultiaddrError
from p2pnode.wire.identity import Identity
from p2pnode.wire.multiaddr import Multiaddr

VECTORS = json.loads((Path(__file__).parent / "vectors" / "js_vectors.json").read_text())


@pytest.mark.parametrize("vector", VECTORS["multiaddrs"], ids=lambda v: v["text"][:40])
def test_js_multiaddr_vectors(vector: dict) -> None:
    addr = Multiaddr.from_string(vector["text"])
    assert addr.to_bytes().hex() == vector["bytes"]
    decoded = Multiaddr.from_bytes(bytes.fromhex(vector["bytes"]))
    assert str(decoded) == vector["text"]
    assert decoded == addr


def test_known_byte_encoding() -> None:
    # /ip4/127.0.0.1/tcp/4001: code 4, four address bytes, code 6, big-endian port.
    assert Multiaddr.from_string("/ip4/127.0.0.1/tcp/4001").to_bytes() == bytes.fromhex(
        "047f000001060fa1"
    )


def test_accessors() -> None:
    peer = Identity.generate().peer_id
    addr = Multiaddr.from_string(f"/ip4/10.0.0.1/tcp/80/p2p/{peer}")
    assert addr.peer_id == peer
    assert addr.tcp_host_port() == ("10.0.0.1", 80)
    assert str(addr.without_peer_id()) == "/ip4/10.0.0.1/tcp/80"
    assert addr.without_peer_id().with_peer_id(peer) == addr
    assert addr.components()[0] == ("ip4", "10.0.0.1")
    assert Multiaddr.from_string("/ip6/::/tcp/0").is_wildcard()
    assert not addr.is_wildcard()
    assert Multiaddr.from_string("/dns4/example.com/tcp/1").tcp_host_port() == ("example.com", 1)
    assert str(Multiaddr.from_string(f"/ipfs/{peer}")) == f"/p2p/{peer}"
    with pytest.raises(MultiaddrError, match="names peer"):
        addr.with_peer_id(Identity.generate().peer_id)
    with pytest.raises(MultiaddrError, match="not a TCP address"):
        Multiaddr.from_string("/ip4/1.2.3.4/udp/1/quic-v1").tcp_host_port()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "must start with"),
        ("ip4/1.2.3.4", "must start with"),
        ("/", "empty"),
        ("/ip4", "needs a value"),
        ("/ip4/1.2.3.256/tcp/1", "invalid ip4"),
        ("/ip6/zz::1", "invalid ip6"),
        ("/ip4/1.2.3.4/tcp/65536", "port"),
        ("/ip4/1.2.3.4/tcp/-1", "port"),
        ("/foo/bar", "unknown protocol"),
        ("/p2p/notapeerid", "/p2p"),
    ],
)
def test_malformed_text_names_the_problem(text: str, complaint: str) -> None:
    with pytest.raises(MultiaddrError, match=complaint):
        Multiaddr.from_string(text)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x04\x7f\x00", b"\xff\xff\xff", b"\x06\x0f", b"\xa5\x03\x50\x01", b"\x35\x05abc"],
)
def test_malformed_binary(data: bytes) -> None:
    with pytest.raises(MultiaddrError):
        Multiaddr.from_bytes(data)


@given(st.binary(max_size=64))
def test_any_bytes_give_a_multiaddr_or_our_error(data: bytes) -> None:
    try:
        addr = Multiaddr.from_bytes(data)
    except MultiaddrError:
        return
    assert Multiaddr.from_string(str(addr)) == addr


@given(st.text(max_size=64))
def test_any_text_gives_a_multiaddr_or_our_error(text: str) -> None:
    with contextlib.suppress(MultiaddrError):
        Multiaddr.from_string(text)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_generated_addresses_round_trip(ip: object, port: int) -> None:
    family = "ip4" if ":" not in str(ip) else "ip6"
    addr = Multiaddr.from_string(f"/{family}/{ip}/tcp/{port}")
    assert Multiaddr.from_bytes(addr.to_bytes()) == addr
    assert addr.tcp_host_port() == (str(ip), port)


def test_parsing_is_remembered_but_errors_are_not() -> None:
    text = "/ip4/10.0.0.1/tcp/4001"
    assert Multiaddr.from_string(text) is Multiaddr.from_string(text)  # parsed once
    for _ in range(2):
        with pytest.raises(MultiaddrError):
            Multiaddr.from_string("/ip4/300.0.0.1/tcp/1")


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("/ip4/127.0.0.1/tcp/4001/ws", "/ws is not supported yet"),
        ("/ip4/127.0.0.1/tcp/4001/tls/ws", "/tls is not supported yet"),
        ("/ip4/127.0.0.1/tcp/4001/wss/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
         "/wss"),
        ("/ip4/127.0.0.1/tcp/4001/http", "/http"),
        ("/ip4/127.0.0.1/tcp/4001/p2p-circuit", "not a relayed address"),
        ("/ip4/127.0.0.1/tcp/4001/ws/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
         "/p2p-circuit", "/ws"),
        ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
         "/p2p-circuit/tcp/5", "/tcp after /p2p-circuit"),
        ("/ip4/127.0.0.1/udp/4001/quic-v1", "not a TCP address"),
    ],
)  # fmt: skip
def test_unsupported_parts_are_named(text: str, part: str) -> None:
    reason = Multiaddr.from_string(text).unsupported_part()
    assert reason is not None and part in reason


def test_plain_tcp_addresses_are_supported() -> None:
    peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    for text in ("/ip4/1.2.3.4/tcp/1", "/dns4/example.test/tcp/1", f"/ip6/::1/tcp/1/p2p/{peer}"):
        assert Multiaddr.from_string(text).unsupported_part() is None
