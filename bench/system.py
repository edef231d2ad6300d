"""Figures measured on whole p2pnode processes: start-up, memory, CPU, discovery."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-m", "p2pnode", "serve", "--ephemeral", "--json"]
_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def process_cpu_ns(pid: int) -> int:
    """CPU nanoseconds a running process (all its threads) has used, as the scheduler counts.

    Linux names another process's CPU clock ``(~pid << 3) | 2`` (a process-wide clock of
    the scheduler's runtime): far finer than /proc's clock ticks, fine for one dial.
    """
    return time.clock_gettime_ns(((~pid) << 3) | 2)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def python_speed_ms() -> float:
    """Milliseconds a fixed pure-Python workload takes (best of 5): this run's CPU speed.

    Shared VMs change speed from hour to hour; this figure lets two reports be compared.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return best * 1000


def crypto_speed_us() -> float:
    """Microseconds one Ed25519 verification takes (median of 500): the crypto's speed.

    The handshake's cost follows this, not :func:`python_speed_ms`: on a loaded host the
    curve arithmetic slows 2-3x while a pure-Python loop slows 1.2x.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    message = bytes(64)
    signature, public = key.sign(message), key.public_key()
    times = []
    for _ in range(500):
        started = time.perf_counter()
        public.verify(signature, message)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "not installed"


def _env(home: str) -> dict[str, str]:
    return dict(os.environ, XDG_CONFIG_HOME=f"{home}/config", XDG_CACHE_HOME=f"{home}/cache")


def _first_line(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The first line a process wrote to ``path`` (its stdout), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = path.read_text()
        if "\n" in text:
            return text.split("\n", 1)[0]
        time.sleep(0.0005)
    raise RuntimeError("p2pnode serve did not start")


def startup_and_memory(runs: int, idle_connections: int) -> dict[str, Any]:
    starts, idle = [], []
    with tempfile.TemporaryDirectory() as home:
        env = _env(home)
        for run in range(runs):
            # stdout goes to a file: serve logs every connection, and an unread pipe would
            # fill up and stall it.
            log = Path(home) / f"serve-{run}.log"
            started = time.perf_counter()
            with log.open("wb") as stdout:
                proc = subprocess.Popen(
                    [*SERVE, "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0",
                     "--limit", "max_inbound_connections_per_ip=5000"],
                    stdout=stdout, env=env, cwd=ROOT,
                )  # fmt: skip
            listening = json.loads(_first_line(log, proc))
            starts.append((time.perf_counter() - started) * 1000)
            idle.append(rss_kib(proc.pid))
            if run < runs - 1:
                proc.terminate()
                proc.wait()
        addr = listening["addrs"][0]
        before = rss_kib(proc.pid)
        holder = subprocess.Popen(
            [sys.executable, "-m", "bench.idle_conns", addr, str(idle_connections)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        assert holder.stdout is not None and holder.stdin is not None
        ready = holder.stdout.readline().strip() == "ready"
        after = rss_kib(proc.pid)
        holder.stdin.close()
        holder.wait(60)
        proc.terminate()
        proc.wait()
    return {
        "startup_ms": {"p50": statistics.median(starts), "samples": starts},
        "idle_rss_mb": statistics.median(idle) / 1024,
        "idle_connections": idle_connections if ready else 0,
        "rss_per_idle_connection_kb": (after - before) / idle_connections if ready else None,
    }


def discovery(runs: int) -> dict[str, Any]:
    """In two private namespaces: how fast a running peer sees a new node, and how fast a
    fresh ``send-task <peer-id>`` process resolves a running one."""
    from p2pnode.demo.netns import namespaces_unavailable, two_hosts

    reason = namespaces_unavailable()
    if reason is not None:
        return {"skipped": reason}
    seen_after_start, seen_after_listening, resolve = [], [], []
    with tempfile.TemporaryDirectory() as home, two_hosts(subnet="10.214") as (a, b):
        env = _env(home)
        p2p = [sys.executable, "-m", "p2pnode"]
        watcher = subprocess.Popen(
            b.argv([*p2p, "peers", "--watch", "--json", "--timeout", "600"]),
            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        assert watcher.stdout is not None
        watcher.stdout.readline()  # ready
        for _ in range(runs):
            spawned = time.time()
            server = subprocess.Popen(
                a.argv(SERVE), stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
            )
            assert server.stdout is not None
            listening = json.loads(server.stdout.readline())
            listened = time.time()
            while True:
                event = json.loads(watcher.stdout.readline())
                if event["event"] == "discovered" and event["peer_id"] == listening["peer_id"]:
                    break
            seen_after_start.append((event["at"] - spawned) * 1000)
            seen_after_listening.append((event["at"] - listened) * 1000)
            time.sleep(1.1)  # RFC 6762: a record is multicast at most once a second
            result = subprocess.run(
                b.argv([*p2p, "send-task", listening["peer_id"], "x", "--json",
                        "--ephemeral", "--no-cache"]),
                capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
            )  # fmt: skip
            if result.returncode == 0:
                resolve.append(json.loads(result.stdout)["timings"]["discovery_ms"])
            server.terminate()
            server.wait()
        watcher.terminate()
        watcher.wait()
    return {
        "seen_after_process_start_ms": {"p50": statistics.median(seen_after_start)},
        "seen_after_listening_ms": {"p50": statistics.median(seen_after_listening)},
        "fresh_process_resolve_ms": {
            "p50": statistics.median(resolve) if resolve else None,
            "samples": resolve,
        },
        "runs": runs,
    }


def p2pnode_system_figures(quick: bool) -> dict[str, Any]:
    return {
        **startup_and_memory(runs=3 if quick else 10, idle_connections=200 if quick else 1000),
        "discovery": discovery(runs=2 if quick else 8),
    }
