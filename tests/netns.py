"""pytest glue for tests that need private network namespaces (all mDNS tests)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest

from p2pnode.demo.netns import Host, namespaces_unavailable


def require_netns() -> None:
    """Skip, or fail under P2PNODE_REQUIRE_NETNS=1, when namespaces cannot be made."""
    reason = namespaces_unavailable()
    if reason is not None:
        if os.environ.get("P2PNODE_REQUIRE_NETNS") == "1":
            pytest.fail(f"P2PNODE_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)


def p2pnode(host: Host, *args: str) -> list[str]:
    return host.argv([sys.executable, "-m", "p2pnode", *args])


class Process:
    """A subprocess printing JSON lines, stopped (by its PID) when the test ends."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, env=env
        )
        self._buffer = b""

    def event(self, name: str, /, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """The next JSON line with ``"event": name`` (and the given fields)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                event = json.loads(line)
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return dict(event)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name!r} event within {timeout}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"process ended before a {name!r} event: {stderr}")
                self._buffer += chunk

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_json(argv: Sequence[str], env: dict[str, str], timeout: float = 60) -> list[dict[str, Any]]:
    """Run to completion; return its JSON lines (AssertionError on a non-zero exit)."""
    result = subprocess.run(argv, capture_output=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{argv} exited {result.returncode}: {result.stderr.decode()}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
