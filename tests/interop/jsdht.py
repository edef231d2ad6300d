"""Run the js-libp2p DHT test peer (tests/interop/js/dht-peer.mjs) as a subprocess.

The peer reads JSON commands on stdin and answers each with a ``result`` event on
stdout; other events (connections, identify, routing table changes) come in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from .jspeer import JS_DIR, JsListener, require_js_peer

DHT_SCRIPT = JS_DIR / "dht-peer.mjs"


def require_js_dht() -> str:
    """Path of node; skip (or fail under P2PNODE_REQUIRE_INTEROP=1) without js kad-dht."""
    node = require_js_peer()
    if not (JS_DIR / "node_modules" / "@libp2p" / "kad-dht").is_dir():
        missing = f"@libp2p/kad-dht is not installed: run `make js-peer` ({JS_DIR})"
        if os.environ.get("P2PNODE_REQUIRE_INTEROP") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return node


class JsDhtPeer(JsListener):
    """A running ``dht-peer.mjs``: commands in, results and events out."""

    def __init__(
        self, proc: asyncio.subprocess.Process, hello: dict[str, Any], stderr: Path
    ) -> None:
        super().__init__(proc, hello, stderr)
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, cmd: str, **args: Any) -> int:
        """Write one command without waiting for its result; its id."""
        assert self.proc.stdin is not None
        request_id = next(self._ids)
        line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
        self.proc.stdin.write(line.encode())
        return request_id

    async def _next_line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"js DHT peer exited; stderr: {self.stderr()[-3000:]!r}")
        event: dict[str, Any] = json.loads(line)
        return event

    async def event_where(self, kind: str, timeout: float = 20, **fields: Any) -> dict[str, Any]:
        """The first ``kind`` event (seen before or to come) whose fields have these values."""

        def matches(event: dict[str, Any]) -> bool:
            return event.get("event") == kind and all(event.get(k) == v for k, v in fields.items())

        for event in self.events:
            if matches(event):
                self.events.remove(event)
                return event
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._next_line()
                    if matches(event):
                        return event
                    self.events.append(event)
        except TimeoutError:
            raise AssertionError(
                f"no {kind} event with {fields} within {timeout}s; events: {self.events}; "
                f"stderr: {self.stderr()[-3000:]!r}"
            ) from None

    async def command(self, cmd: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        """Run a command and return its result; fails when the js side reports an error."""
        request_id = self.send(cmd, **args)
        result = await self.event_where("result", timeout, id=request_id)
        assert result["ok"], (
            f"js {cmd} failed: {result['error']}; stderr: {self.stderr()[-3000:]!r}"
        )
        return result

    async def kill(self) -> None:
        """SIGKILL this process (by its own PID): connections drop without any goodbye."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def start_js_dht(listen: str | None = None, prefix: Sequence[str] = ()) -> JsDhtPeer:
    """Start a js DHT server on 127.0.0.1 (or ``listen``) with an empty routing table.

    ``prefix`` wraps the command, e.g. ``ip netns exec NS`` to run it in a namespace.
    """
    node = require_js_dht()
    fd, name = tempfile.mkstemp(prefix="js-dht-", suffix=".stderr")
    stderr = Path(name)
    try:
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            node,
            str(DHT_SCRIPT),
            *(("--listen", listen) if listen is not None else ()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=fd,
        )
    finally:
        os.close(fd)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        hello = json.loads(line) if line else {"event": None}
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        stderr.unlink(missing_ok=True)
        raise
    if hello.get("event") != "listening":
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        text = stderr.read_text(errors="replace")
        stderr.unlink(missing_ok=True)
        raise AssertionError(f"js DHT peer did not start: {hello} {text[-3000:]}")
    return JsDhtPeer(proc, hello, stderr)
