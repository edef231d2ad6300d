"""Turns a benchmark run into a Markdown table (with ratios and targets) and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

P2P = "p2pnode (asyncio)"
FLOOR = "floor (asyncio)"
PYLIBP2P = "py-libp2p 0.8.1"
JS = "js-libp2p 3.3.11"
GO = "go-libp2p 0.32.1 (p2pd)"

LATENCY_ROWS = [
    ("connect", "connection set-up (TCP+multistream+Noise+muxer)"),
    ("ping", "ping round trip"),
    ("task_64", "task round trip, 64 B"),
    ("task_1k", "task round trip, 1 KiB"),
    ("task_64k", "task round trip, 64 KiB"),
    ("task_1m", "task round trip, 1 MiB"),
]
RATIO_HEADER = " | p2pnode/floor | p2pnode/py-libp2p | p2pnode/js | p2pnode/go |"
OTHERS = (FLOOR, PYLIBP2P, JS, GO)
THROUGHPUT_ROWS = [
    ("throughput_1_up", "1 stream, client to server"),
    ("throughput_1_down", "1 stream, server to client"),
    ("throughput_16_up", "16 streams, client to server"),
    ("throughput_16_down", "16 streams, server to client"),
]
RATE_ROWS = [
    ("rate_1", "1 in flight, 1 connection"),
    ("rate_16", "16 in flight, 1 connection"),
    ("rate_64", "64 in flight, 1 connection"),
    ("rate_32conn", "32 connections, 2 in flight each"),
]


def _result(data: dict[str, Any], contender: str, key: str) -> dict[str, Any] | None:
    entry = data["contenders"].get(contender, {}).get("results", {}).get(key)
    return entry if entry and "error" not in entry else None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


# where a merged entry keeps one value per interleaved round (bench/run.py merge_rounds)
ROUND_FIELDS = {"p50_ms": "rounds_p50_ms", "mb_per_s": "rounds_mb_per_s",
                "tasks_per_s": "rounds_tasks_per_s"}  # fmt: skip


def round_ratios(data: dict[str, Any], key: str, field: str, other: str) -> list[float]:
    """p2pnode / ``other`` for ``field`` of figure ``key``, one ratio per round."""
    mine, theirs = _result(data, P2P, key), _result(data, other, key)
    if not mine or not theirs:
        return []
    per_round = ROUND_FIELDS.get(field, "")
    a, b = mine.get(per_round) or [mine[field]], theirs.get(per_round) or [theirs[field]]
    if len(a) != len(b):  # a contender lost a round: compare the pooled figures
        a, b = [mine[field]], [theirs[field]]
    return [x / y for x, y in zip(a, b, strict=True) if x and y]


def median_ratio(data: dict[str, Any], key: str, field: str, other: str) -> float | None:
    ratios = sorted(round_ratios(data, key, field, other))
    if not ratios:
        return None
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def ratio_cell(data: dict[str, Any], key: str, field: str, other: str) -> str:
    """The median per-round ratio, with its spread (min-max) when there were rounds."""
    ratios = round_ratios(data, key, field, other)
    middle = median_ratio(data, key, field, other)
    if middle is None:
        return "n/a"
    if len(ratios) < 2:
        return f"{middle:.2f}x"
    return f"{middle:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def targets(data: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, passed) for every target in the issue."""

    def p50(contender: str, key: str) -> float | None:
        entry = _result(data, contender, key)
        return entry["p50_ms"] if entry else None

    def value(contender: str, key: str, field: str) -> float | None:
        entry = _result(data, contender, key)
        return entry[field] if entry else None

    task_vs_floor = median_ratio(data, "task_64", "p50_ms", FLOOR)
    task_p99 = value(P2P, "task_64", "p99_ms")
    ping_vs_floor = median_ratio(data, "ping", "p50_ms", FLOOR)
    connect = p50(P2P, "connect")
    mbps = value(P2P, "throughput_1_up", "mb_per_s")
    mbps_down = value(P2P, "throughput_1_down", "mb_per_s")
    one_stream = min(x for x in (mbps, mbps_down) if x) if mbps or mbps_down else None
    ratios = [
        r
        for r in (
            median_ratio(data, "throughput_1_up", "mb_per_s", PYLIBP2P),
            median_ratio(data, "throughput_1_down", "mb_per_s", PYLIBP2P),
        )
        if r
    ]
    vs_py = min(ratios) if ratios else None  # the weaker direction counts
    rate64 = value(P2P, "rate_64", "tasks_per_s")
    system = data["p2pnode_system"]
    discovery = system.get("discovery", {}).get("fresh_process_resolve_ms", {}).get("p50")
    startup = system["startup_ms"]["p50"]
    per_conn = system.get("rss_per_idle_connection_kb")

    def within(measured: float | None, limit: float, at_least: bool = False) -> bool | None:
        if measured is None:
            return None
        return measured >= limit if at_least else measured <= limit

    machine = " (machine-dependent)"
    return [
        (
            "task 64 B p50 <= 4x floor (median per-round ratio)",
            ratio_cell(data, "task_64", "p50_ms", FLOOR),
            within(task_vs_floor, 4),
        ),
        ("task 64 B p99 <= 1 ms" + machine, f"{_fmt(task_p99)} ms", within(task_p99, 1)),
        (
            "ping p50 <= 1.6x floor (median per-round ratio)",
            ratio_cell(data, "ping", "p50_ms", FLOOR),
            within(ping_vs_floor, 1.6),
        ),
        ("connection set-up p50 <= 3 ms" + machine, f"{_fmt(connect)} ms", within(connect, 3)),
        (
            "one-stream throughput >= 1 GB/s (both ways)" + machine,
            f"{_fmt(one_stream)} MB/s",
            within(one_stream, 1000, at_least=True),
        ),
        (
            "one-stream throughput >= 7x py-libp2p (both ways)",
            f"{vs_py:.2f}x" if vs_py else "n/a",
            within(vs_py, 7, at_least=True),
        ),
        (
            ">= 10,000 tasks/s with 64 in flight" + machine,
            f"{_fmt(rate64)} /s",
            within(rate64, 10000, True),
        ),
        (
            "discovery: fresh process resolves a peer <= 100 ms p50" + machine,
            f"{_fmt(discovery)} ms",
            within(discovery, 100),
        ),
        ("start to listening <= 150 ms" + machine, f"{_fmt(startup)} ms", within(startup, 150)),
        (
            "idle RSS <= 40 MB",
            f"{_fmt(system['idle_rss_mb'])} MB",
            within(system["idle_rss_mb"], 40),
        ),
        ("<= 20 KB RSS per idle connection", f"{_fmt(per_conn)} KB", within(per_conn, 20)),
    ]


def _speed_line(machine: dict[str, Any]) -> list[str]:
    speed = machine.get("python_speed_ms")
    if not speed:
        return []
    return [
        "",
        f"CPU speed reference (a fixed pure-Python loop, lower is faster): "
        f"{speed[0]:.1f} ms at the start of the run, {speed[1]:.1f} ms at its end. "
        "Compare absolute figures of two runs only at a similar reference.",
    ]


def markdown(data: dict[str, Any]) -> str:
    names = [n for n, c in data["contenders"].items() if c["available"]]
    machine = data["machine"]
    lines = [
        f"# p2pnode benchmarks, {data['date']}" + (" (quick run)" if data["quick"] else ""),
        "",
        f"Machine: {machine['cores']} cores, Python {machine['python']}, Node {machine['node']}, "
        f"{machine['platform']}. Client and server in separate processes on loopback.",
        *_speed_line(machine),
        "",
        f"{data.get('rounds', 1)} interleaved rounds (every contender once per round). Ratios "
        "are p2pnode / other, taken per round: the median, with the lowest and highest round "
        "in brackets. Figures are pooled over the rounds (latency) or the median round.",
        "",
        f"{GO} is driven through its daemon: its server's ping is pure go, but connect, "
        "tasks and rates include control-socket round trips, and tasks and bulk transfers "
        "the daemon's unix-socket bridge and a Python handler (bench/contenders/go_bench.py).",
        "",
        "## Latency (ms, p50 / p99)",
        "",
        "| figure | " + " | ".join(names) + RATIO_HEADER,
        "|---" * (len(names) + 1 + len(OTHERS)) + "|",
    ]
    for key, label in LATENCY_ROWS:
        cells = []
        for name in names:
            entry = _result(data, name, key)
            cells.append(f"{_fmt(entry['p50_ms'])} / {_fmt(entry['p99_ms'])}" if entry else "n/a")
        ratios = [ratio_cell(data, key, "p50_ms", other) for other in OTHERS]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    for title, rows, field in (
        (
            f"Throughput (MB/s, median of {data.get('throughput_runs', 1)} transfers)",
            THROUGHPUT_ROWS,
            "mb_per_s",
        ),
        ("Tasks per second", RATE_ROWS, "tasks_per_s"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| figure | " + " | ".join(names) + RATIO_HEADER,
            "|---" * (len(names) + 1 + len(OTHERS)) + "|",
        ]
        for key, label in rows:
            cells = [_fmt((_result(data, n, key) or {}).get(field)) for n in names]
            ratios = [ratio_cell(data, key, field, other) for other in OTHERS]
            lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        "## CPU per task (µs of user+sys, 16 in flight)",
        "",
        "| contender | server | client |",
        "|---|---|---|",
    ]
    for name in names:
        entry = _result(data, name, "rate_16")
        if entry:
            cpu = entry["cpu_us_per_task"]
            lines.append(f"| {name} | {_fmt(cpu['server'])} | {_fmt(cpu['client'])} |")
    system = data["p2pnode_system"]
    discovery = system.get("discovery", {})
    lines += [
        "",
        "## p2pnode process figures",
        "",
        f"- process start to `listening`: p50 {_fmt(system['startup_ms']['p50'])} ms",
        f"- idle RSS: {_fmt(system['idle_rss_mb'])} MB; with {system['idle_connections']} idle "
        f"connections: +{_fmt(system['rss_per_idle_connection_kb'])} KB per connection",
    ]
    if "skipped" in discovery:
        lines.append(f"- discovery: skipped ({discovery['skipped']})")
    elif discovery:
        lines += [
            f"- discovery ({discovery['runs']} runs, two network namespaces): a running peer sees "
            f"a new node {_fmt(discovery['seen_after_process_start_ms']['p50'])} ms after its "
            f"process starts ({_fmt(discovery['seen_after_listening_ms']['p50'])} ms after it "
            "listens); a fresh `send-task <peer-id>` process resolves its peer in "
            f"{_fmt(discovery['fresh_process_resolve_ms']['p50'])} ms (p50)",
        ]
    if "task2" in data:
        from bench.task2 import report as task2_report

        lines += ["", "## Task protocol 2 against protocol 1 (bench/task2.py)", "",
                  task2_report(data["task2"]["summary"])]  # fmt: skip
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    for target, measured, passed in targets(data):
        mark = "n/a" if passed is None else ("PASS" if passed else "FAIL")
        lines.append(f"| {target} | {measured} | {mark} |")
    missing = [f"{n}: {c['why_not']}" for n, c in data["contenders"].items() if not c["available"]]
    if missing:
        lines += ["", "Not measured: " + "; ".join(missing)]
    lines.append(f"\nThe run took {data['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def plots(data: dict[str, Any], stem: Path) -> list[Path]:
    """A task-latency distribution and a throughput bar chart, every contender side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, c in data["contenders"].items() if c["available"]]
    latency = stem.with_name(stem.name + "-task-latency.png")
    fig, ax = plt.subplots(figsize=(9, 5))
    series = [(n, _result(data, n, "task_64")) for n in names]
    series = [(n, e["samples_ms"]) for n, e in series if e]
    ax.boxplot([s for _, s in series], whis=(1, 99), showfliers=False)
    ax.set_xticks(range(1, len(series) + 1), [n for n, _ in series], rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title("Task round trip, 64 B, new stream per task (box: p25-p75, whiskers: p1-p99)")
    fig.tight_layout()
    fig.savefig(latency, dpi=110)
    plt.close(fig)

    throughput = stem.with_name(stem.name + "-throughput.png")
    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [(_result(data, name, key) or {}).get("mb_per_s", 0) for key, _ in THROUGHPUT_ROWS]
        ax.bar([x + i * width for x in range(len(THROUGHPUT_ROWS))], values, width, label=name)
    ax.set_xticks(
        [x + width * (len(names) - 1) / 2 for x in range(len(THROUGHPUT_ROWS))],
        [label for _, label in THROUGHPUT_ROWS],
    )
    ax.set_ylabel("MB/s")
    ax.set_title("Throughput on one connection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(throughput, dpi=110)
    plt.close(fig)
    return [latency, throughput]
