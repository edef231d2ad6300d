"""AutoNAT v1 (``/libp2p/autonat/1.0.0``) with go-libp2p (p2pd, v0.32.1) and js-libp2p
(@libp2p/autonat 3.0.28), both ways.

Why network namespaces, and why IPv6 addresses in ``3fff::/20``:

- go never dials back a private or loopback IP: its service refuses at once when the
  requester's observed address fails ``dialPolicy.skipDial`` (p2p/host/autonat/svc.go,
  ``handleDial``: "refusing to dial peer with blocked observed address"), and
  ``skipDial`` (dialpolicy.go) skips every address for which ``manet.IsPublicAddr`` is
  false unless ``allowSelfDials``, a field only go's own tests set. ``IsPublicAddr``
  (go-multiaddr v0.12.0 net/private.go) is false for 127/8, 10/8, 100.64/10, 172.16/12,
  192.168/16, 169.254/16 and the IPv4 documentation / benchmark ranges; so neither
  loopback nor ``two_hosts``' 10.213.x addresses can get a dial-back out of go. Its client
  also asks only peers with a public address (``skipPeer``). The first test shows the
  refusal on loopback.
- js refuses (``isPrivate``, @libp2p/utils private-ip.js) the same ranges and, for IPv6,
  also ``2001:db8::/32``; its client asks only about non-private addresses, IPv6 ones
  only inside ``2000::/3`` (``isGlobalUnicast``).
- ``3fff::/20`` is the IPv6 documentation prefix of RFC 9637: never routed on the
  Internet, yet public for go, js and Python 3.11's ``ipaddress`` (so p2pnode's default
  policy, ``private_network`` off, serves it). Each test makes two namespaces joined by a
  veth pair (``p2pnode.demo.netns.two_hosts``) and gives them ``3fff:213:N::1`` and
  ``::2``; nothing leaves them.

p2pnode runs in a namespace as a subprocess: this module itself, run as
``python -m tests.interop.test_autonat_interop CONFIG_JSON`` (see :func:`_child`). Where a
test needs an address that cannot be dialed, an nftables rule in the peer's namespace
drops new inbound connections (SYNs) to its listen port; its own outgoing connections
still work. When p2pnode serves, the child taps its service (test-only wrappers around
the node's handler table and ``NatTraversal._raw_dial``): each request's and answer's
bytes, decoded here with p2pd.py's independent protobuf reader, and each dial-back.

js never answers a v1 request over a direct connection (a js bug, see
:func:`test_js_accepts_p2pnode_dials_but_closes_the_connection_before_answering`), so
"p2pnode asks js" checks what js's log shows of the request instead of an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pnode import Identity, Multiaddr, Node, NodeConfig, PeerId
from p2pnode.demo.nat_topology import nftables_unavailable

from ..netns import require_netns
from .jspeer import JS_DIR, require_js_peer
from .p2pd import P2pd, decode_uvarint, require_p2pd
from .p2pd import decode_message as pb_decode

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
JS_SCRIPT = JS_DIR / "autonat-peer.mjs"
PROTOCOL = "/libp2p/autonat/1.0.0"
DEAD_PORT = 9  # nothing listens on it in a fresh namespace
TIMEOUT = 50  # every test ends within this many seconds

# -- the p2pnode side, in a namespace ----------------------------------------------------


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, "t": round(time.monotonic(), 3), **fields}))
    sys.stdout.write("\n")
    sys.stdout.flush()


class _LogToJson(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit("log", logger=record.name, level=record.levelname, message=record.getMessage())


class _Tap:
    """A stream that records what is read from and written to it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.received = bytearray()
        self.sent = bytearray()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def read(self, max_bytes: int = -1) -> bytes:
        data: bytes = await self._stream.read(max_bytes)
        self.received += data
        return data

    async def write(self, data: Any) -> None:
        self.sent += bytes(data)
        await self._stream.write(data)


def _tap_autonat_service(node: Node) -> None:
    """Observe the node's own AutoNAT service: each served stream's bytes (``served``)
    and each dial-back it makes (``dial_back``: NatTraversal's raw dial, wrapped)."""
    serve = node._handlers[PROTOCOL]

    async def tapped(stream: Any) -> None:
        tap = _Tap(stream)
        await serve(tap)
        remote = str(stream.connection.remote_addr)
        _emit(
            "served",
            peer=str(stream.remote_peer),
            remote_addr=remote,
            request=tap.received.hex(),
            response=tap.sent.hex(),
        )

    node._handlers[PROTOCOL] = tapped
    raw_dial = node.nat._raw_dial

    async def dial(addr: Multiaddr, port: int | None, initiator: bool) -> Any:
        try:
            conn = await raw_dial(addr, port, initiator)
        except BaseException as exc:  # the service's timeout cancels the dial
            _emit("dial_back", addr=str(addr), ok=False, error=repr(exc))
            raise
        _emit("dial_back", addr=str(addr), ok=True)
        return conn

    node.nat._raw_dial = dial  # type: ignore[method-assign]


async def _child(settings: dict[str, Any]) -> None:
    """A p2pnode node that prints JSON lines and obeys JSON commands on stdin.

    settings: ``listen`` and the NodeConfig fields ``autonat_service``,
    ``reachability_checks``, ``private_network``, ``autonat_boot_delay``,
    ``autonat_retry_interval``, ``autonat_dial_timeout``. Events: ``listening``,
    ``connection`` (kind, peer, addr, direction), ``reachability`` (the monitor's
    changes), ``log`` (p2pnode.protocols.autonat and .nat at DEBUG). Commands:
    ``{"cmd": "dial", "addr": A}`` -> ``dialed``; ``{"cmd": "probe", "peer": P,
    "addrs": [..], "timeout": S}`` -> ``probe`` (status name, text, addr, seconds).
    """
    from p2pnode.protocols.autonat import probe

    handler = _LogToJson()
    for name in ("p2pnode.protocols.autonat", "p2pnode.protocols.nat"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    fields = (
        "autonat_service",
        "reachability_checks",
        "private_network",
        "autonat_boot_delay",
        "autonat_retry_interval",
        "autonat_dial_timeout",
    )
    config = NodeConfig(mdns=False, **{k: settings[k] for k in fields if k in settings})
    node = await Node.start(Identity.generate(), [settings["listen"]], config)
    node.on_event(
        lambda e: _emit(
            "connection",
            kind=e.kind,
            peer=str(e.peer_id),
            addr=str(e.addr),
            direction=e.direction,
        )
    )
    if node.nat.monitor is not None:
        node.nat.monitor.on_change(lambda r: _emit("reachability", value=str(r)))
    if settings.get("autonat_service"):
        _tap_autonat_service(node)
    _emit("listening", peer_id=str(node.peer_id), addrs=[str(a) for a in node.listen_addrs])

    async def run(command: dict[str, Any]) -> None:
        if command["cmd"] == "dial":
            try:
                conn = await node.dial(command["addr"])
            except Exception as exc:
                _emit("dialed", ok=False, error=repr(exc))
            else:
                _emit("dialed", ok=True, remote_addr=str(conn.remote_addr))
        elif command["cmd"] == "probe":
            addrs = [Multiaddr.from_string(a) for a in command["addrs"]]
            started = time.monotonic()
            try:
                result = await probe(
                    node, PeerId.from_string(command["peer"]), addrs, timeout=command["timeout"]
                )
            except Exception as exc:
                _emit("probe", status=None, text=repr(exc), addr=None, seconds=0)
                return
            _emit(
                "probe",
                status=None if result.status is None else result.status.name,
                text=result.text,
                addr=None if result.addr is None else str(result.addr),
                seconds=round(time.monotonic() - started, 2),
            )

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pending: set[asyncio.Task[None]] = set()
    try:
        while line := await reader.readline():
            if line.strip():
                task = asyncio.ensure_future(run(json.loads(line)))
                pending.add(task)
                task.add_done_callback(pending.discard)
    finally:
        for task in pending:
            task.cancel()
        await node.stop()


# -- processes that print JSON lines -----------------------------------------------------


class JsonPeer:
    """A subprocess printing one JSON object a line (a p2pnode child or the js peer)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []  # every event read so far, in order
        self._returned: set[int] = set()  # indexes of the events next_event returned
        self._stderr = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".stderr")[1])
        self.hello: dict[str, Any] = {}

    async def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self._stderr, "wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=ROOT,
            )
        self.hello = await self.next_event("listening", 30)

    @property
    def peer_id(self) -> str:
        return str(self.hello["peer_id"])

    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace") if self._stderr.exists() else ""

    def report(self) -> str:
        return f"{self.name} events: {self.events}\n{self.name} stderr: {self.stderr()[-6000:]}"

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"{self.name} exited\n{self.report()}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def next_event(self, kind: str, timeout: float = 20, /, **match: Any) -> dict[str, Any]:
        """The first not yet returned event of ``kind`` with the fields in ``match``."""

        def fits(event: dict[str, Any]) -> bool:
            return event.get("event") == kind and all(event.get(k) == v for k, v in match.items())

        for index, event in enumerate(self.events):
            if index not in self._returned and fits(event):
                self._returned.add(index)
                return event
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._read()
                    if fits(event):
                        self._returned.add(len(self.events) - 1)
                        return event
        except TimeoutError:
            raise AssertionError(f"no {kind} {match} from {self.name}\n{self.report()}") from None

    async def drain(self, seconds: float) -> None:
        """Read what arrives within ``seconds`` (for evidence after the condition held)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    await self._read()

    async def command(self, reply: str, wait: float = 20, /, **fields: Any) -> dict[str, Any]:
        """Send ``fields`` as one JSON line; the next ``reply`` event (``wait`` seconds)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(fields).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.next_event(reply, wait)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._stderr.unlink(missing_ok=True)


# -- namespaces with public-looking addresses --------------------------------------------


@dataclass(frozen=True)
class PublicHost:
    """A namespace from two_hosts, with an IPv6 address in 3fff::/20 on its veth."""

    name: str
    ip: str

    def argv(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *command]

    def listen(self, port: int = 0) -> str:
        return f"/ip6/{self.ip}/tcp/{port}"

    def run(self, *command: str) -> str:
        result = subprocess.run(self.argv(list(command)), capture_output=True, text=True)
        assert result.returncode == 0, f"{command} in {self.name}: {result.stderr}"
        return result.stdout

    def refuse_connections_to(self, port: int) -> None:
        """Drop new inbound TCP connections (SYN without ACK) to ``port`` in this namespace."""
        rules = (
            "table inet autonat_test {\n"
            " chain input {\n"
            "  type filter hook input priority 0; policy accept;\n"
            f"  tcp dport {port} tcp flags & (syn | ack) == syn drop\n"
            " }\n"
            "}\n"
        )
        missing = nftables_unavailable()  # installs nftables when it is missing
        assert missing is None, f"this test needs nftables: {missing}"
        result = subprocess.run(
            self.argv(["nft", "-f", "-"]), input=rules, capture_output=True, text=True
        )
        assert result.returncode == 0, f"nft in {self.name}: {result.stderr}"


@contextmanager
def public_hosts() -> Iterator[tuple[PublicHost, PublicHost]]:
    require_netns()
    from p2pnode.demo.netns import two_hosts

    with two_hosts() as hosts:
        third = int(hosts[0].ip.split(".")[2])
        found = []
        for index, host in enumerate(hosts, start=1):
            links = subprocess.run(
                ["ip", "-n", host.name, "-o", "link", "show", "type", "veth"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            device = links.split(":")[1].strip().split("@")[0]
            ip = f"3fff:213:{third:x}::{index}"
            subprocess.run(
                ["ip", "-n", host.name, "addr", "add", f"{ip}/64", "dev", device, "nodad"],
                capture_output=True,
                text=True,
                check=True,
            )
            found.append(PublicHost(host.name, ip))
        yield found[0], found[1]


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as exits:
        yield exits


async def p2pnode_in(
    host: PublicHost, exits: contextlib.AsyncExitStack, **settings: Any
) -> JsonPeer:
    peer = JsonPeer("p2pnode")
    exits.push_async_callback(peer.stop)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "tests.interop.test_autonat_interop"]
    await peer.start(host.argv([*argv, json.dumps({"listen": host.listen(), **settings})]), env)
    return peer


async def js_in(host: PublicHost, exits: contextlib.AsyncExitStack) -> JsonPeer:
    node = require_js_peer()
    peer = JsonPeer("js")
    exits.push_async_callback(peer.stop)
    debug = "libp2p:auto-nat,libp2p:auto-nat:*"
    argv = ["env", f"DEBUG={debug}", node, str(JS_SCRIPT), "--listen", host.listen()]
    await peer.start(host.argv(argv))
    return peer


async def go_in(
    host: PublicHost, exits: contextlib.AsyncExitStack, *args: str, metrics_port: int = 0
) -> P2pd:
    require_p2pd()
    extra = ["-autonat", *args]
    if metrics_port:
        extra += ["-metricsAddr", f"127.0.0.1:{metrics_port}"]
    prefix = host.argv(["env", "GOLOG_LOG_LEVEL=autonat=debug"])
    go = P2pd(host_addrs=[host.listen()], extra_args=extra, prefix=prefix)
    await go.start()
    exits.push_async_callback(go.stop)
    return go


def first_addr(addrs: list[str], ip: str) -> str:
    return next(a for a in addrs if f"/ip6/{ip}/tcp/" in a)


def go_tcp_addr(go: P2pd, ip: str) -> Multiaddr:
    for raw in go.addrs:
        addr = Multiaddr.from_bytes(raw)
        if addr.value_for("ip6") == ip and addr.value_for("tcp"):
            return addr
    raise AssertionError(f"go listens at no /ip6/{ip}/tcp address: {go.addrs}")


def go_metric(host: PublicHost, port: int, name: str) -> float | None:
    """A gauge from go's Prometheus endpoint (inside its namespace), None if absent."""
    script = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',"
        " timeout=5).read().decode())"
    )
    text = host.run(sys.executable, "-c", script)
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def wait_until(condition: Any, timeout: float, what: str, report: Any = "") -> None:
    """Poll ``condition()`` every 0.2 s until it is true (AssertionError after timeout)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what} within {timeout}s\n{report() if callable(report) else report}"
            )
        await asyncio.sleep(0.2)


# go-libp2p's network.Reachability values, as its autonat metrics tracer sets the gauge
GO_PUBLIC, GO_PRIVATE = 1, 2
GO_REACHABILITY = "libp2p_autonat_reachability_status"
WRITE_TO_CLOSED = (
    "error handling incoming autonat stream - StreamStateError: "
    "Cannot write to a stream that is closed"
)

# -- go on loopback: refused, whatever the address -----------------------------------------


async def test_go_refuses_every_dial_back_on_loopback() -> None:
    """go-libp2p v0.32.1 never dials a loopback requester: E_DIAL_REFUSED, no dial."""
    require_p2pd()
    node = await Node.start(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig())
    try:
        async with P2pd(extra_args=["-autonat", "-forceReachabilityPublic"]) as go:
            from p2pnode.protocols.autonat import probe
            from p2pnode.wire.autonat import ResponseStatus

            async with asyncio.timeout(TIMEOUT):
                go_id = PeerId.from_bytes(go.peer_id)
                tcp = next(
                    Multiaddr.from_bytes(a)
                    for a in go.addrs
                    if Multiaddr.from_bytes(a).value_for("ip4") == "127.0.0.1"
                )
                await node.dial(tcp.with_peer_id(go_id))
                started = time.monotonic()
                result = await probe(node, go_id, node.listen_addrs)
                assert result.status is ResponseStatus.E_DIAL_REFUSED, result
                assert result.text == "refusing to dial peer with blocked observed address"
                assert time.monotonic() - started < 5  # refused at once: no dial was tried
    finally:
        await node.stop()


# -- p2pnode asks go ---------------------------------------------------------------------


async def test_p2pnode_probe_through_go_ok_then_dial_error(
    stack: contextlib.AsyncExitStack,
) -> None:
    with public_hosts() as (a, b):
        async with asyncio.timeout(TIMEOUT):
            py = await p2pnode_in(a, stack)
            go = await go_in(b, stack, "-forceReachabilityPublic")
            go_id = PeerId.from_bytes(go.peer_id)
            go_addr = go_tcp_addr(go, b.ip).with_peer_id(go_id)
            dialed = await py.command("dialed", cmd="dial", addr=str(go_addr))
            assert dialed["ok"], py.report()
            listen = first_addr(py.hello["addrs"], a.ip)

            ok = await py.command("probe", cmd="probe", peer=str(go_id), addrs=[listen], timeout=30)
            assert ok["status"] == "OK", py.report() + go.stderr()
            assert ok["addr"] == listen, ok  # go reports the address it reached us at
            # go's dial-back came from a separate dialer host (its own, fresh PeerId)
            inbound = [
                e
                for e in py.events
                if e["event"] == "connection" and e["kind"] == "connected"
                and e["direction"] == "inbound" and e["peer"] != str(go_id)
            ]  # fmt: skip
            assert inbound, py.report()

            dead = f"/ip6/{a.ip}/tcp/{DEAD_PORT}"
            failed = await py.command(
                "probe", 40, cmd="probe", peer=str(go_id), addrs=[dead], timeout=35
            )
            assert failed["status"] == "E_DIAL_ERROR", py.report() + go.stderr()
            assert failed["text"] == "dial failed"
            assert failed["seconds"] >= 14  # go answers a failure when its 15 s are up


async def test_p2pnode_monitor_turns_public_through_go(stack: contextlib.AsyncExitStack) -> None:
    with public_hosts() as (a, b):
        async with asyncio.timeout(TIMEOUT):
            py = await p2pnode_in(
                a, stack, reachability_checks=True, autonat_boot_delay=0.5,
                autonat_retry_interval=2.0,
            )  # fmt: skip
            go = await go_in(b, stack, "-forceReachabilityPublic")
            go_addr = go_tcp_addr(go, b.ip).with_peer_id(PeerId.from_bytes(go.peer_id))
            assert (await py.command("dialed", cmd="dial", addr=str(go_addr)))["ok"]
            await py.next_event("reachability", 30, value="public")


# -- go asks p2pnode ---------------------------------------------------------------------


async def _go_asks_p2pnode(
    stack: contextlib.AsyncExitStack, reachable: bool
) -> tuple[JsonPeer, P2pd, PublicHost]:
    a, b = stack.enter_context(public_hosts())
    py = await p2pnode_in(a, stack, autonat_service=True, autonat_dial_timeout=3.0)
    metrics = 8089
    go = await go_in(b, stack, metrics_port=metrics)
    go_listen = go_tcp_addr(go, b.ip)
    if not reachable:
        b.refuse_connections_to(int(go_listen.value_for("tcp") or 0))
    py_addr = Multiaddr.from_string(first_addr(py.hello["addrs"], a.ip))
    await go.connect(PeerId.from_string(py.peer_id).to_bytes(), [py_addr.to_bytes()])
    want = GO_PUBLIC if reachable else GO_PRIVATE

    def report() -> str:
        return f"{py.report()}\ngo stderr: {go.stderr()}"

    await wait_until(
        lambda: go_metric(b, metrics, GO_REACHABILITY) == want,
        30,
        f"go's {GO_REACHABILITY} did not become {want}",
        report,
    )
    await py.drain(0.5)
    return py, go, b


def autonat_message(hex_frame: str) -> dict[int, list[int | bytes]]:
    """One length-prefixed AutoNAT message, decoded with p2pd.py's own protobuf reader."""
    data = bytes.fromhex(hex_frame)
    size, offset = decode_uvarint(data)
    assert offset + size == len(data), f"not one whole frame: {hex_frame}"
    return pb_decode(data[offset:])


def check_served(served: dict[str, Any], requester: str, status: int) -> list[Multiaddr]:
    """Assert ``served`` was a well-formed DIAL from ``requester`` that p2pnode answered
    with ``status``; the addresses the DIAL asked to be dialed at."""
    request = autonat_message(served["request"])
    assert request[1] == [0], request  # type DIAL
    dial = pb_decode(bytes(request[2][0]))  # type: ignore[arg-type]
    peer = pb_decode(bytes(dial[1][0]))  # type: ignore[arg-type]
    assert peer[1] == [PeerId.from_string(requester).to_bytes()], peer
    addrs = [Multiaddr.from_bytes(bytes(raw)) for raw in peer.get(2, [])]  # type: ignore[arg-type]
    response = autonat_message(served["response"])
    assert response[1] == [1], response  # type DIAL_RESPONSE
    answer = pb_decode(bytes(response[3][0]))  # type: ignore[arg-type]
    assert answer[1] == [status], answer
    return addrs


def go_log_lines(go: P2pd, needle: str) -> list[str]:
    return [line for line in go.stderr().splitlines() if needle in line]


async def test_go_becomes_public_through_p2pnode(stack: contextlib.AsyncExitStack) -> None:
    async with asyncio.timeout(TIMEOUT):
        py, go, b = await _go_asks_p2pnode(stack, reachable=True)
        go_id = str(PeerId.from_bytes(go.peer_id))
        go_listen = go_tcp_addr(go, b.ip)
        served = await py.next_event("served", 5)
        asked = check_served(served, go_id, 0)  # OK
        assert go_listen in asked, asked
        back = await py.next_event("dial_back", 5)  # a new connection, then closed
        assert back["ok"] and back["addr"] == f"{go_listen}/p2p/{go_id}", back
        answer = pb_decode(bytes(autonat_message(served["response"])[3][0]))  # type: ignore[arg-type]
        assert Multiaddr.from_bytes(bytes(answer[3][0])) == go_listen  # type: ignore[arg-type]
        done = go_log_lines(go, f"Dialback through peer {py.peer_id} completed")
        assert done and done[0].endswith("err: %!s(<nil>)"), go.stderr()
        assert go_log_lines(go, "NAT status is public"), go.stderr()


async def test_go_becomes_private_through_p2pnode(stack: contextlib.AsyncExitStack) -> None:
    async with asyncio.timeout(TIMEOUT):
        py, go, b = await _go_asks_p2pnode(stack, reachable=False)
        go_id = str(PeerId.from_bytes(go.peer_id))
        go_listen = go_tcp_addr(go, b.ip)
        served = await py.next_event("served", 5)
        asked = check_served(served, go_id, 100)  # E_DIAL_ERROR
        assert go_listen in asked, asked
        back = await py.next_event("dial_back", 5)
        assert not back["ok"] and back["addr"] == f"{go_listen}/p2p/{go_id}", back
        done = go_log_lines(go, f"Dialback through peer {py.peer_id} completed")
        assert done and "dial failed" in done[0], go.stderr()
        assert go_log_lines(go, "NAT status is private"), go.stderr()


# -- p2pnode asks js ---------------------------------------------------------------------


async def test_js_accepts_p2pnode_dials_but_closes_the_connection_before_answering(
    stack: contextlib.AsyncExitStack,
) -> None:
    """p2pnode asks js: js reads and accepts p2pnode's DIAL, but never answers it.

    A js-libp2p bug (@libp2p/autonat 3.0.28, dist/src/autonat.js,
    ``handleAutonatMessage``): the dial-back is ``connectionManager.openConnection(ma)``,
    which returns the connection already open to the requester (libp2p 3.3.11,
    connection-manager/index.js ``openConnection`` -> ``findExistingConnection``: an
    open direct connection is reused whatever address is asked for), and its
    ``finally`` closes that connection -- the one the request came on -- before the
    caller writes the DIAL_RESPONSE ("Cannot write to a stream that is closed"). A
    requester has a direct connection to js (js refuses relayed ones: their remote
    address has no IP), so no v1 request to js gets an answer. What is checked: js's log
    shows it decoded p2pnode's DIAL and chose the requested address; the probe ends
    without an answer; js dropped the connection.
    """
    with public_hosts() as (a, b):
        async with asyncio.timeout(TIMEOUT):
            # reachability_checks: outgoing connections leave from the listen port, so
            # js's connection's remote address is the one asked about ("successfully
            # dialed" without dialing), and the answer would be OK if it were sent
            py = await p2pnode_in(a, stack, reachability_checks=True, autonat_boot_delay=600)
            js = await js_in(b, stack)
            js_addr = f"{first_addr(js.hello['addrs'], b.ip)}/p2p/{js.peer_id}"
            listen = first_addr(py.hello["addrs"], a.ip)
            for round_, (asked, js_verdict) in enumerate(
                (
                    (listen, f"successfully dialed {py.peer_id} via {listen}/p2p/{py.peer_id}"),
                    (f"/ip6/{a.ip}/tcp/{DEAD_PORT}", "Unexpected remote address"),
                ),
                start=1,
            ):
                assert (await py.command("dialed", cmd="dial", addr=js_addr))["ok"], py.report()
                result = await py.command(
                    "probe", cmd="probe", peer=js.peer_id, addrs=[asked], timeout=20
                )
                assert result["status"] is None, result  # no DIAL_RESPONSE came
                assert "closed the autonat stream without answering" in result["text"], result
                await js.next_event("connection-closed", 10, peer_id=py.peer_id)
                log = js.stderr()
                assert f"incoming request from {py.peer_id}" in log, log
                assert f"dial multiaddrs {asked}/p2p/{py.peer_id} for peer" in log, log
                assert js_verdict in log, log
                await wait_until(
                    lambda n=round_: js.stderr().count(WRITE_TO_CLOSED) >= n,  # type: ignore[misc]
                    10,
                    "js logged no failed write of its answer",
                    js.report,
                )
                await py.next_event("connection", 10, kind="disconnected", peer=js.peer_id)


# -- js asks p2pnode ---------------------------------------------------------------------


async def test_js_verifies_its_address_through_p2pnode(stack: contextlib.AsyncExitStack) -> None:
    with public_hosts() as (a, b):
        async with asyncio.timeout(TIMEOUT):
            py = await p2pnode_in(a, stack, autonat_service=True, autonat_dial_timeout=3.0)
            js = await js_in(b, stack)
            js_listen = first_addr(js.hello["addrs"], b.ip)
            before = await js.command("addrs", cmd="addrs")
            assert not any(js_listen in v for v in before["verified"]), before
            py_addr = f"{first_addr(py.hello['addrs'], a.ip)}/p2p/{py.peer_id}"
            assert (await js.command("dialed", cmd="dial", addr=py_addr))["ok"], js.report()
            update = await js.next_event("self-update", 30)
            while not any(js_listen in addr for addr in update["addrs"]):
                update = await js.next_event("self-update", 30)
            after = await js.command("addrs", cmd="addrs")
            assert any(js_listen in v for v in after["verified"]), after
            # p2pnode dialed js back on a new connection
            await js.drain(0.3)
            inbound = [
                e
                for e in js.events
                if e["event"] == "connection" and e["direction"] == "inbound"
                and e["peer_id"] == py.peer_id
            ]  # fmt: skip
            assert inbound, js.report()
            assert "is externally dialable" in js.stderr(), js.stderr()
            served = await py.next_event("served", 5)
            assert check_served(served, js.peer_id, 0) == [Multiaddr.from_string(js_listen)]
            back = await py.next_event("dial_back", 5)
            assert back["ok"] and back["addr"] == f"{js_listen}/p2p/{js.peer_id}", back


async def test_js_hears_dial_error_from_p2pnode(stack: contextlib.AsyncExitStack) -> None:
    with public_hosts() as (a, b):
        async with asyncio.timeout(TIMEOUT):
            py = await p2pnode_in(a, stack, autonat_service=True, autonat_dial_timeout=3.0)
            js = await js_in(b, stack)
            js_listen = first_addr(js.hello["addrs"], b.ip)
            b.refuse_connections_to(int(js_listen.rsplit("/", 1)[1]))
            py_addr = f"{first_addr(py.hello['addrs'], a.ip)}/p2p/{py.peer_id}"
            assert (await js.command("dialed", cmd="dial", addr=py_addr))["ok"], js.report()
            await wait_until(
                lambda: "success 0 failure 1" in js.stderr(),
                30,
                "js did not count a failed dial-back",
                js.report,
            )
            served = await py.next_event("served", 5)
            assert check_served(served, js.peer_id, 100) == [Multiaddr.from_string(js_listen)]
            back = await py.next_event("dial_back", 5)
            assert not back["ok"] and back["addr"] == f"{js_listen}/p2p/{js.peer_id}", back
            after = await js.command("addrs", cmd="addrs")
            assert not any(js_listen in v for v in after["verified"]), after


if __name__ == "__main__":
    asyncio.run(_child(json.loads(sys.argv[1])))
