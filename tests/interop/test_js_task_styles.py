"""The task protocol against js-libp2p peers written the ways real libp2p code is written.

Servers (`peer.mjs listen --task-style`): `one-message` answers once one length-prefixed
request has been read; `eof` reads the request until the client half-closes, then answers
(the pattern of libp2p request-response codecs). Clients (`peer.mjs dial ... task
--client-style`): `half-close` closes the write side after the request; `keep-open` keeps
it open until the response has arrived.

p2pnode must interoperate with every style, over yamux and mplex, from the library, from
the command line and by PeerId through mDNS (inside private network namespaces only).
Each exchange is bounded: a peer that never answers fails the test, it does not hang it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from p2pnode import EchoHandler, Identity, Node, NodeConfig, P2PError, TaskServer, send_task

from ..netns import Process, p2pnode
from .jspeer import PEER_SCRIPT, JsListener, js_dial, require_js_peer, start_js_listener

if TYPE_CHECKING:
    from ..netns import Host

pytestmark = pytest.mark.interop

MUXERS = ["yamux", "mplex"]
SERVER_STYLES = ["one-message", "eof"]
CLIENT_STYLES = ["half-close", "keep-open"]
# One task is well under a second on loopback; this is the bound for a whole exchange.
ANSWER_WITHIN = 10.0


def muxer_id(muxer: str) -> str:
    return {"yamux": "/yamux/1.0.0", "mplex": "/mplex/6.7.0"}[muxer]


async def expect_served(js: JsListener, style: str, muxer: str, task_id: str) -> None:
    """js reports the task it answered, in the style and over the muxer the test chose."""
    served = await js.next_event("task-served", timeout=5)
    assert served == {
        "event": "task-served", "style": style, "muxer": muxer_id(muxer),
        "task_id": task_id, "error": None,
    }, served  # fmt: skip


# -- p2pnode client, js servers ---------------------------------------------------------


@pytest.mark.parametrize("muxer", MUXERS)
@pytest.mark.parametrize("style", SERVER_STYLES)
async def test_p2pnode_client_gets_an_answer_from_js_server(style: str, muxer: str) -> None:
    js = await start_js_listener("--muxer", muxer, "--task-style", style)
    client = await Node.start(Identity.generate(), [], NodeConfig(muxers=(muxer,)))
    try:
        try:
            async with asyncio.timeout(ANSWER_WITHIN):
                result = await send_task(client, js.addr, "hello", timeout=5)
        except (P2PError, TimeoutError) as exc:
            pytest.fail(
                f"p2pnode got no answer from the {style} js server over {muxer}: {exc!r}; "
                f"{await js.report()}"
            )
        assert result.output == "hello"
        await expect_served(js, style, muxer, result.task_id)
    finally:
        await client.stop()
        await js.stop()


@pytest.mark.parametrize("style", SERVER_STYLES)
async def test_command_line_gets_an_answer_from_js_server(style: str, tmp_path: Path) -> None:
    """`p2pnode send-task ADDR hello` (a subprocess, as users run it)."""
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    js = await start_js_listener("--task-style", style)
    try:
        sent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pnode", "send-task", js.addr, "hello", "--ephemeral",
            "--timeout", "5", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(sent.communicate(), ANSWER_WITHIN + 20)
        except TimeoutError:
            sent.kill()
            await sent.wait()
            raise
        assert (sent.returncode, out.decode()) == (0, "hello\n"), (
            f"send-task to the {style} js server exited {sent.returncode}: "
            f"{err.decode()[-2000:]}; {await js.report()}"
        )
        served = await js.next_event("task-served", timeout=5)
        assert served["style"] == style and served["error"] is None, served
    finally:
        await js.stop()


# -- js clients, p2pnode server -----------------------------------------------------------


@pytest.mark.parametrize("muxer", MUXERS)
@pytest.mark.parametrize("style", CLIENT_STYLES)
async def test_js_client_gets_an_answer_from_p2pnode(style: str, muxer: str) -> None:
    node = await Node.start(
        Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], NodeConfig(muxers=(muxer,))
    )
    TaskServer(node, {"default": EchoHandler()}).install()
    addr = str(node.listen_addrs[0].with_peer_id(node.peer_id))
    try:
        try:
            answer = await js_dial(
                addr, "task", "--input", "hi from js", "--client-style", style,
                "--muxer", muxer, timeout=ANSWER_WITHIN + 10,
            )  # fmt: skip
        except TimeoutError:
            pytest.fail(f"the {style} js client got no answer from p2pnode over {muxer}")
        assert answer["style"] == style and answer["muxer"] == muxer_id(muxer), answer
        response = answer["response"]
        assert response["output"] == "hi from js", response
        assert response["task_id"].startswith("js-") and "error" not in response, response
    finally:
        await node.stop()


# -- controls: js clients against js servers ----------------------------------------------
# The test peer's styles are sound: a js-libp2p client, which negotiates the protocol
# before it writes, is answered by every server style. A keep-open client cannot talk to
# an eof server by design (each would wait for the other), so that pair is not run.


@pytest.mark.parametrize("muxer", MUXERS)
@pytest.mark.parametrize(
    ("client_style", "server_style"),
    [("half-close", "one-message"), ("half-close", "eof"), ("keep-open", "one-message")],
)
async def test_js_client_gets_an_answer_from_js_server(
    client_style: str, server_style: str, muxer: str
) -> None:
    js = await start_js_listener("--muxer", muxer, "--task-style", server_style)
    try:
        try:
            answer = await js_dial(
                js.addr, "task", "--input", "js to js", "--kind", "upper",
                "--client-style", client_style, "--muxer", muxer, timeout=ANSWER_WITHIN + 10,
            )  # fmt: skip
        except TimeoutError:
            pytest.fail(f"{client_style} js client, {server_style} js server: no answer; "
                        f"{await js.report()}")  # fmt: skip
        assert answer["response"]["output"] == "JS TO JS", answer
        await expect_served(js, server_style, muxer, answer["response"]["task_id"])
    finally:
        await js.stop()


# -- by PeerId, found with mDNS, inside private namespaces ---------------------------------


@pytest.mark.netns
def test_task_by_peer_id_over_mdns_to_eof_js_server(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    """`p2pnode send-task <PEERID> hello` finds an eof-style js server with mDNS and gets
    its answer. Both processes run in namespaces the `hosts` fixture made (multicast
    never reaches a real interface)."""
    node = require_js_peer()
    a, b = hosts
    js = Process(a.argv([node, str(PEER_SCRIPT), "listen", "--mdns", "--task-style", "eof"]),
                 cli_env)  # fmt: skip
    try:
        js_peer = js.event("listening")["peer_id"]
        argv = p2pnode(b, "send-task", js_peer, "hello", "--json", "--ephemeral", "--no-cache",
                       "--timeout", "5")  # fmt: skip
        result = subprocess.run(argv, capture_output=True, env=cli_env, timeout=ANSWER_WITHIN + 20)
        lines = result.stdout.decode().splitlines()
        assert result.returncode == 0, (
            f"send-task by PeerId exited {result.returncode}: {result.stderr.decode()[-2000:]}; "
            f"js: {js_report(js)}"
        )
        (answer,) = [json.loads(line) for line in lines if line.strip()]
        assert answer["output"] == "hello"
        assert answer["timings"]["resolved_by"] == "mdns"
        served = js.event("task-served", timeout=5)
        assert served["style"] == "eof" and served["error"] is None, served
    finally:
        js.stop()


def js_report(js: Process) -> Any:
    """The js peer's `task-error` event, if it printed one soon (for failure messages)."""
    try:
        return js.event("task-error", timeout=3)
    except AssertionError as exc:
        return str(exc)
