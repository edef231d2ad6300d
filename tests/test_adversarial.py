"""The adversarial suite: one attacking peer at a time against ``p2pnode serve``.

Each test starts ``serve`` (through tests/adv_server.py, which lets the test read the
node's peaks and refusal counts from outside) in a private network namespace that
this process enters for the module, connects a well-behaved in-process peer, and runs
one attack from tests/attackers.py in a process of its own, from another loopback
address (another "host"), at ``nice 10``: a real attacker brings its own CPU, and on a
small machine a flooding process would otherwise take the node's.

During the attack the good peer sends 100 pings and 100 64-byte tasks; every one must
succeed, with p99 <= 50 ms, and a fresh connection of its must work too. The node's
RSS may rise by at most 100 MiB over its value before the attack and must come back
to within 30 MiB of it once the attacker is gone. Each attack also checks the limit
it runs into (the README's figures): that it held, and that its refusals were counted.

The machine may run other jobs: a run whose p99 is over the limit only because the
node or the good peer waited for a CPU is repeated (see run_attack). The figures (the
good peer's p50/p99, the node's RSS before/peak/after, and what the attacker and the
node saw) go to /tmp/p2pnode-adversarial.json and are printed at the end (``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from p2pnode import Identity, Node
from p2pnode.net.limits import Limits
from p2pnode.protocols.task.client import send_task

from .netns import require_netns

pytestmark = pytest.mark.netns

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
ATTACKER_IP = "127.0.0.2"  # the attacker is another host; the good peer is 127.0.0.1
RSS_RISE_MAX = 100 * MiB
RSS_BACK_WITHIN = 30 * MiB
P99_MAX_MS = 50.0
GOOD_OPS = 100  # pings and as many tasks during each attack
RESULTS = Path("/tmp/p2pnode-adversarial.json")
# What the node is held to: the README's figures, spelled out rather than read from the
# code, so that a default loosened by mistake fails here instead of moving the goalposts.
LIMITS = Limits(
    max_inbound_handshakes=64,
    max_inbound_handshakes_per_ip=8,
    max_inbound_connections_per_ip=64,
    max_connections_per_peer=8,
    max_inbound_streams=256,
    max_negotiating_streams=128,
    max_inbound_streams_per_protocol=256,
    peer_receive_memory=64 * MiB,
    node_receive_memory=1024 * MiB,
)
MAX_UNSENT = 5 * MiB  # queued for a peer that does not read, before the node stops reading it
WRITE_BUFFER_HIGH = 1 * MiB  # unsent bytes before writers wait
INITIAL_WINDOW = 256 * 1024  # yamux's first window per stream
CONNECTION_WINDOW = 32 * MiB  # yamux window granted beyond the first ones, per connection
ANSWER_MEMORY_PER_PEER = 32 * MiB  # task answers not yet taken by one peer

FIGURES: list[dict[str, Any]] = []

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    """This process (so the in-process good peer, the node and the attackers it starts)
    in a private network namespace with only loopback, for the whole module."""
    require_netns()
    name = f"p2padv{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, capture_output=True)  # fmt: skip
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield name
        finally:
            _setns(home)
            _report()
    finally:
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _report() -> None:
    if not FIGURES:
        return
    RESULTS.write_text(json.dumps(FIGURES, indent=1))
    print(f"\n{'attack':<18} {'run':>3} {'p50':>7} {'p99':>8} {'own p99':>8} "
          f"{'RSS before':>10} {'peak':>7} {'after':>7}   (good peer, ms; node, MiB)")  # fmt: skip
    for row in FIGURES:
        print(
            f"{row['attack']:<18} {row.get('attempt', 1):>3} {row['p50_ms']:>7.2f} "
            f"{row['p99_ms']:>8.2f} {row['p99_own_ms']:>8.2f} {row['rss_before_mib']:>10.1f} "
            f"{row['rss_peak_mib']:>7.1f} {row['rss_after_mib']:>7.1f}"
        )
    print(f"(all figures in {RESULTS}; own p99: less the time waiting for a CPU)")


def rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )


class Server:
    """``p2pnode serve`` under attack (via tests/adv_server.py), stopped by its PID."""

    def __init__(self, tmp_path: Path, *, stdout_pipe: bool = False) -> None:
        self.stats_path = tmp_path / "stats.json"
        self.stderr_path = tmp_path / "serve.stderr"
        self.stdout_path = tmp_path / "serve.stdout"
        argv = [sys.executable, "-m", "tests.adv_server", str(self.stats_path), "serve",
                "--ephemeral", "--json", "--no-mdns", "--dht", "off",
                "--listen", "/ip4/127.0.0.1/tcp/0",
                "--handler", "big=tests.adv_server:big_answer"]  # fmt: skip
        stdout: int | IO[bytes]
        stdout = subprocess.PIPE if stdout_pipe else self.stdout_path.open("wb")
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=_env(tmp_path),
                                         cwd=ROOT)  # fmt: skip
        if not stdout_pipe:
            stdout.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"serve did not start: {self.stderr_path.read_text()}")
            with contextlib.suppress(OSError, ValueError):
                self.seen = json.loads(self.stats_path.read_text())
                if self.seen["pid"] == self.proc.pid:
                    break
            time.sleep(0.02)
        self.addr: str = self.seen["addrs"][0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stats(self) -> dict[str, Any]:
        """Fresh counters from the node: refusals, peaks and current values."""
        seq = self.seen["seq"]
        self.proc.send_signal(signal.SIGUSR1)
        async with asyncio.timeout(5):
            while True:
                await asyncio.sleep(0.01)
                try:
                    stats = json.loads(self.stats_path.read_text())
                except (OSError, ValueError):
                    continue
                if stats["seq"] > seq:
                    self.seen = stats
                    return stats

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def server(namespace: str, tmp_path: Path) -> Iterator[Server]:
    node = Server(tmp_path)
    yield node
    node.stop()
    errors = node.stderr()
    assert "Traceback" not in errors, errors[-4000:]


class Attacker:
    """One attack from tests/attackers.py in its own process, from ATTACKER_IP."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.ready: dict[str, Any] = {}

    @classmethod
    async def start(cls, name: str, addr: str, env: dict[str, str]) -> Attacker:
        proc = await asyncio.create_subprocess_exec(
            "nice", "-n", "10", sys.executable, "-m", "tests.attackers", name, addr,
            "--source", ATTACKER_IP,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
        )  # fmt: skip
        attacker = cls(proc, name)
        try:
            attacker.ready = await attacker._line("ready", 30)
        except BaseException:
            attacker.kill()
            raise
        return attacker

    async def _line(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"attacker {self.name} ended before {event!r}")
                message = json.loads(line)
                if message.get("event") == event:
                    return dict(message)

    async def finish(self) -> dict[str, Any]:
        """Tell it to stop (close its stdin); what it reports; it has exited."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            report = await self._line("done", 20)
            async with asyncio.timeout(10):
                await self.proc.wait()
        finally:
            self.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
        return report

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@dataclass
class Figures:
    attack: str
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    p99_own_ms: float = 0.0  # less the time the node and the good peer waited for a CPU
    recovered_s: float = 0.0
    failures: list[str] = field(default_factory=list)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


class RssPeak:
    """The highest VmRSS of ``pid``, sampled every 50 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._task = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss(self.pid))
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss(self.pid))
        return self.peak


def cpu_wait(pid: int | str) -> int:
    """Nanoseconds the main thread of ``pid`` has spent runnable, waiting for a CPU."""
    with open(f"/proc/{pid}/schedstat") as schedstat:
        return int(schedstat.read().split()[1])


@dataclass
class Traffic:
    """What the good peer saw: latencies (ms) by kind, the same less the time the node
    and the good peer waited for a CPU meanwhile (other processes on this machine),
    and what failed."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"ping": [], "task": []})
    own: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def every(self) -> list[float]:
        return self.latencies["ping"] + self.latencies["task"]


async def good_traffic(client: Node, server: Server, count: int, spacing: float) -> Traffic:
    """``count`` pings and ``count`` 64-byte tasks, alternating."""
    seen = Traffic()
    payload = "g" * 64
    for i in range(count):
        for op in ("ping", "task"):
            waited = cpu_wait("self") + cpu_wait(server.pid)
            started = time.perf_counter()
            try:
                if op == "ping":
                    rtts = await asyncio.wait_for(client.ping(server.addr), 5)
                    assert len(rtts) == 1
                else:
                    result = await send_task(client, server.addr, payload, timeout=5)
                    assert result.output == payload
            except Exception as exc:  # counted: the test says which failed and why
                seen.failures.append(f"{op} {i}: {type(exc).__name__}: {exc}")
            else:
                latency = (time.perf_counter() - started) * 1000
                waited = cpu_wait("self") + cpu_wait(server.pid) - waited
                seen.latencies[op].append(latency)
                seen.own.append(max(0.0, latency - waited / 1e6))
            await asyncio.sleep(spacing)
    return seen


async def fresh_ping(addr: str) -> None:
    """A new peer (new connection, new identity) can still reach the node."""
    fresh = await Node.start(Identity.generate())
    try:
        assert len(await asyncio.wait_for(fresh.ping(addr), 5)) == 1
    finally:
        await fresh.stop()


async def rss_settled(pid: int) -> int:
    """The node's RSS once quiet: the median of five samples 20 ms apart."""
    samples = []
    for _ in range(5):
        samples.append(rss(pid))
        await asyncio.sleep(0.02)
    return sorted(samples)[2]


async def attack_once(
    server: Server, name: str, tmp_path: Path, spacing: float
) -> tuple[Figures, dict[str, Any], dict[str, Any], Traffic]:
    """Warm up, attack while the good peer works, let the attacker go, wait for the RSS;
    assert all but the good peer's latency."""
    figures = Figures(name)
    client = await Node.start(Identity.generate())
    try:
        warm = await good_traffic(client, server, 30, 0)
        assert not warm.failures, warm.failures
        await asyncio.sleep(0.2)
        before = await rss_settled(server.pid)
        sampler = RssPeak(server.pid)
        try:
            attacker = await Attacker.start(name, server.addr, _env(tmp_path))
            try:
                seen = await good_traffic(client, server, GOOD_OPS, spacing)
                await fresh_ping(server.addr)
                during = await server.stats()
                report = await attacker.finish()
            finally:
                attacker.kill()
        finally:
            peak = await sampler.stop()
        # the attacker is gone: the node must give back what it held for it
        started = time.monotonic()
        after = await rss_settled(server.pid)
        while after > before + RSS_BACK_WITHIN and time.monotonic() - started < 10:
            await asyncio.sleep(0.1)
            after = await rss_settled(server.pid)
        figures.recovered_s = round(time.monotonic() - started, 2)
        # and it still serves the good peer
        late = await good_traffic(client, server, 5, 0)
    finally:
        await client.stop()
    figures.failures = seen.failures + late.failures
    if seen.every:
        figures.p50_ms = round(percentile(seen.every, 0.50), 3)
        figures.p99_ms = round(percentile(seen.every, 0.99), 3)
        figures.p99_own_ms = round(percentile(seen.own, 0.99), 3)
    by_kind = {
        f"{op}_{stat}_ms": round(percentile(values, q), 3)
        for op, values in seen.latencies.items()
        if values
        for stat, q in (("p50", 0.5), ("p99", 0.99))
    }
    figures.rss_before_mib = round(before / MiB, 1)
    figures.rss_peak_mib = round(peak / MiB, 1)
    figures.rss_after_mib = round(after / MiB, 1)
    FIGURES.append({**asdict(figures), **by_kind, "attacker": report, "node_during": during})
    assert "error" not in report, report
    assert not figures.failures, figures.failures[:5]
    assert len(seen.every) == 2 * GOOD_OPS
    assert peak - before <= RSS_RISE_MAX, f"RSS rose {(peak - before) / MiB:.1f} MiB under {name}"
    assert after - before <= RSS_BACK_WITHIN, (
        f"RSS still {(after - before) / MiB:.1f} MiB above its pre-attack value after {name}"
    )
    assert server.proc.poll() is None, "the node died"
    return figures, report, during, seen


async def run_attack(
    server: Server, name: str, tmp_path: Path, *, spacing: float = 0.01
) -> tuple[Figures, dict[str, Any], dict[str, Any]]:
    """One attack (see attack_once), and the good peer's p99 within P99_MAX_MS.

    This machine runs other jobs too. When the p99 is over the limit only because the
    node or the good peer waited for a CPU (``p99_own_ms``, the same latencies less
    those waits, is within it), the attack is run again against the same node, at most
    twice; every run is in the figures. A node that is itself slow fails at once: its
    own time stays in ``p99_own_ms``.
    """
    for attempt in range(1, 4):
        figures, report, during, _ = await attack_once(server, name, tmp_path, spacing)
        FIGURES[-1]["attempt"] = attempt
        if figures.p99_ms <= P99_MAX_MS or figures.p99_own_ms > P99_MAX_MS:
            break
    busy = during["peak"].get("loop_busy_ms", 0)
    assert figures.p99_ms <= P99_MAX_MS, (
        f"good peer p99 {figures.p99_ms} ms under {name} in {attempt} runs (last: "
        f"{figures.p99_own_ms} ms less the waits for a CPU; the node's loop ran for up to "
        f"{busy} ms at once)"
    )
    return figures, report, during


def refused(stats: dict[str, Any], *limits: str) -> int:
    return sum(int(stats["refusals"].get(limit, 0)) for limit in limits)


# What one connection may make the node queue for a peer that does not read: MAX_UNSENT,
# plus what a single write can add past it (as in test_backpressure).
UNSENT_BOUND = MAX_UNSENT + 4 * WRITE_BUFFER_HIGH


# -- floods that never read ---------------------------------------------------------------


def assert_flood_held(during: dict[str, Any]) -> None:
    """A peer that reads nothing: what the node queued for it stayed bounded, and streams
    stayed within the limits (once the node's answers can no longer be sent, new streams
    stop at the negotiating limit; beyond the stream limit, yamux resets them)."""
    peak = during["peak"]
    assert peak["unsent_per_connection"] <= UNSENT_BOUND, during
    assert peak["negotiating_per_connection"] <= LIMITS.max_negotiating_streams, during
    assert peak["streams_per_connection"] <= LIMITS.max_inbound_streams, during


async def test_ping_flood_without_reading(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "ping_flood", tmp_path)
    assert report["streams"] >= 100, report  # 25 MiB of pings: more than sockets buffer
    assert_flood_held(during)
    # new streams were refused: beyond the negotiating limit, or once the windows of those
    # held used up the peer's receive memory, whichever came first
    assert refused(during, "max_negotiating_streams", "peer_receive_memory") >= 1, during
    assert during["peak"]["receive_memory_per_peer"] <= LIMITS.peer_receive_memory, during


async def test_ping_flood_over_8_connections(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "ping_flood_8_connections", tmp_path)
    assert report["connections"] == LIMITS.max_connections_per_peer, report
    assert report["streams"] >= 100, report
    peak = during["peak"]
    # queued output and receive windows are bounded per peer, over its 8 connections
    assert peak["unsent_per_peer"] <= UNSENT_BOUND + 8 * WRITE_BUFFER_HIGH, during
    assert peak["receive_memory_per_peer"] <= LIMITS.peer_receive_memory, during
    # it held the peer back: stopped reading its connections, or refused its streams
    held_back = peak["reads_paused"] + refused(during, "max_negotiating_streams",
                                               "peer_receive_memory")  # fmt: skip
    assert held_back >= 1, during


async def test_identify_flood_without_reading(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "identify_flood", tmp_path)
    assert report["requests"] >= 1000, report
    assert_flood_held(during)


# -- streams and connections held -----------------------------------------------------------


async def test_syn_flood_without_negotiation(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "syn_flood", tmp_path)
    # an ACK or a RST each (the RSTs of yamux's stream limit are not in node.refusals:
    # the muxer core sends them; the attacker's count is what shows them)
    assert report["answered"] == report["syns"] == 10_000, report
    # all but the negotiating streams the node allows were refused (RST)
    assert report["final_acked_not_reset"] <= LIMITS.max_negotiating_streams, report
    assert during["peak"]["negotiating_per_connection"] <= LIMITS.max_negotiating_streams
    assert during["peak"]["streams_per_connection"] <= LIMITS.max_inbound_streams, during
    # (or the windows of those held used up the peer's receive memory first)
    assert refused(during, "max_negotiating_streams", "peer_receive_memory") >= 1, during
    assert during["peak"]["receive_memory_per_peer"] <= LIMITS.peer_receive_memory, during


async def test_negotiated_idle_streams(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "idle_streams", tmp_path)
    assert report["opened"] == 5000 and report["settled"], report
    per_protocol = LIMITS.max_inbound_streams_per_protocol
    assert all(n <= per_protocol for n in report["alive"].values()), report
    assert report["reset"] >= 5000 - 3 * per_protocol, report
    assert during["peak"]["serving_per_peer_protocol"] <= per_protocol, during
    assert during["peak"]["streams_per_connection"] <= LIMITS.max_inbound_streams, during
    assert during["peak"]["connections_per_peer"] <= LIMITS.max_connections_per_peer, during
    # each stream holds its window in the peer's receive memory, which may run out first
    limits = ("max_inbound_streams_per_protocol", "peer_receive_memory")
    assert refused(during, *limits) >= 1, during
    assert during["peak"]["receive_memory_per_peer"] <= LIMITS.peer_receive_memory, during


async def test_window_fill_on_32_streams(server: Server, tmp_path: Path) -> None:
    _, report, _ = await run_attack(server, "window_fill", tmp_path)
    assert report.get("full") and not report["closed"], report
    # what the node let us send beyond what it echoed: the connection's window budget
    # plus each stream's first window
    held = report["sent"] - report["echoed"]
    bound = CONNECTION_WINDOW + 32 * (INITIAL_WINDOW + 64 * 1024)
    assert held <= bound, report


async def test_window_fill_over_8_connections(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "window_fill_8_connections", tmp_path)
    assert report["connections"] == LIMITS.max_connections_per_peer, report
    assert report.get("full"), report
    # however many connections: the peer's receive budget, and what was in flight
    held = report["sent"] - report["echoed"]
    assert held <= LIMITS.peer_receive_memory + 8 * 32 * 64 * 1024, report
    assert during["peak"]["receive_memory_per_peer"] <= LIMITS.peer_receive_memory, during


async def test_slow_reader_of_large_answers(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "slow_reader", tmp_path)
    assert report.get("other", 0) == 0 and report.get("reset", 0) == 0, report
    # the node held answers for the peer (two 8 MiB ones at least), within its share;
    # beyond it the peer gets busy (when its requests get through in time to be counted)
    assert 16 * MiB < during["peak"]["answer_memory"] <= ANSWER_MEMORY_PER_PEER, during


async def test_idle_connections_from_one_identity(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "idle_connections", tmp_path)
    assert report["kept"] <= LIMITS.max_connections_per_peer, report
    assert during["peak"]["connections_per_peer"] <= LIMITS.max_connections_per_peer, during
    attempts = report["attempts"]
    assert refused(during, "max_connections_per_peer", "max_inbound_handshakes_per_ip") >= (
        attempts - LIMITS.max_connections_per_peer
    ), (report, during)


async def test_connections_that_never_finish_the_handshake(server: Server, tmp_path: Path) -> None:
    _, report, during = await run_attack(server, "half_handshakes", tmp_path)
    per_ip = LIMITS.max_inbound_handshakes_per_ip
    assert report["opened"] == 300 and report["held"] <= per_ip, report
    assert refused(during, "max_inbound_handshakes_per_ip") >= 300 - per_ip, during


# -- malformed input ------------------------------------------------------------------------


async def test_oversized_frames_and_lines(server: Server, tmp_path: Path) -> None:
    _, report, _ = await run_attack(server, "oversized", tmp_path)
    assert report["rounds"] >= 1 and not report["unexpected"], report


async def test_random_bytes_after_a_valid_handshake(server: Server, tmp_path: Path) -> None:
    _, report, _ = await run_attack(server, "random_bytes", tmp_path)
    rounds, outcomes = report["rounds"], report["outcomes"]
    assert rounds >= 1, report
    assert outcomes.get("raw:closed") == rounds, report  # not Noise: connection closed
    assert outcomes.get("muxer:closed", 0) >= rounds * 0.9, report  # not yamux: closed
    assert outcomes.get("negotiation:reset") == rounds, report  # not multistream: reset
    assert outcomes.get("task:refused") == rounds, report  # not a request: refused


async def test_deep_json(server: Server, tmp_path: Path) -> None:
    _, report, _ = await run_attack(server, "deep_json", tmp_path)
    assert report["outcomes"] == {"bad_request": report["asked"]} and report["asked"] == 100


# -- output -----------------------------------------------------------------------------


def _drain(proc: subprocess.Popen[bytes], timeout: float) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines() if line.strip()]


async def test_stdout_pipe_never_read(namespace: str, tmp_path: Path) -> None:
    server = Server(tmp_path, stdout_pipe=True)  # a pipe nobody reads until the end
    try:
        _, report, _ = await run_attack(server, "output_flood", tmp_path)
        assert report["answered"] == report["asked"] == 4000, report
        server.proc.terminate()
        events = _drain(server.proc, 20)
        assert server.proc.wait(20) == 0
    finally:
        server.stop()
    dropped = sum(int(e["lines"]) for e in events if e["event"] == "output_dropped")
    assert dropped > 0, events[:5]  # the pipe was full: lines were dropped, not waited for
    assert events[-1]["event"] == "stopped"
    assert "Traceback" not in server.stderr()
