"""AutoNAT v1 (``/libp2p/autonat/1.0.0``) on a host: the service, the probe, the monitor.

The decisions are in :mod:`p2pnode.wire.autonat` (codec, :class:`DialBackPolicy`,
:class:`ReachabilityTracker`); this module only moves messages, keeps time and
runs the dial-backs:

- :class:`AutonatService` answers DIAL requests, dialing back through an injected
  ``dial_back`` so that the dial is a new connection, never one already open;
- :func:`probe` asks one peer to dial us back;
- :class:`ReachabilityMonitor` probes connected AutoNAT peers now and then and
  reports when the verdict changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

from p2pnode.errors import DecodeError, LocalProtocolError, P2PError, P2PTimeoutError
from p2pnode.net.framed import read_frame
from p2pnode.net.host import Host
from p2pnode.net.stream import Stream
from p2pnode.wire.autonat import (
    MAX_CONFIDENCE,
    MAX_MESSAGE_SIZE,
    DialBack,
    DialBackPolicy,
    MessageType,
    ProbeResult,
    Reachability,
    ReachabilityTracker,
    Refusal,
    ResponseStatus,
    decode_message,
    dial_request,
    dial_response,
    is_relayed,
    observed_ip,
)
from p2pnode.wire.framing import encode_frame
from p2pnode.wire.identity import PeerId
from p2pnode.wire.multiaddr import Multiaddr

log = logging.getLogger(__name__)

PROTOCOL_ID = "/libp2p/autonat/1.0.0"

# Timings from go-libp2p's AutoNAT (p2p/host/autonat/options.go and svc.go): a dial-back
# gets 15 s, a whole request as the client sees it 30 s, a served stream 60 s at most.
DIAL_TIMEOUT = 15.0
REQUEST_TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0
# The client's schedule, also go's: first probe 15 s after start, then every 90 s while
# unsure, every 15 min once confident, and the same peer no more than once in 90 s.
BOOT_DELAY = 15.0
RETRY_INTERVAL = 90.0
REFRESH_INTERVAL = 15 * 60.0
PEER_COOLDOWN = 90.0
PEERS_PER_ROUND = 3  # MAX_CONFIDENCE agreeing answers can settle the verdict in one round

DialBackFn = Callable[[PeerId, Sequence[Multiaddr]], Awaitable[Multiaddr]]
ReachabilityChanged = Callable[[Reachability], None]


class AutonatService:
    """Serves ``/libp2p/autonat/1.0.0`` for ``host``: register ``handle`` as its handler.

    ``dial_back(peer, addrs)`` must open a NEW connection to ``peer`` at one of
    ``addrs`` (they have no ``/p2p`` part: dial ``addr.with_peer_id(peer)`` so the
    handshake proves who answered), close it, and return the address that worked; it
    raises :class:`~p2pnode.errors.DialError` when none does. It gets ``dial_timeout``
    seconds. A failed dial-back is answered only when that time is up
    (``pad_failures``, as go-libp2p does), so answer times do not reveal which
    ports are closed and which filtered: the service is no port scanner.
    """

    def __init__(
        self,
        host: Host,
        dial_back: DialBackFn,
        policy: DialBackPolicy | None = None,
        *,
        dial_timeout: float = DIAL_TIMEOUT,
        pad_failures: bool = True,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> None:
        self._host = host
        self._dial_back = dial_back
        self.policy = policy if policy is not None else DialBackPolicy()
        self.dial_timeout = dial_timeout
        self.pad_failures = pad_failures
        self.stream_timeout = stream_timeout

    def register(self) -> None:
        """Serve the protocol on the host."""
        self._host.set_handler(PROTOCOL_ID, self.handle)

    async def handle(self, stream: Stream) -> None:
        """Answer one DIAL on ``stream``; a malformed request resets only this stream."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.stream_timeout):
                data = await read_frame(stream, MAX_MESSAGE_SIZE)
                if data is None:
                    raise DecodeError("autonat stream closed before a DIAL message")
                message = decode_message(data)
                if message.type is not MessageType.DIAL:
                    raise DecodeError(f"expected an autonat DIAL, got {message.type!r}")
                remote = stream.connection.remote_addr
                decision = self.policy.decide(
                    stream.remote_peer,
                    observed_ip(remote),
                    is_relayed(remote),
                    None if message.dial is None else message.dial.peer,
                    loop.time(),
                )
                if isinstance(decision, Refusal):
                    log.debug("autonat: refused %s: %s", stream.remote_peer, decision.text)
                    answer = dial_response(decision.status, decision.text)
                else:
                    answer = await self._answer(decision)
                await stream.write(encode_frame(answer))
                await stream.close()
        except (P2PError, TimeoutError, OSError) as exc:
            log.info("autonat request from %s failed: %s", stream.remote_peer, exc)
            stream.reset()

    async def _answer(self, decision: DialBack) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.dial_timeout
        try:
            async with asyncio.timeout_at(deadline):
                addr = await self._dial_back(decision.peer, decision.addrs)
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("autonat: dial-back to %s failed: %s", decision.peer, exc)
            if self.pad_failures:
                await asyncio.sleep(max(0.0, deadline - loop.time()))
            return dial_response(ResponseStatus.E_DIAL_ERROR, "dial failed")
        except Exception:
            log.exception("autonat: dial-back to %s raised", decision.peer)
            return dial_response(ResponseStatus.E_INTERNAL_ERROR, "internal error")
        return dial_response(ResponseStatus.OK, None, addr)


async def probe(
    host: Host, peer: PeerId, addrs: Sequence[Multiaddr], *, timeout: float = REQUEST_TIMEOUT
) -> ProbeResult:
    """Ask ``peer`` to dial us back at ``addrs`` (as many as fit one message).

    Returns the answer, refusals included; raises P2PError (DecodeError for a bad
    answer, P2PTimeoutError after ``timeout`` seconds) when there is no usable answer.
    """
    if not addrs:
        raise LocalProtocolError("autonat probe needs at least one address to be dialed at")
    request = dial_request(host.peer_id, addrs)
    stream: Stream | None = None
    try:
        async with asyncio.timeout(timeout):
            stream = await host.new_stream(peer, [PROTOCOL_ID])
            await stream.write(encode_frame(request))
            data = await read_frame(stream, MAX_MESSAGE_SIZE)
    except TimeoutError:
        if stream is not None:
            stream.reset()
        raise P2PTimeoutError(f"{peer} did not answer the autonat request in {timeout}s") from None
    except BaseException:
        if stream is not None:
            stream.reset()
        raise
    assert stream is not None
    try:
        if data is None:
            raise DecodeError(f"{peer} closed the autonat stream without answering")
        response = decode_message(data).dial_response
        if response is None or response.status is None:
            raise DecodeError(f"{peer} sent an autonat message that is no DIAL_RESPONSE")
    except DecodeError:
        stream.reset()
        raise
    with contextlib.suppress(P2PError):
        await stream.close()
    addr = None
    if response.addr is not None:
        with contextlib.suppress(P2PError):
            addr = Multiaddr.from_bytes(response.addr)
    return ProbeResult(peer, response.status, response.status_text or "", addr)


class ReachabilityMonitor:
    """Finds out whether ``host`` is reachable by asking connected AutoNAT servers.

    Every round asks up to ``peers_per_round`` connected peers that list the protocol
    (in the peer store, from identify), none asked in the last ``peer_cooldown``
    seconds, to dial us at ``addrs()`` (default: the host's non-wildcard listen
    addresses), and feeds the answers to ``tracker``. Rounds run ``boot_delay`` after
    :meth:`start`, then every ``retry_interval`` until the tracker is confident, then
    every ``refresh_interval``; :meth:`recheck` runs one now (after listen addresses
    changed, or a new AutoNAT peer was identified). Callbacks given to
    :meth:`on_change` hear every change of :attr:`reachability`.
    """

    def __init__(
        self,
        host: Host,
        *,
        addrs: Callable[[], Sequence[Multiaddr]] | None = None,
        tracker: ReachabilityTracker | None = None,
        peers_per_round: int = PEERS_PER_ROUND,
        boot_delay: float = BOOT_DELAY,
        retry_interval: float = RETRY_INTERVAL,
        refresh_interval: float = REFRESH_INTERVAL,
        peer_cooldown: float = PEER_COOLDOWN,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._host = host
        self._addrs = addrs
        self.tracker = tracker if tracker is not None else ReachabilityTracker(MAX_CONFIDENCE)
        self.peers_per_round = peers_per_round
        self.boot_delay = boot_delay
        self.retry_interval = retry_interval
        self.refresh_interval = refresh_interval
        self.peer_cooldown = peer_cooldown
        self.request_timeout = request_timeout
        self._callbacks: list[ReachabilityChanged] = []
        self._last_asked: dict[PeerId, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def reachability(self) -> Reachability:
        """The current verdict."""
        return self.tracker.reachability

    @property
    def public_addr(self) -> Multiaddr | None:
        """The address a peer last dialed us at, while we are public."""
        return self.tracker.public_addr

    def on_change(self, callback: ReachabilityChanged) -> None:
        """Call ``callback(reachability)`` whenever the verdict changes."""
        self._callbacks.append(callback)

    def start(self) -> None:
        """Run rounds in the background until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def recheck(self) -> None:
        """Run a round as soon as possible, ignoring the per-peer cooldown."""
        self._wake.set()

    async def close(self) -> None:
        """Stop the background rounds."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def candidates(self, *, force: bool = False) -> list[PeerId]:
        """Connected AutoNAT peers to ask next (out of cooldown unless ``force``), shuffled."""
        now = asyncio.get_running_loop().time()
        for peer, asked in list(self._last_asked.items()):
            if now - asked >= self.peer_cooldown:
                del self._last_asked[peer]  # the map holds only peers still cooling down
        store = self._host.peer_store
        peers = {c.remote_peer for c in self._host.connections() if c.is_usable}
        chosen = [
            p
            for p in peers
            if PROTOCOL_ID in store.protocols_of(p) and (force or p not in self._last_asked)
        ]
        random.shuffle(chosen)
        return chosen[: self.peers_per_round]

    async def run_round(self, *, force: bool = False) -> list[ProbeResult]:
        """Probe the next candidates now; the results, in the order they came."""
        addrs = self._our_addrs()
        peers = self.candidates(force=force)
        if not addrs or not peers:
            return []
        now = asyncio.get_running_loop().time()
        for peer in peers:
            self._last_asked[peer] = now
        results: list[ProbeResult] = []
        for next_done in asyncio.as_completed([self._probe(peer, addrs) for peer in peers]):
            result = await next_done
            results.append(result)
            self._feed(result)
        return results

    # -- internals -----------------------------------------------------------------

    def _our_addrs(self) -> list[Multiaddr]:
        if self._addrs is not None:
            return list(self._addrs())
        return [a for a in self._host.listen_addrs if not a.is_wildcard()]

    async def _probe(self, peer: PeerId, addrs: Sequence[Multiaddr]) -> ProbeResult:
        try:
            return await probe(self._host, peer, addrs, timeout=self.request_timeout)
        except (P2PError, TimeoutError, OSError) as exc:
            log.debug("autonat probe via %s failed: %s", peer, exc)
            return ProbeResult(peer, None, str(exc))

    def _feed(self, result: ProbeResult) -> None:
        changed = self.tracker.observe(result)
        if changed is None:
            return
        log.info("reachability is now %s", changed)
        for callback in list(self._callbacks):
            try:
                callback(changed)
            except Exception:
                log.exception("reachability callback failed")

    def _next_delay(self) -> float:
        return self.refresh_interval if self.tracker.confident else self.retry_interval

    async def _run(self) -> None:
        delay = self.boot_delay
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            force = self._wake.is_set()
            self._wake.clear()
            try:
                await self.run_round(force=force)
            except Exception:
                log.exception("autonat round failed")
            delay = self._next_delay()
