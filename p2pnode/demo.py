"""``make demo``: two "hosts" on one machine; one finds the other with mDNS and sends it a task.

The hosts are private network namespaces joined by a veth pair, so multicast never
reaches a real interface. Without the rights to make namespaces, the same demo runs
over loopback with direct addresses (no mDNS), and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

SERVER_NS_ADDR = "10.213.0.1"
CLIENT_NS_ADDR = "10.213.0.2"


def say(text: str) -> None:
    print(text, flush=True)


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(argv, check=True, capture_output=True, text=True)


@contextmanager
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair, with multicast routed over it."""
    suffix = str(os.getpid())
    server_ns, client_ns = f"p2pdemo-srv-{suffix}", f"p2pdemo-cli-{suffix}"
    created: list[str] = []
    try:
        for ns in (server_ns, client_ns):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("link", "add", "p2pd0", "netns", server_ns, "type", "veth",
            "peer", "name", "p2pd1", "netns", client_ns)  # fmt: skip
        for ns, dev, addr in (
            (server_ns, "p2pd0", SERVER_NS_ADDR),
            (client_ns, "p2pd1", CLIENT_NS_ADDR),
        ):
            _ip("addr", "add", f"{addr}/24", "dev", dev, netns=ns)
            _ip("link", "set", dev, "up", "multicast", "on", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            _ip("route", "add", "224.0.0.0/4", "dev", dev, netns=ns)
        yield server_ns, client_ns
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def namespaces_available() -> str | None:
    """None when we can make network namespaces, else the reason we cannot."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"p2pdemo-probe-{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def p2pnode_argv(netns: str | None, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "p2pnode.cli", *args]
    return argv if netns is None else ["ip", "netns", "exec", netns, *argv]


def read_event(stream: IO[str], kind: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == kind:
            return event
    raise SystemExit(f"demo: the server did not print a {kind!r} event")


def run_demo(server_ns: str | None, client_ns: str | None, env: dict[str, str]) -> None:
    serve_args = ["serve", "--ephemeral", "--json", "--exec", "upper=tr a-z A-Z"]
    if server_ns is None:
        serve_args += ["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]
    t_start = time.perf_counter()
    server = subprocess.Popen(
        p2pnode_argv(server_ns, *serve_args), stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        listening = read_event(server.stdout, "listening")
        startup_ms = (time.perf_counter() - t_start) * 1000
        peer_id = listening["peer_id"]
        say(f"server  {peer_id}")
        say(f"        listening on {', '.join(listening['addrs'])}")
        say(f"        process start to listening: {startup_ms:.0f} ms")
        target = peer_id if server_ns is not None else listening["addrs"][0]
        how = "by PeerId alone, found with mDNS" if server_ns is not None else "by direct address"
        say(f"client  sends a task of kind 'upper' to the server {how}")
        t_client = time.perf_counter()
        result = subprocess.run(
            p2pnode_argv(client_ns, "send-task", target, "hello from the other host",
                         "--kind", "upper", "--json", "--ephemeral", "--no-cache"),
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        client_ms = (time.perf_counter() - t_client) * 1000
        if result.returncode != 0:
            raise SystemExit(f"demo: send-task failed ({result.returncode}): {result.stderr}")
        answer = json.loads(result.stdout.splitlines()[-1])
        timings = answer["timings"]
        say(f"        output: {answer['output']!r}")
        say("")
        say("step                                 time")
        if "discovery_ms" in timings:
            say(f"discovery (mDNS query to answer)   {timings['discovery_ms']:8.2f} ms")
        say(f"connection (TCP+Noise+muxer)       {timings['connect_ms']:8.2f} ms")
        say(f"task round trip                    {timings['round_trip_ms']:8.2f} ms")
        say(f"  of which the handler ran         {answer['latency_ms']:8.2f} ms")
        say(f"send-task in total (in-process)    {timings['total_ms']:8.2f} ms")
        say(f"send-task process, start to exit   {client_ms:8.2f} ms")
        task_log = read_event(server.stdout, "task")
        say(f"\nserver log: {json.dumps(task_log)}")
    finally:
        server.terminate()
        code = server.wait(timeout=30)
        say(f"server stopped on SIGTERM with exit code {code}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="p2pnode-demo-") as home:
        env = dict(os.environ, XDG_CONFIG_HOME=str(Path(home) / "config"),
                   XDG_CACHE_HOME=str(Path(home) / "cache"))  # fmt: skip
        reason = namespaces_available()
        if reason is None:
            say("p2pnode demo: two hosts in private network namespaces joined by a veth pair\n")
            with two_hosts() as (server_ns, client_ns):
                run_demo(server_ns, client_ns, env)
        else:
            say(f"p2pnode demo: network namespaces are not available ({reason});")
            say("running the same demo over loopback with direct addresses (no mDNS)\n")
            run_demo(None, None, env)


if __name__ == "__main__":
    main()
