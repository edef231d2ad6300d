"""Agent cards, ``/p2pnode/card/1.0.0``: what a node serves, signed so anyone can check it.

The server writes one length-prefixed libp2p signed envelope (RFC 0002; domain
``p2pnode-agent-card``, payload type ``/p2pnode/card/1.0.0``) holding a MessagePack card,
signed afresh per request so its load figures are current, and closes. A card is valid
only when the envelope verifies and its signer is the card's ``peer_id``. See
``docs/task-protocol-2.md``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from p2pnode.errors import DecodeError, RecordError
from p2pnode.net.framed import read_frame
from p2pnode.wire.envelope import MAX_ENVELOPE_SIZE, Envelope
from p2pnode.wire.identity import Identity, PeerId
from p2pnode.wire.varint import encode_uvarint

if TYPE_CHECKING:
    from p2pnode.net.host import Host, PeerLike
    from p2pnode.net.stream import Stream
    from p2pnode.protocols.task.server import TaskServer

CARD_PROTOCOL = "/p2pnode/card/1.0.0"
CARD_DOMAIN = "p2pnode-agent-card"
CARD_PAYLOAD_TYPE = CARD_PROTOCOL.encode()
CARD_TTL = 10.0  # seconds a fetched card is trusted for routing
ANY_TYPE = "*/*"


class KindInfo(msgspec.Struct, omit_defaults=True):
    """One task kind a node serves."""

    kind: str
    description: str = ""
    input_types: list[str] = msgspec.field(default_factory=lambda: [ANY_TYPE])
    output_types: list[str] = msgspec.field(default_factory=lambda: [ANY_TYPE])
    input_schema: Any = None
    output_schema: Any = None
    streaming: bool = False
    max_concurrent: int = 0


class Load(msgspec.Struct):
    running: int = 0
    max: int = 0
    queued: int = 0


class AgentCard(msgspec.Struct, omit_defaults=True):
    """What a node says about itself; valid only as signed by ``peer_id``."""

    peer_id: str
    name: str = ""
    description: str = ""
    version: str = ""
    issued_ms: int = 0
    protocols: list[str] = msgspec.field(default_factory=list)
    kinds: list[KindInfo] = msgspec.field(default_factory=list)
    load: Load = msgspec.field(default_factory=Load)

    def kind(self, name: str) -> KindInfo | None:
        return next((k for k in self.kinds if k.kind == name), None)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AgentCard)


def seal_card(card: AgentCard, identity: Identity) -> bytes:
    """The card as a signed envelope."""
    payload = _encoder.encode(card)
    return Envelope.seal(identity, CARD_DOMAIN, CARD_PAYLOAD_TYPE, payload).to_bytes()


def open_card(data: bytes, peer: PeerId | None = None) -> AgentCard:
    """Verify and decode a card; RecordError when forged, altered or not ``peer``'s own."""
    envelope = Envelope.open(data, CARD_DOMAIN, CARD_PAYLOAD_TYPE)
    try:
        card = _decoder.decode(envelope.payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"invalid agent card: {exc}") from None
    signer = envelope.signer
    if card.peer_id != str(signer):
        raise RecordError(
            f"agent card for {card.peer_id} is signed by {signer}: a card must be signed by "
            "its own peer; discard it"
        )
    if peer is not None and signer != peer:
        raise RecordError(f"asked {peer} for its card and got {signer}'s: discard it")
    return card


def kinds_of(server: TaskServer) -> list[KindInfo]:
    """The card's kind list for a TaskServer's handlers."""
    from p2pnode.protocols.task.handlers import EchoHandler, ExecHandler, PythonHandler

    kinds = []
    for name, handler in sorted(server.handlers.items()):
        info = KindInfo(
            name, server.descriptions.get(name, ""), max_concurrent=server.max_concurrent
        )
        if isinstance(handler, EchoHandler):
            info.streaming = True
            info.description = info.description or "echoes its input"
        elif isinstance(handler, ExecHandler):
            info.streaming = True
            info.output_types = [handler.media_type]
            info.description = info.description or f"runs {handler.argv[0]}"
        elif isinstance(handler, PythonHandler):
            _describe_function(info, handler.func)
        output_type = server.v2.output_types.get(name)
        if output_type:
            info.output_types = [output_type]
        kinds.append(info)
    return kinds


def _describe_function(info: KindInfo, func: Callable[..., Any]) -> None:
    """What a Python handler says of itself: attributes, else its docstring."""
    info.streaming = inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)
    if not info.description:
        doc = inspect.getdoc(func) or ""
        info.description = str(getattr(func, "description", "") or doc.split("\n", 1)[0])
    for key in ("input_types", "output_types"):
        value = getattr(func, key, None)
        if isinstance(value, list | tuple):
            setattr(info, key, [str(v) for v in value])
    for key in ("input_schema", "output_schema"):
        value = getattr(func, key, None)
        if isinstance(value, Mapping):
            setattr(info, key, dict(value))


class CardService:
    """Serves this node's card, built fresh for each request by ``build``."""

    def __init__(self, node: Host, identity: Identity, build: Callable[[], AgentCard]) -> None:
        self.node = node
        self.identity = identity
        self.build = build

    def install(self) -> None:
        self.node.set_handler(CARD_PROTOCOL, self.handle_stream)

    async def handle_stream(self, stream: Stream) -> None:
        card = self.build()
        card.issued_ms = int(time.time() * 1000)
        sealed = seal_card(card, self.identity)
        stream.set_deadline(10.0)
        await stream.write(encode_uvarint(len(sealed)) + sealed)
        await stream.close()


def task_server_card(
    server: TaskServer, peer_id: PeerId, name: str = "", description: str = "", version: str = ""
) -> Callable[[], AgentCard]:
    """A card builder for a node serving ``server``'s kinds."""
    from p2pnode.protocols.task.messages import PROTOCOL_ID
    from p2pnode.protocols.task.messages2 import PROTOCOL_ID_V2

    kinds = kinds_of(server)

    def build() -> AgentCard:
        return AgentCard(
            str(peer_id),
            name,
            description,
            version,
            protocols=[PROTOCOL_ID_V2, PROTOCOL_ID],
            kinds=kinds,
            load=Load(server.running, server.max_concurrent, 0),
        )

    return build


async def fetch_card(node: Host, peer: PeerLike, timeout: float = 10.0) -> AgentCard:
    """Ask ``peer`` for its card and check it (RecordError if it is not the peer's own)."""
    async with asyncio.timeout(timeout):
        conn = await node.connect(peer)
        stream = await conn.new_stream([CARD_PROTOCOL], optimistic=True)
        try:
            await stream.close_write()
            body = await read_frame(stream, MAX_ENVELOPE_SIZE)
        except BaseException:
            stream.reset()
            raise
    if body is None:
        raise DecodeError(f"peer {conn.remote_peer} closed the card stream without a card")
    return open_card(body, conn.remote_peer)


class CardCache:
    """Cards fetched recently, by peer, trusted for ``ttl`` seconds."""

    def __init__(self, ttl: float = CARD_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._cards: dict[PeerId, tuple[float, AgentCard]] = {}

    def get(self, peer: PeerId) -> AgentCard | None:
        entry = self._cards.get(peer)
        if entry is None or self._clock() - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, peer: PeerId, card: AgentCard) -> None:
        if len(self._cards) > 1024:
            now = self._clock()
            self._cards = {p: e for p, e in self._cards.items() if now - e[0] <= self.ttl}
        self._cards[peer] = (self._clock(), card)

    async def card(self, node: Host, peer: PeerId, timeout: float = 5.0) -> AgentCard:
        cached = self.get(peer)
        if cached is None:
            cached = await fetch_card(node, peer, timeout)
            self.put(peer, cached)
        return cached
