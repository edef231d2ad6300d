"""Run the js-libp2p test peer (tests/interop/js/peer.mjs) as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).parent / "js"
PEER_SCRIPT = JS_DIR / "peer.mjs"


def require_js_peer() -> str:
    """Path of node; skip (or fail under P2PNODE_REQUIRE_INTEROP=1) when the js peer is missing."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (JS_DIR / "node_modules" / "libp2p").is_dir():
        missing = f"js-libp2p is not installed: run `make js-peer` ({JS_DIR})"
    if missing:
        if os.environ.get("P2PNODE_REQUIRE_INTEROP") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    assert node is not None
    return node


class JsListener:
    """A running `peer.mjs listen` process."""

    def __init__(
        self, proc: asyncio.subprocess.Process, hello: dict[str, Any], stderr: Path | None = None
    ) -> None:
        self.proc = proc
        self.peer_id: str = hello["peer_id"]
        self.addr: str = hello["addrs"][0]
        self.events: list[dict[str, Any]] = []
        self.stderr_path = stderr

    def stderr(self) -> str:
        """What the js peer wrote to stderr so far (its handler errors, with stacks)."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    async def report(self, timeout: float = 2) -> str:
        """For failure messages: the events seen so far, one more if it comes soon, stderr."""
        with contextlib.suppress(AssertionError, TimeoutError):
            await self.next_event("never-printed", timeout)
        return f"js events: {self.events}; js stderr: {self.stderr()[-3000:]!r}"

    async def next_event(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        for event in self.events:
            if event.get("event") == kind:
                self.events.remove(event)
                return event
        async with asyncio.timeout(timeout):
            while True:
                assert self.proc.stdout is not None
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"js peer exited before printing a {kind!r} event")
                event = json.loads(line)
                if event.get("event") == kind:
                    return event
                self.events.append(event)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.stderr_path is not None:
            self.stderr_path.unlink(missing_ok=True)


async def start_js_listener(
    *args: str, netns: str | None = None, script: Path = PEER_SCRIPT
) -> JsListener:
    node = require_js_peer()
    argv = [node, str(script), "listen", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    fd, name = tempfile.mkstemp(prefix="js-peer-", suffix=".stderr")
    stderr = Path(name)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=fd
        )
    finally:
        os.close(fd)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        hello = json.loads(line)
    except BaseException:
        proc.kill()
        await proc.wait()
        stderr.unlink(missing_ok=True)
        raise
    assert hello["event"] == "listening", (hello, stderr.read_text(errors="replace"))
    return JsListener(proc, hello, stderr)


async def js_dial(addr: str, action: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Run `peer.mjs dial ADDR ACTION ARGS` and return its JSON result (fails on error)."""
    node = require_js_peer()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(PEER_SCRIPT),
        "dial",
        addr,
        action,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, f"js dial {action} failed: {lines} {stderr.decode()[-2000:]}"
    return lines[-1]
