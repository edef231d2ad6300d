"""The task protocol against a js-libp2p peer that implements it from docs/task-protocol.md."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from p2pnode.node import Node, NodeConfig
from p2pnode.protocols.task.client import send_task
from p2pnode.protocols.task.handlers import EchoHandler, PythonHandler
from p2pnode.protocols.task.messages import TaskRefusedError, TaskRequest
from p2pnode.protocols.task.server import TaskServer
from p2pnode.wire.identity import Identity, PeerId

from ..netns import Process
from .jspeer import js_dial, start_js_listener

pytestmark = pytest.mark.interop


def upper(request: TaskRequest) -> str:
    return request.input.upper()


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_p2pnode_sends_tasks_to_js(muxer: str) -> None:
    js = await start_js_listener("--muxer", muxer)
    client = await Node.start(Identity.generate(), [], NodeConfig(muxers=(muxer,)))
    try:
        await client.dial(js.addr)
        peer = PeerId.from_string(js.peer_id)
        result = await send_task(client, peer, "héllo wörld", kind="upper")
        assert result.output == "HÉLLO WÖRLD"
        assert (await send_task(client, peer, "plain")).output == "plain"
        with pytest.raises(TaskRefusedError) as refused:
            await send_task(client, peer, "x", kind="no-such-kind")
        assert refused.value.code == "unknown_kind"
    finally:
        await client.stop()
        await js.stop()


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_js_sends_tasks_to_p2pnode(muxer: str) -> None:
    node = await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=(muxer,))
    )
    handlers = {"default": EchoHandler(), "upper": PythonHandler(upper)}
    TaskServer(node, handlers).install()
    addr = str(node.listen_addrs[0].with_peer_id(node.peer_id))
    try:
        ok = await js_dial(addr, "task", "--input", "from js", "--kind", "upper", "--muxer", muxer)
        assert ok["response"]["output"] == "FROM JS"
        assert ok["response"]["task_id"].startswith("js-")
        assert "error" not in ok["response"]
        refused = await js_dial(addr, "task", "--input", "x", "--kind", "nope", "--muxer", muxer)
        assert refused["response"]["error"]["code"] == "unknown_kind"
        assert refused["response"]["output"] == ""
        timed = await js_dial(
            addr, "task", "--input", "t", "--timeout-ms", "5000", "--muxer", muxer
        )
        assert timed["response"]["output"] == "t"
    finally:
        await node.stop()


async def test_the_command_line_and_js_exchange_tasks(tmp_path: Path) -> None:
    """`p2pnode send-task` sends to js; js sends to `p2pnode serve` (the CLI itself)."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    js = await start_js_listener()
    try:
        sent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pnode", "send-task", js.addr, "to js", "--kind", "upper",
            "--ephemeral", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(sent.communicate(), 60)
        assert sent.returncode == 0, err.decode()
        assert out.decode() == "TO JS\n"
    finally:
        await js.stop()
    server = Process(
        [sys.executable, "-m", "p2pnode", "serve", "--listen", "/ip4/127.0.0.1/tcp/0",
         "--no-mdns", "--ephemeral", "--json", "--exec", "upper=tr a-z A-Z"],
        env,
    )  # fmt: skip
    try:
        addr = server.event("listening")["addrs"][0]
        answer = await js_dial(addr, "task", "--input", "to p2pnode", "--kind", "upper")
        assert answer["response"]["output"] == "TO P2PNODE"
        assert server.event("task", kind="upper")["outcome"] == "ok"
    finally:
        assert server.stop() == 0
