"""Run the py-libp2p 0.8.1 test peer (tests/interop/py/peer.py) as a subprocess.

The peer runs in the py-libp2p venv that ``bench/contenders/install_pylibp2p.sh`` makes for
the benchmark (same pins: libp2p 0.8.1, trio 0.35.0, multiaddr 0.2.0), so the tests and the
benchmark measure one and the same installation.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from p2pnode.wire.identity import Identity, PeerId

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / "bench" / ".contenders" / "pylibp2p-venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"
# the pins the tests were written against (their xfail reasons name 0.8.1 behaviour): keep
# them equal to install_pylibp2p.sh, whose stamp file holds its pins
PINS = "libp2p==0.8.1 trio==0.35.0 multiaddr==0.2.0"
PEER_SCRIPT = Path(__file__).parent / "py" / "peer.py"
TIMEOUT = 30  # seconds: bounds every command and the start


def require_py_peer() -> Path:
    """The venv's python; skip (or fail under P2PNODE_REQUIRE_INTEROP=1) when it is missing."""
    missing = None
    if not PYTHON.exists():
        missing = f"py-libp2p is not installed: run `make py-peer` ({VENV})"
    elif not STAMP.exists() or STAMP.read_text().strip() != PINS:
        missing = f"py-libp2p in {VENV} is not installed with {PINS}: run `make py-peer`"
    if missing:
        if os.environ.get("P2PNODE_REQUIRE_INTEROP") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return PYTHON


def seeded_identity(seed: bytes) -> Identity:
    """The identity the py peer gets from ``--seed``: both sides derive one PeerId from it."""
    return Identity(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


class PeerCommandError(AssertionError):
    """The py peer answered a command with ok: false."""


class PyPeer:
    """A running ``peer.py``: send commands, await replies and events."""

    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any], stderr: Path):
        self.proc = proc
        self.peer_id = PeerId.from_string(hello["peer_id"])
        self.addr: str = hello["addrs"][0]
        self.stderr_path = stderr
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seen: list[dict[str, Any]] = []  # events already taken, for failure messages
        self._reader = asyncio.create_task(self._read())

    def stderr(self) -> str:
        """What the peer wrote to stderr (its tracebacks)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                message = json.loads(line)
                if "reply" in message:
                    future = self._replies.pop(message["reply"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    self._events.put_nowait(message)
        finally:
            gone = AssertionError(f"the py peer exited; stderr: {self.stderr()[-3000:]}")
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(gone)

    async def command(self, cmd: str, timeout: float = TIMEOUT, **args: Any) -> dict[str, Any]:
        """Run ``cmd`` and return its reply; raise PeerCommandError if it failed."""
        reply = await self.try_command(cmd, timeout, **args)
        if not reply["ok"]:
            raise PeerCommandError(f"py peer: {cmd} failed: {reply['error']}; {self.stderr()}")
        return reply

    async def try_command(self, cmd: str, timeout: float = TIMEOUT, **args: Any) -> dict[str, Any]:
        """Run ``cmd`` and return its reply, ok or not."""
        assert self.proc.stdin is not None
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(
                f"py peer: no reply to {cmd} in {timeout}s: {self.stderr()}"
            ) from None

    async def next_event(
        self, kind: str, timeout: float = TIMEOUT, **match: object
    ) -> dict[str, Any]:
        """The next event of ``kind`` whose fields equal ``match`` (e.g. ``peer=...``: one peer
        process may serve many tests). Events passed over are dropped, and kept in ``seen``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event = await self._events.get()
                    self.seen.append(event)
                    if event.get("event") == kind and all(
                        event.get(k) == v for k, v in match.items()
                    ):
                        return event
        except TimeoutError:
            raise AssertionError(
                f"py peer: no {kind} event {match} in {timeout}s; events: {self.seen[-20:]}; "
                f"stderr: {self.stderr()[-3000:]}"
            ) from None

    async def stop(self) -> int | None:
        """Ask it to shut down; kill it if it does not within the timeout."""
        if self.proc.returncode is None:
            with contextlib.suppress(AssertionError, ConnectionError):
                await self.try_command("shutdown", timeout=5)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self.stderr_path.unlink(missing_ok=True)
        return self.proc.returncode


async def start_py_peer(*args: str, seed: bytes | None = None) -> PyPeer:
    """Start ``peer.py ARGS`` and wait for it to listen."""
    python = require_py_peer()
    argv = [str(python), str(PEER_SCRIPT), *args]
    if seed is not None:
        argv += ["--seed", seed.hex()]
    fd, name = tempfile.mkstemp(prefix="py-peer-", suffix=".stderr")
    stderr = Path(name)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=fd,
            limit=16 << 20,  # a reply line can be long
        )
    finally:
        os.close(fd)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            line = await proc.stdout.readline()
        hello = json.loads(line) if line else {}
    except BaseException:
        proc.kill()
        await proc.wait()
        stderr.unlink(missing_ok=True)
        raise
    if hello.get("event") != "ready":
        proc.kill()
        await proc.wait()
        text = stderr.read_text(errors="replace")
        stderr.unlink(missing_ok=True)
        raise AssertionError(f"the py peer did not start: {line!r} {text[-3000:]}")
    return PyPeer(proc, hello, stderr)
