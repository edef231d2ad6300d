"""``serve --metrics HOST:PORT``: Prometheus metrics of a running node.

The node keeps plain counters on its event loop (tasks by kind and outcome, a task
latency histogram; connections count their bytes); nothing is computed per event for
Prometheus. A scrape, served by ``prometheus_client``'s HTTP thread, takes one snapshot
on the event loop (so no dict changes under it) and turns it into metric families.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from p2pnode.errors import LocalProtocolError

if TYPE_CHECKING:
    from p2pnode.node import Node
    from p2pnode.protocols.task.server import TaskLogRecord

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
SCRAPE_TIMEOUT = 2.0  # seconds a scrape waits for the event loop's snapshot


class TaskStats:
    """Counts of finished tasks and their latencies (the handler's time, in ms)."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (kind, outcome) -> tasks
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)  # the last one: above all
        self.latency_sum_ms = 0
        self.count = 0

    def record(self, record: TaskLogRecord) -> None:
        self.outcomes[(record.kind or "?", record.outcome)] += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_MS, record.latency_ms)] += 1
        self.latency_sum_ms += record.latency_ms
        self.count += 1


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) of the metrics endpoint; port 0: any."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise LocalProtocolError(f"--metrics {text!r}: give HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class NodeCollector:
    """A ``prometheus_client`` collector reading a node, its tasks and its output."""

    def __init__(
        self,
        node: Node,
        tasks: TaskStats,
        dropped_lines: Callable[[], int],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.node, self.tasks, self.dropped_lines, self.loop = node, tasks, dropped_lines, loop

    def snapshot(self) -> dict[str, Any]:
        """Everything a scrape reports, read on the event loop."""
        conns: Counter[tuple[str, str]] = Counter()
        streams = 0
        for conn in self.node.connections():
            direction = "outbound" if conn.is_initiator else "inbound"
            conns[(direction, conn.muxer_protocol)] += 1
            streams += conn.stream_count
        sent, received = self.node.traffic()
        tasks = self.tasks
        return {
            "connections": dict(conns),
            "streams": streams,
            "bytes": {"in": received, "out": sent},
            "refusals": dict(self.node.refusals.counts),
            "outcomes": dict(tasks.outcomes),
            "buckets": list(tasks.buckets),
            "latency_sum_s": tasks.latency_sum_ms / 1000,
            "tasks": tasks.count,
            "dropped": self.dropped_lines(),
        }

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        async def take() -> dict[str, Any]:
            return self.snapshot()

        data = asyncio.run_coroutine_threadsafe(take(), self.loop).result(SCRAPE_TIMEOUT)
        conns = GaugeMetricFamily(
            "p2pnode_connections", "Open connections.", labels=["direction", "muxer"]
        )
        for (direction, muxer), count in sorted(data["connections"].items()):
            conns.add_metric([direction, muxer], count)
        yield conns
        yield GaugeMetricFamily("p2pnode_streams", "Open streams.", value=data["streams"])
        traffic = CounterMetricFamily(
            "p2pnode_bytes", "Bytes on the wire (after encryption).", labels=["direction"]
        )
        for direction in ("in", "out"):
            traffic.add_metric([direction], data["bytes"][direction])
        yield traffic
        tasks = CounterMetricFamily(
            "p2pnode_tasks", "Tasks answered, by kind and outcome.", labels=["kind", "outcome"]
        )
        for (kind, outcome), count in sorted(data["outcomes"].items()):
            tasks.add_metric([kind, outcome], count)
        yield tasks
        cumulative, buckets = 0, []
        for bound, count in zip(
            [*(str(b / 1000) for b in LATENCY_BUCKETS_MS), "+Inf"], data["buckets"], strict=True
        ):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "p2pnode_task_seconds",
            "How long task handlers ran.",
            buckets=buckets,
            sum_value=data["latency_sum_s"],
        )
        refusals = CounterMetricFamily(
            "p2pnode_limit_refusals", "Refusals by resource limit.", labels=["limit"]
        )
        for limit, count in sorted(data["refusals"].items()):
            refusals.add_metric([limit], count)
        yield refusals
        yield CounterMetricFamily(
            "p2pnode_output_dropped_lines",
            "Output lines dropped because stdout or stderr was not read fast enough.",
            value=data["dropped"],
        )


def start_metrics_server(listen: str, collector: NodeCollector) -> tuple[str, int]:
    """Serve ``/metrics`` on ``listen`` (a daemon thread); the address it listens on."""
    try:
        from prometheus_client import start_http_server
        from prometheus_client.registry import CollectorRegistry
    except ImportError:
        raise LocalProtocolError(
            "--metrics needs prometheus-client: pip install 'prometheus-client>=0.20'"
        ) from None
    host, port = parse_listen(listen)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise LocalProtocolError(f"--metrics {listen}: cannot listen there: {exc}") from None
    address = server.server_address
    return str(address[0]), int(address[1])
