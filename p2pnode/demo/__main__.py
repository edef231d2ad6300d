"""``make demo``: two "hosts" on one machine; one finds the other with mDNS and sends it a task.

The hosts are private network namespaces joined by a veth pair, so multicast never
reaches a real interface. Without the rights to make namespaces, the same demo runs
over loopback with direct addresses (no mDNS), and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from p2pnode.demo.netns import Host, bring_loopback_up, namespaces_unavailable, two_hosts


def say(text: str) -> None:
    print(text, flush=True)


def read_event(stream: IO[str], kind: str, timeout: float = 20.0) -> dict[str, Any]:
    """The next JSON line of ``kind`` from a p2pnode process (SystemExit if it never comes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        event: dict[str, Any] = json.loads(line)
        if event.get("event") == kind:
            return event
    raise SystemExit(f"demo: the server did not print a {kind!r} event")


def p2pnode_argv(host: Host | None, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "p2pnode", *args]
    return argv if host is None else host.argv(argv)


def run_demo(server_ns: Host | None, client_ns: Host | None, env: dict[str, str]) -> None:
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
        reason = namespaces_unavailable()
        if reason is None:
            say("p2pnode demo: two hosts in private network namespaces joined by a veth pair\n")
            with two_hosts() as (server_host, client_host):
                run_demo(server_host, client_host, env)
        else:
            say(f"p2pnode demo: network namespaces are not available ({reason});")
            say("running the same demo over loopback with direct addresses (no mDNS)\n")
            problem = bring_loopback_up()  # down in a fresh namespace (unshare -rn)
            if problem is not None:
                say(f"demo: cannot run over loopback: {problem}")
                raise SystemExit(1)
            run_demo(None, None, env)


if __name__ == "__main__":
    main()
