"""Wire compatibility with py-libp2p 0.8.1 (trio), both directions, over yamux and over mplex.

The py peer (``tests/interop/py/peer.py``, run in the py-libp2p venv that
``bash bench/contenders/install_pylibp2p.sh`` makes) listens on loopback and takes commands
over stdin: dial, ping, identify, tasks. Its task protocol is written from
docs/task-protocol.md as a py-libp2p user would write it, with two server styles (answer once
the length prefix is satisfied, or read to EOF first) and two client styles (half-close after
the request, or keep the write side open).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from p2pnode import (
    AGENT_VERSION,
    Node,
    NodeConfig,
    PythonHandler,
    TaskRefusedError,
    TaskRequest,
    TaskServer,
    send_task,
)
from p2pnode.protocols import identify
from p2pnode.wire.identity import Identity

from .pypeer import PeerCommandError, PyPeer, seeded_identity, start_py_peer

# One py peer per muxer serves the whole module (starting one takes ~0.8 s, mostly imports);
# each test has fresh p2pnode nodes, and matches the peer's events by its node's PeerId.
pytestmark = [pytest.mark.interop, pytest.mark.asyncio(loop_scope="module")]

PING = "/ipfs/ping/1.0.0"
IDENTIFY = "/ipfs/id/1.0.0"
IDENTIFY_PUSH = "/ipfs/id/push/1.0.0"
TASK = "/p2pnode/task/1.0.0"
TASK2 = "/p2pnode/task/2.0.0"
RELAY_STOP = "/libp2p/circuit/relay/0.2.0/stop"  # every node accepts relayed connections
DCUTR = "/libp2p/dcutr"  # and upgrades them by hole punching
PY_AGENT = "py-libp2p/0.8.1"
MUXER_IDS = {"yamux": "/yamux/1.0.0", "mplex": "/mplex/6.7.0"}
MUXERS = ["yamux", "mplex"]
SEED = bytes(range(32))  # the py peer's key: its PeerId is known before it starts
PY_PEER_ID = seeded_identity(SEED).peer_id
MIB = 1 << 20
TIMEOUT = 30


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def one_mib_text() -> str:
    """1 MiB of text that is not a repeated pattern (so a misplaced chunk changes the hash)."""
    return os.urandom(MIB // 2).hex()


def upper(request: TaskRequest) -> str:
    return request.input.upper()


class Received:
    """A p2pnode task handler that echoes and records what it got (sha256 of each input)."""

    def __init__(self) -> None:
        self.hashes: list[str] = []

    async def __call__(self, request: TaskRequest) -> str:
        self.hashes.append(sha256(request.input))
        return request.input


async def start_node(muxers: tuple[str, ...] = ("yamux", "mplex")) -> Node:
    return await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=muxers)
    )


def full_addr(node: Node) -> str:
    return str(node.listen_addrs[0].with_peer_id(node.peer_id))


@pytest.fixture(scope="module", params=MUXERS)
def muxer(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def py(muxer: str) -> AsyncIterator[PyPeer]:
    """The py-libp2p peer, offering only ``muxer``, shared by the module's tests."""
    peer = await start_py_peer("--muxer", muxer, seed=SEED)
    yield peer
    assert await peer.stop() == 0, peer.stderr()


@pytest_asyncio.fixture(loop_scope="module")
async def node(muxer: str) -> AsyncIterator[Node]:
    """A p2pnode node offering only ``muxer``, serving tasks (with inputs up to 2 MiB)."""
    node = await start_node((muxer,))
    received = Received()
    TaskServer(
        node,
        {"default": PythonHandler(received), "upper": PythonHandler(upper)},
        max_request_size=2 * MIB,  # a 1 MiB input plus its JSON is just over the 1 MiB default
    ).install()
    node.received = received  # type: ignore[attr-defined]
    yield node
    await node.stop()


# -- connections and multistream-select ------------------------------------------------------


async def test_the_py_peer_has_the_peer_id_of_its_seed(py: PyPeer) -> None:
    assert py.peer_id == PY_PEER_ID
    assert py.addr.startswith("/ip4/127.0.0.1/tcp/") and py.addr.endswith(f"/p2p/{PY_PEER_ID}")


async def test_p2pnode_dials_py(py: PyPeer, node: Node, muxer: str) -> None:
    conn = await node.dial(py.addr)
    assert conn.remote_peer == PY_PEER_ID
    assert conn.muxer_protocol == MUXER_IDS[muxer]
    event = await py.next_event("connected", peer=str(node.peer_id))
    assert event == {"event": "connected", "peer": str(node.peer_id), "muxer": muxer,
                     "direction": "inbound"}  # fmt: skip
    seen = await py.command("connections", peer=str(node.peer_id))
    assert seen["connections"] == [{"muxer": muxer, "direction": "inbound"}]


async def test_py_dials_p2pnode(py: PyPeer, node: Node, muxer: str) -> None:
    connected: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
    node.on_event(lambda e: connected.put_nowait((e.kind, e.muxer)))
    dialed = await py.command("dial", addr=full_addr(node))
    assert dialed["peer_id"] == str(node.peer_id)
    assert dialed["muxer"] == muxer
    kind, negotiated = await asyncio.wait_for(connected.get(), TIMEOUT)
    assert (kind, negotiated) == ("connected", MUXER_IDS[muxer])
    [conn] = node.connections(PY_PEER_ID)
    assert not conn.is_initiator


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        (("yamux", "mplex"), "both", "yamux"),
        (("mplex", "yamux"), "both", "mplex"),  # the dialer's preference wins
        (("mplex",), "both", "mplex"),
        (("yamux", "mplex"), "mplex", "mplex"),
    ],
)
async def test_muxer_negotiation_when_p2pnode_dials(
    ours: tuple[str, ...], theirs: str, expected: str
) -> None:
    py = await start_py_peer("--muxer", theirs)
    node = await start_node(ours)
    try:
        conn = await node.dial(py.addr)
        assert conn.muxer_protocol == MUXER_IDS[expected]
        assert not conn.muxer_in_handshake  # py-libp2p 0.8.1 offers none: multistream
        assert (await py.next_event("connected", peer=str(node.peer_id)))["muxer"] == expected
        seen = await py.command("connections", peer=str(node.peer_id))
        assert seen["connections"] == [{"muxer": expected, "direction": "inbound"}]
        assert len(await node.ping(conn.remote_peer, count=2)) == 2
    finally:
        await node.stop()
        assert await py.stop() == 0


@pytest.mark.parametrize(
    ("theirs", "ours", "expected"),
    [
        ("both", ("yamux", "mplex"), "yamux"),
        ("both", ("mplex",), "mplex"),  # py proposes yamux, we answer na, it proposes mplex
        ("mplex", ("yamux", "mplex"), "mplex"),
    ],
)
async def test_muxer_negotiation_when_py_dials(
    theirs: str, ours: tuple[str, ...], expected: str
) -> None:
    py = await start_py_peer("--muxer", theirs)
    node = await start_node(ours)
    try:
        dialed = await py.command("dial", addr=full_addr(node))
        assert dialed["muxer"] == expected
        [conn] = node.connections(py.peer_id)
        assert conn.muxer_protocol == MUXER_IDS[expected] and not conn.muxer_in_handshake
        assert len((await py.command("ping", peer=str(node.peer_id), count=2))["rtts_ms"]) == 2
    finally:
        await node.stop()
        assert await py.stop() == 0


# -- ping and identify -------------------------------------------------------------------------


async def test_p2pnode_pings_and_identifies_py(py: PyPeer, node: Node) -> None:
    conn = await node.dial(py.addr)
    rtts = await node.ping(PY_PEER_ID, count=5)
    assert len(rtts) == 5 and all(0 < rtt < 5 for rtt in rtts), rtts
    info = await node.identify(PY_PEER_ID)
    assert info.peer_id == PY_PEER_ID
    assert info.agent_version == PY_AGENT
    assert info.protocol_version == identify.PROTOCOL_VERSION
    assert {PING, IDENTIFY, "/ipfs/id/push/1.0.0", TASK} <= set(info.protocols)
    assert [str(a.with_peer_id(PY_PEER_ID)) for a in info.listen_addrs] == [py.addr]
    # py saw our connection come from our side's local address
    assert info.observed_addr == conn.local_addr


async def test_py_identifies_p2pnode_it_was_dialed_by(py: PyPeer, node: Node) -> None:
    conn = await node.dial(py.addr)
    # py-libp2p identifies every new connection on its own: what did it store about us?
    stored = await py.command("peerstore", peer=str(node.peer_id))
    assert stored["identified"] is True
    assert stored["public_key_peer_id"] == str(node.peer_id)
    assert stored["protocols"] == node.protocols
    assert [str(a) for a in node.listen_addrs] == stored["addrs"]
    # and one identify asked for explicitly, field by field
    seen = await py.command("identify", peer=str(node.peer_id))
    assert seen["public_key_peer_id"] == str(node.peer_id) and seen["public_key_matches"]
    assert seen["agent_version"] == AGENT_VERSION
    assert seen["protocol_version"] == identify.PROTOCOL_VERSION
    assert seen["protocols"] == node.protocols
    assert seen["listen_addrs"] == [str(a) for a in node.listen_addrs]
    assert seen["observed_addr"] == str(conn.remote_addr)  # where py's side of it is


async def test_py_pings_and_identifies_p2pnode_it_dialed(py: PyPeer, node: Node) -> None:
    await py.command("dial", addr=full_addr(node))
    pinged = await py.command("ping", peer=str(node.peer_id), count=5)
    assert len(pinged["rtts_ms"]) == 5 and all(0 < rtt < 1000 for rtt in pinged["rtts_ms"])
    seen = await py.command("identify", peer=str(node.peer_id))
    assert seen["public_key_matches"] and seen["agent_version"] == AGENT_VERSION
    assert (
        seen["protocols"]
        == node.protocols
        == sorted([PING, IDENTIFY, IDENTIFY_PUSH, TASK, TASK2, RELAY_STOP, DCUTR])
    )
    assert seen["listen_addrs"] == [str(a) for a in node.listen_addrs]
    [conn] = node.connections(PY_PEER_ID)
    assert seen["observed_addr"] == str(conn.remote_addr)
    # p2pnode identifies py over the connection py opened
    info = await node.identify(PY_PEER_ID)
    assert info.peer_id == PY_PEER_ID and info.agent_version == PY_AGENT
    assert [str(a.with_peer_id(PY_PEER_ID)) for a in info.listen_addrs] == [py.addr]
    assert info.observed_addr == conn.local_addr == node.listen_addrs[0]


# -- tasks: p2pnode is the client, py-libp2p serves ------------------------------------------


@pytest.mark.parametrize("style", ["one-message", "eof"])
async def test_p2pnode_sends_tasks_to_py(py: PyPeer, node: Node, style: str) -> None:
    await py.command("task-style", style=style)
    await node.dial(py.addr)
    result = await send_task(node, PY_PEER_ID, "héllo wörld", kind="upper", timeout=TIMEOUT)
    assert result.output == "HÉLLO WÖRLD"
    served = await py.next_event("task-served", peer=str(node.peer_id))
    assert (served["style"], served["kind"], served["task_id"]) == (style, "upper", result.task_id)
    assert served["peer"] == str(node.peer_id)
    assert (await send_task(node, PY_PEER_ID, "plain", timeout=TIMEOUT)).output == "plain"
    with pytest.raises(TaskRefusedError) as refused:
        await send_task(node, PY_PEER_ID, "x", kind="no-such-kind", timeout=TIMEOUT)
    assert refused.value.code == "unknown_kind"


@pytest.mark.parametrize("style", ["one-message", "eof"])
async def test_p2pnode_sends_1_mib_to_py(py: PyPeer, node: Node, style: str) -> None:
    await py.command("task-style", style=style)
    await node.dial(py.addr)
    text = one_mib_text()
    result = await send_task(node, PY_PEER_ID, text, timeout=TIMEOUT, task_id="big")
    served = await py.next_event("task-served", peer=str(node.peer_id))
    assert (served["task_id"], served["input_len"]) == ("big", MIB)
    assert served["input_sha256"] == sha256(text)
    assert len(result.output) == MIB and sha256(result.output) == sha256(text)


@pytest.mark.parametrize("style", ["one-message", "eof"])
async def test_p2pnode_sends_64_concurrent_tasks_to_py(py: PyPeer, node: Node, style: str) -> None:
    await py.command("task-style", style=style)
    await node.dial(py.addr)
    inputs = [f"task {i} " + "x" * (i * 2_000) for i in range(64)]
    results = await asyncio.gather(
        *(send_task(node, PY_PEER_ID, text, kind="upper", timeout=TIMEOUT) for text in inputs)
    )
    assert [r.output for r in results] == [text.upper() for text in inputs]
    served = [await py.next_event("task-served", peer=str(node.peer_id)) for _ in inputs]
    assert sorted(e["task_id"] for e in served) == sorted(r.task_id for r in results)
    assert len(node.connections(PY_PEER_ID)) == 1


# -- tasks: py-libp2p is the client, p2pnode serves ------------------------------------------


@pytest.mark.parametrize("client_style", ["half-close", "keep-open"])
async def test_py_sends_tasks_to_p2pnode(py: PyPeer, node: Node, client_style: str) -> None:
    peer = str(node.peer_id)
    await py.command("dial", addr=full_addr(node))
    sent = await py.command("task", peer=peer, input="from py", kind="upper",
                            client_style=client_style)  # fmt: skip
    [answer] = sent["results"]
    assert answer["output"] == "FROM PY" and answer["task_id"] == answer["sent_task_id"]
    assert answer["fields"] == ["latency_ms", "output", "task_id"]
    sent = await py.command("task", peer=peer, input="t", timeout_ms=5000,
                            client_style=client_style)  # fmt: skip
    assert sent["results"][0]["output"] == "t"
    refused = await py.command("task", peer=peer, input="x", kind="nope",
                               client_style=client_style)  # fmt: skip
    [answer] = refused["results"]
    assert answer["error"]["code"] == "unknown_kind" and answer["output"] == ""
    assert "default" in answer["error"]["message"]


@pytest.mark.parametrize("client_style", ["half-close", "keep-open"])
async def test_py_sends_1_mib_to_p2pnode(py: PyPeer, node: Node, client_style: str) -> None:
    await py.command("dial", addr=full_addr(node))
    sent = await py.command("task", peer=str(node.peer_id), input=os.urandom(512).hex(),
                            repeat=1024, client_style=client_style)  # fmt: skip
    [answer] = sent["results"]
    assert "error" not in answer, answer
    assert answer["output_len"] == MIB
    assert answer["output_sha256"] == sent["input_sha256"]
    assert node.received.hashes == [sent["input_sha256"]]  # type: ignore[attr-defined]


async def test_py_sends_16_concurrent_tasks_to_p2pnode(py: PyPeer, node: Node) -> None:
    await py.command("dial", addr=full_addr(node))
    sent = await py.command("task", peer=str(node.peer_id), input="y" * 50_000, concurrent=16)
    assert sent["connections"] == 1
    for answer in sent["results"]:
        assert answer["output_sha256"] == sent["input_sha256"], answer
        assert answer["task_id"] == answer["sent_task_id"]
    assert len({a["task_id"] for a in sent["results"]}) == 16
    assert node.received.hashes == [sent["input_sha256"]] * 16  # type: ignore[attr-defined]
    assert len(node.connections(PY_PEER_ID)) == 1


async def test_py_sends_64_concurrent_tasks_to_p2pnode(py: PyPeer, node: Node) -> None:
    """Fails: p2pnode resets inbound streams beyond Limits.max_negotiating_streams (32).

    py-libp2p's multistream client is not optimistic: it sends the multistream header, waits
    for ours, and only then proposes the protocol, so each new stream spends a round trip
    "negotiating" on our side. A py-libp2p application that starts 33 requests at once gets
    the 33rd stream reset (``StreamFailure: failed to open a stream``), although every one of
    them would have chosen its protocol within a millisecond.
    """
    await py.command("dial", addr=full_addr(node))
    sent = await py.try_command("task", peer=str(node.peer_id), input="z", concurrent=64)
    refused = node.refusals.counts["max_negotiating_streams"]
    assert sent["ok"], f"{sent['error']}; p2pnode refused {refused} streams as negotiating"
    assert [a["output"] for a in sent["results"]] == ["z"] * 64


async def test_py_reads_too_large_from_p2pnode(
    py: PyPeer, node: Node, muxer: str, request: pytest.FixtureRequest
) -> None:
    """The server answers too_large after the prefix and then resets (docs/task-protocol.md)."""
    if muxer == "yamux":
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                raises=PeerCommandError,
                reason=(
                    "py-libp2p 0.8.1 drops data it received before a reset: the 3 MiB write "
                    "outgrows the yamux window, fails with StreamReset, and that sets the "
                    "NetStream's state to RESET; NetStream.read (network/stream/net_stream.py) "
                    "then raises 'Cannot read from stream; stream is reset' without looking at "
                    "its buffer. Reading stream.muxed_stream directly returns the whole "
                    "too_large answer (144 bytes for a 2 MiB input) before MuxedStreamReset. "
                    "Over mplex (no flow control) the write completes and the answer is read."
                ),
            )
        )
    await py.command("dial", addr=full_addr(node))
    sent = await py.command("task", peer=str(node.peer_id), input="z", repeat=3 * MIB)
    [answer] = sent["results"]
    assert answer["error"]["code"] == "too_large", answer
    assert answer["task_id"] == "" and answer["output"] == ""
    assert node.received.hashes == []  # type: ignore[attr-defined]


async def test_each_side_sees_the_other_close(py: PyPeer, node: Node) -> None:
    events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    node.on_event(lambda e: events.put_nowait((e.kind, e.direction)))
    await py.command("dial", addr=full_addr(node))
    assert await asyncio.wait_for(events.get(), TIMEOUT) == ("connected", "inbound")
    await py.command("disconnect", peer=str(node.peer_id))
    assert await asyncio.wait_for(events.get(), TIMEOUT) == ("disconnected", "inbound")
    assert node.connections(PY_PEER_ID) == []

    conn = await node.dial(py.addr)
    await py.next_event("connected", peer=str(node.peer_id), direction="inbound")
    await conn.close()
    await py.next_event("disconnected", peer=str(node.peer_id), direction="inbound")
    assert (await py.command("connections", peer=str(node.peer_id)))["connections"] == []


# -- the command line against py-libp2p -------------------------------------------------------


async def run_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "p2pnode", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_command_line_pings_py(py: PyPeer, muxer: str, tmp_path: Path) -> None:
    code, out, err = await run_cli(
        tmp_path, "ping", py.addr, "--count", "3", "--muxer", muxer, "--json"
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len([e for e in events if "rtt_ms" in e]) == 3, events


async def test_the_command_line_sends_tasks_to_py(py: PyPeer, muxer: str, tmp_path: Path) -> None:
    text = f"to py {os.urandom(4).hex()}"
    code, out, err = await run_cli(
        tmp_path, "send-task", py.addr, text, "--kind", "upper", "--ephemeral", "--muxer", muxer
    )
    assert code == 0, err
    assert out == text.upper() + "\n"
    served = await py.next_event("task-served", input_sha256=sha256(text))
    assert served["kind"] == "upper"
