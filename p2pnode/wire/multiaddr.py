"""Multiaddrs (multiformats/multiaddr): self-describing network addresses, text and binary.

Binary form: per component, the protocol code as a varint, then the value: fixed
size for ip4/ip6/ports, varint-length-prefixed for names and ids, nothing for flags.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from p2pnode.errors import DecodeError, IdentityError, MultiaddrError
from p2pnode.wire.varint import decode_uvarint, encode_uvarint

if TYPE_CHECKING:
    from p2pnode.wire.identity import PeerId

_FIXED, _VARIABLE, _NONE = "fixed", "variable", "none"


@dataclass(frozen=True, slots=True)
class _Protocol:
    code: int
    name: str
    kind: str
    size: int = 0  # bytes, for fixed-size values


_PROTOCOLS = [
    _Protocol(4, "ip4", _FIXED, 4),
    _Protocol(6, "tcp", _FIXED, 2),
    _Protocol(33, "dccp", _FIXED, 2),
    _Protocol(41, "ip6", _FIXED, 16),
    _Protocol(42, "ip6zone", _VARIABLE),
    _Protocol(53, "dns", _VARIABLE),
    _Protocol(54, "dns4", _VARIABLE),
    _Protocol(55, "dns6", _VARIABLE),
    _Protocol(56, "dnsaddr", _VARIABLE),
    _Protocol(132, "sctp", _FIXED, 2),
    _Protocol(273, "udp", _FIXED, 2),
    _Protocol(280, "webrtc-direct", _NONE),
    _Protocol(281, "webrtc", _NONE),
    _Protocol(290, "p2p-circuit", _NONE),
    _Protocol(421, "p2p", _VARIABLE),
    _Protocol(448, "tls", _NONE),
    _Protocol(449, "sni", _VARIABLE),
    _Protocol(460, "quic", _NONE),
    _Protocol(461, "quic-v1", _NONE),
    _Protocol(465, "webtransport", _NONE),
    _Protocol(466, "certhash", _VARIABLE),
    _Protocol(477, "ws", _NONE),
    _Protocol(478, "wss", _NONE),
    _Protocol(480, "http", _NONE),
]
_BY_CODE = {p.code: p for p in _PROTOCOLS}
_BY_NAME = {p.name: p for p in _PROTOCOLS}
_CIRCUIT_CODE = encode_uvarint(_BY_NAME["p2p-circuit"].code)
_BY_NAME["ipfs"] = _BY_NAME["p2p"]  # the old name, still accepted in text
_PORTS = {"tcp", "udp", "dccp", "sctp"}
_MAX_VALUE = 1024


def _value_to_bytes(proto: _Protocol, text: str) -> bytes:
    name = proto.name
    try:
        if name == "ip4":
            return ipaddress.IPv4Address(text).packed
        if name == "ip6":
            return ipaddress.IPv6Address(text).packed
        if name in _PORTS:
            if not text.isdigit() or int(text) > 65535:
                raise MultiaddrError(f"invalid {name} port {text!r}: expected 0..65535")
            return int(text).to_bytes(2, "big")
    except ipaddress.AddressValueError:
        raise MultiaddrError(f"invalid {name} address {text!r}") from None
    if name == "p2p":
        from p2pnode.wire.identity import PeerId

        try:
            return PeerId.from_string(text).to_bytes()
        except IdentityError as exc:
            raise MultiaddrError(f"invalid /p2p value: {exc}") from None
    if name == "certhash":
        return _multibase_decode(text)
    raw = text.encode()
    if not raw or len(raw) > _MAX_VALUE:
        raise MultiaddrError(f"invalid /{name} value {text!r}")
    return raw


def _value_to_text(proto: _Protocol, raw: bytes) -> str:
    name = proto.name
    if name == "ip4":
        return str(ipaddress.IPv4Address(raw))
    if name == "ip6":
        return str(ipaddress.IPv6Address(raw))
    if name in _PORTS:
        return str(int.from_bytes(raw, "big"))
    if name == "p2p":
        from p2pnode.wire.identity import PeerId

        try:
            return str(PeerId.from_bytes(raw))
        except IdentityError as exc:
            raise MultiaddrError(f"invalid /p2p value: {exc}") from None
    if name == "certhash":
        return "u" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise MultiaddrError(f"/{name} value is not UTF-8") from None
    if not text or "/" in text:
        raise MultiaddrError(f"invalid /{name} value {text!r}")
    return text


def _multibase_decode(text: str) -> bytes:
    prefix, body = text[:1], text[1:]
    try:
        if prefix == "u":
            return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        if prefix == "b":
            return base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except ValueError:
        pass
    raise MultiaddrError(f"invalid multibase value {text!r}")


class Multiaddr:
    """An immutable multiaddr, e.g. ``/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...``."""

    __slots__ = ("_bytes", "_components")

    def __init__(self, components: tuple[tuple[str, str | None], ...], raw: bytes) -> None:
        self._components = components
        self._bytes = raw

    @classmethod
    def from_string(cls, text: str) -> Multiaddr:
        """Parse the text form; MultiaddrError names the bad part.

        Recently parsed texts are remembered (multiaddrs are immutable): dialing the
        same address again does not parse it again.
        """
        return _parse_text(text)

    @classmethod
    def _parse(cls, text: str) -> Multiaddr:
        if not text.startswith("/"):
            raise MultiaddrError(f"multiaddr {text!r} must start with '/'")
        parts = text.rstrip("/").split("/")[1:]
        if not parts:
            raise MultiaddrError("empty multiaddr")
        components: list[tuple[str, str | None]] = []
        raw = bytearray()
        i = 0
        while i < len(parts):
            proto = _BY_NAME.get(parts[i])
            if proto is None:
                raise MultiaddrError(f"unknown protocol {parts[i]!r} in multiaddr {text!r}")
            raw += encode_uvarint(proto.code)
            if proto.kind == _NONE:
                components.append((proto.name, None))
                i += 1
                continue
            if i + 1 >= len(parts) or not parts[i + 1]:
                raise MultiaddrError(f"/{proto.name} needs a value in multiaddr {text!r}")
            value = _value_to_bytes(proto, parts[i + 1])
            if proto.kind == _VARIABLE:
                raw += encode_uvarint(len(value))
            raw += value
            components.append((proto.name, _value_to_text(proto, value)))
            i += 2
        return cls(tuple(components), bytes(raw))

    @classmethod
    def from_bytes(cls, data: bytes) -> Multiaddr:
        """Parse the binary form; MultiaddrError on unknown codes or truncation."""
        data = bytes(data)
        if not data:
            raise MultiaddrError("empty binary multiaddr")
        components: list[tuple[str, str | None]] = []
        pos = 0
        try:
            while pos < len(data):
                header = decode_uvarint(data, pos)
                if header is None:
                    raise MultiaddrError("binary multiaddr ends inside a protocol code")
                code, pos = header
                proto = _BY_CODE.get(code)
                if proto is None:
                    raise MultiaddrError(f"unknown multiaddr protocol code {code}")
                if proto.kind == _NONE:
                    components.append((proto.name, None))
                    continue
                size = proto.size
                if proto.kind == _VARIABLE:
                    length = decode_uvarint(data, pos)
                    if length is None:
                        raise MultiaddrError(f"binary multiaddr ends inside /{proto.name}'s length")
                    size, pos = length
                    if size > _MAX_VALUE:
                        raise MultiaddrError(f"/{proto.name} value of {size} bytes is too long")
                if pos + size > len(data):
                    raise MultiaddrError(f"binary multiaddr ends inside /{proto.name}'s value")
                components.append((proto.name, _value_to_text(proto, data[pos : pos + size])))
                pos += size
        except DecodeError as exc:
            raise MultiaddrError(f"malformed binary multiaddr: {exc}") from None
        return cls(tuple(components), data)

    def __str__(self) -> str:
        return "".join(f"/{n}" if v is None else f"/{n}/{v}" for n, v in self._components)

    def __repr__(self) -> str:
        return f"Multiaddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Multiaddr) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def to_bytes(self) -> bytes:
        """The binary form."""
        return self._bytes

    def components(self) -> tuple[tuple[str, str | None], ...]:
        """``(protocol name, value or None)`` pairs in order."""
        return self._components

    def value_for(self, name: str) -> str | None:
        """The value of the first component named ``name``, else None."""
        for proto, value in self._components:
            if proto == name:
                return value
        return None

    def _after_circuit(self) -> int:
        """Index of the first component after the last ``/p2p-circuit`` (0 without one)."""
        if _CIRCUIT_CODE not in self._bytes:  # no circuit (the common case), in C
            return 0
        for index in range(len(self._components) - 1, -1, -1):
            if self._components[index][0] == "p2p-circuit":
                return index + 1
        return 0

    @property
    def peer_id(self) -> PeerId | None:
        """The PeerId the address leads to: its ``/p2p`` component (after any
        ``/p2p-circuit``, so a relayed address names the peer behind the relay), if any."""
        from p2pnode.wire.identity import PeerId

        for name, value in self._components[self._after_circuit() :]:
            if name == "p2p" and value is not None:
                return PeerId.from_string(value)
        return None

    @property
    def is_circuit(self) -> bool:
        """True for a relayed address (``.../p2p/<relay>/p2p-circuit[/p2p/<peer>]``)."""
        return self._after_circuit() > 0

    def relay(self) -> tuple[Multiaddr, PeerId]:
        """The relay of a relayed address: its address (``/p2p/<relay>`` included) and id."""
        from p2pnode.wire.identity import PeerId

        cut = self._after_circuit() - 1
        before = self._components[:cut]
        if cut < 1 or before[-1][0] != "p2p" or before[-1][1] is None:
            raise MultiaddrError(
                f"{self} is not a relayed address of the form .../p2p/<relay>/p2p-circuit"
            )
        relay = PeerId.from_string(before[-1][1])
        return Multiaddr.from_string(_text(before)), relay

    def encapsulate(self, other: Multiaddr | str) -> Multiaddr:
        """This address followed by ``other``."""
        other = Multiaddr.from_string(other) if isinstance(other, str) else other
        return Multiaddr(self._components + other._components, self._bytes + other._bytes)

    def with_peer_id(self, peer_id: PeerId) -> Multiaddr:
        """This address ending in ``/p2p/<peer_id>`` (MultiaddrError if it names another peer)."""
        existing = self.peer_id
        if existing is not None:
            if existing != peer_id:
                raise MultiaddrError(f"{self} names peer {existing}, not {peer_id}")
            return self
        return self.encapsulate(f"/p2p/{peer_id}")

    def without_peer_id(self) -> Multiaddr:
        """This address without the ``/p2p`` part naming its peer (a relay's stays)."""
        start = self._after_circuit()
        kept = [*self._components[:start], *(c for c in self._components[start:] if c[0] != "p2p")]
        if len(kept) == len(self._components):
            return self
        return Multiaddr.from_string(_text(kept))

    def tcp_host_port(self) -> tuple[str, int]:
        """``(host, port)`` of an /ip4, /ip6 or /dns* + /tcp address."""
        comps = self._components
        if (
            len(comps) >= 2
            and comps[1][0] == "tcp"
            and comps[0][0]
            in (
                "ip4",
                "ip6",
                "dns",
                "dns4",
                "dns6",
            )
        ):
            host, port = comps[0][1], comps[1][1]
            assert host is not None and port is not None
            return host, int(port)
        raise MultiaddrError(f"not a TCP address: {self} (expected /ip4|ip6|dns/<host>/tcp/<port>)")

    def unsupported_part(self) -> str | None:
        """Why p2pnode cannot use this address (plain TCP only), or None when it can.

        Usable: ``/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT``, optionally ending in
        ``/p2p/ID``, and such an address of a relay followed by ``/p2p-circuit`` (and
        optionally ``/p2p/ID``). Anything else (``/ws``, ``/tls``, QUIC, ...) is named.
        """
        if self.is_circuit:
            try:
                relay, _ = self.relay()
            except MultiaddrError as exc:
                return str(exc)
            rest = [n for n, _ in self._components[self._after_circuit() :] if n != "p2p"]
            if rest:
                return f"/{rest[0]} after /p2p-circuit is not supported"
            return relay.unsupported_part()
        try:
            self.tcp_host_port()
        except MultiaddrError:
            return f"{self} is not a TCP address (/ip4|ip6|dns/HOST/tcp/PORT)"
        rest = [name for name, _ in self._components[2:] if name != "p2p"]
        if not rest:
            return None
        return f"/{rest[0]} is not supported yet (this transport; p2pnode speaks plain TCP)"

    def is_wildcard(self) -> bool:
        """True for the unspecified addresses 0.0.0.0 and ::."""
        host = self.value_for("ip4") or self.value_for("ip6")
        return host is not None and ipaddress.ip_address(host).is_unspecified


_parse_text = functools.lru_cache(maxsize=1024)(Multiaddr._parse)


def _text(components: Sequence[tuple[str, str | None]]) -> str:
    return "".join(f"/{n}" if v is None else f"/{n}/{v}" for n, v in components)
