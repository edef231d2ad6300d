"""Private network namespaces as stand-in "hosts", for the demo and the tests.

Multicast (mDNS) must never reach a real interface while we demo or test: each host
here is a network namespace; two are joined by a veth pair, with the multicast
range routed over it. Needs root (or ``unshare -rn``) and iproute2's ``ip``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count
from typing import Any

_serial = count()


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace: its name and its address on the veth link."""

    name: str
    ip: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *command]


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(argv, check=True, capture_output=True, text=True)


def namespaces_unavailable() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"p2pprobe{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def loopback_is_up() -> bool:
    """True when this network namespace's loopback interface is up.

    Asked with ``ip``: /sys/class/net may still show the namespace it was mounted in.
    """
    if shutil.which("ip") is None:
        return True  # nothing to tell with: assume the usual
    shown = subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True, text=True)
    flags = shown.stdout.partition("<")[2].partition(">")[0].split(",")
    return shown.returncode != 0 or "UP" in flags


def bring_loopback_up() -> str | None:
    """Bring ``lo`` up (a fresh namespace, e.g. ``unshare -rn``, starts with it down);
    None when it is up, else why it could not be."""
    if loopback_is_up():
        return None
    result = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if result.returncode != 0 or not loopback_is_up():
        return f"loopback is down and `ip link set lo up` failed: {result.stderr.strip()}"
    return None


@contextmanager
def two_hosts(subnet: str = "10.213") -> Iterator[tuple[Host, Host]]:
    """Two namespaces joined by a veth pair (``<subnet>.N.1`` and ``.2``), deleted afterwards."""
    serial = next(_serial)
    tag = f"{os.getpid() % 100000}x{serial}"
    third = serial % 250 + 1
    hosts = (Host(f"p2pa{tag}", f"{subnet}.{third}.1"), Host(f"p2pb{tag}", f"{subnet}.{third}.2"))
    devices = (f"va{tag}", f"vb{tag}")
    created: list[str] = []
    try:
        for host in hosts:
            _ip("netns", "add", host.name)
            created.append(host.name)
        _ip("link", "add", devices[0], "netns", hosts[0].name, "type", "veth",
            "peer", "name", devices[1], "netns", hosts[1].name)  # fmt: skip
        for host, device in zip(hosts, devices, strict=True):
            _ip("addr", "add", f"{host.ip}/24", "dev", device, netns=host.name)
            _ip("link", "set", device, "up", "multicast", "on", netns=host.name)
            _ip("link", "set", "lo", "up", netns=host.name)
            _ip("route", "add", "224.0.0.0/4", "dev", device, netns=host.name)
        yield hosts
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class Process:
    """A subprocess printing JSON lines (read with :meth:`event`), stopped by its PID."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE, env=env
        )
        self._buffer = b""
        self.seen: deque[dict[str, Any]] = deque(maxlen=1000)  # every event read, in order

    def event(self, name: str, /, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """The next JSON line with ``"event": name`` (and the given fields)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                event = json.loads(line)
                self.seen.append(event)
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
