"""``make bench`` / ``make bench-quick``: every contender, every figure, one run.

Servers and clients run as separate processes (bench/CONTRACT.md). Contenders are
measured in interleaved rounds (``--rounds``, default 3): A, B, C, A, B, C, ...; each
ratio is taken within a round and reported as the median with its spread. Results go to
``bench/results/<date>.json`` and ``.md`` plus two PNG plots.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import report, system

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PYLIBP2P = ROOT / "bench" / ".contenders" / "pylibp2p-venv" / "bin" / "python"


@dataclass
class Contender:
    """A program implementing bench/CONTRACT.md."""

    name: str
    argv: list[str]
    available: bool = True
    why_not: str = ""
    scale: float = 1.0  # fewer repetitions for a slow contender, to keep the run short
    results: dict[str, Any] = field(default_factory=dict)


def contenders() -> list[Contender]:
    p2pnode = [PY, "-m", "bench.contenders.p2pnode_bench"]
    floor = [PY, "-m", "bench.contenders.floor_bench"]
    found = [
        Contender("floor (asyncio)", floor),
        Contender("floor (uvloop)", [*floor, "--uvloop"]),
        Contender("p2pnode (asyncio)", p2pnode),
        Contender("p2pnode (uvloop)", [*p2pnode, "--uvloop"]),
    ]
    script = ROOT / "bench" / "contenders" / "pylibp2p_bench.py"
    # py-libp2p takes ~2 ms per task and ~15 ms per connection: a quarter of the repetitions
    module = [str(PYLIBP2P), "-m", "bench.contenders.pylibp2p_bench"]
    py = Contender("py-libp2p 0.8.1", module, scale=0.25)
    if not PYLIBP2P.exists() or not script.exists():
        py.available, py.why_not = False, "not installed (bench/contenders/install_pylibp2p.sh)"
    found.append(py)
    # go-libp2p through its p2pd daemon: ping is pure go on the server; tasks, bulk and
    # connect include the daemon's unix-socket bridge or control round trips (go_bench.py)
    go = Contender("go-libp2p 0.32.1 (p2pd)", [PY, "-m", "bench.contenders.go_bench"], scale=0.25)
    if not os.access(ROOT / "tests" / "interop" / "go" / "bin" / "p2pd", os.X_OK):
        go.available, go.why_not = False, "not installed (make go-peer)"
    found.append(go)
    js = Contender("js-libp2p 3.3.11", ["node", str(ROOT / "bench" / "js" / "bench.mjs")])
    if shutil.which("node") is None or not (ROOT / "bench/js/node_modules/libp2p").is_dir():
        js.available, js.why_not = False, "not installed (cd bench/js && npm install)"
    found.append(js)
    return found


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Server:
    """A contender's server process, its address and its CPU time (from /proc)."""

    def __init__(self, contender: Contender) -> None:
        self.proc = subprocess.Popen(
            [*contender.argv, "server"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{contender.name} server did not start")
        self.addr: str = json.loads(line)["addr"]

    def cpu_seconds(self) -> float:
        return system.process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_client(contender: Contender, server: Server, *args: str) -> tuple[dict[str, Any], float]:
    """Run one measurement; return its result and the client's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [*contender.argv, "client", server.addr, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    except ValueError as exc:  # one figure lost, not the run
        raise RuntimeError(f"{' '.join(args)}: unreadable result line ({exc})") from None
    if result.returncode != 0 or not lines:
        message = lines[-1].get("message") if lines else result.stderr[-300:]
        message = message or f"exit status {result.returncode}, no output"
        raise RuntimeError(f"{' '.join(args)}: {message}")
    return lines[-1], cpu


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "min_ms": ordered[0],
    }


def plan(quick: bool, contender_scale: float = 1.0) -> list[tuple[str, list[str]]]:
    """(figure key, client arguments) for every measurement."""
    scale = (0.1 if quick else 1.0) * contender_scale

    def n(count: int) -> str:
        return str(max(10, int(count * scale)))

    big = str(32 << 20 if quick else 256 << 20)
    steps = [
        ("connect", ["connect", "--n", n(200)]),
        ("ping", ["ping", "--n", n(5000)]),
        ("task_64", ["task", "--n", n(3000), "--size", "64"]),
        ("task_1k", ["task", "--n", n(2000), "--size", "1024"]),
        ("task_64k", ["task", "--n", n(500), "--size", "65536"]),
        ("task_1m", ["task", "--n", n(50), "--size", "1048576"]),
        ("throughput_1_up", ["throughput", "--bytes", big, "--streams", "1", "--direction", "up"]),
        (
            "throughput_1_down",
            ["throughput", "--bytes", big, "--streams", "1", "--direction", "down"],
        ),
        (
            "throughput_16_up",
            ["throughput", "--bytes", big, "--streams", "16", "--direction", "up"],
        ),
        (
            "throughput_16_down",
            ["throughput", "--bytes", big, "--streams", "16", "--direction", "down"],
        ),
        ("rate_1", ["rate", "--n", n(5000), "--inflight", "1"]),
        ("rate_16", ["rate", "--n", n(20000), "--inflight", "16"]),
        ("rate_64", ["rate", "--n", n(20000), "--inflight", "64"]),
        ("rate_32conn", ["rate", "--n", n(20000), "--inflight", "2", "--connections", "32"]),
    ]
    if quick:  # the figures the targets and the CPU table need, fewer of them
        steps = [step for step in steps if step[0] in QUICK_FIGURES]
    return steps


def contender_plan(contender: Contender, quick: bool) -> list[tuple[str, list[str]]]:
    """The steps for one contender: a quick run measures the slow libp2p contenders only
    where the targets or the latency plot compare p2pnode with them."""
    steps = plan(quick, contender.scale)
    if quick and contender.name.startswith(("py-libp2p", "js-libp2p", "go-libp2p")):
        steps = [step for step in steps if step[0] in QUICK_FIGURES_OTHERS]
    return steps


QUICK_FIGURES_OTHERS = {"ping", "task_64", "throughput_1_up", "throughput_1_down"}
QUICK_FIGURES = {
    "connect",
    "ping",
    "task_64",
    "task_1m",
    "throughput_1_up",
    "throughput_1_down",
    "rate_16",
    "rate_64",
}


# One bulk transfer is at the mercy of the scheduler (a run on a shared 2-core VM can
# halve it): each throughput figure is the median of this many transfers (one when quick).
THROUGHPUT_RUNS = 3


def throughput_runs(quick: bool) -> int:
    return 1 if quick else THROUGHPUT_RUNS


def measure(contender: Contender, quick: bool) -> dict[str, Any]:
    """One round: every figure of ``contender`` against a fresh server of its own."""
    results: dict[str, Any] = {}
    server = Server(contender)
    try:
        for key, args in contender_plan(contender, quick):
            progress(f"  {contender.name:20} {key:20} ...")
            cpu_before = server.cpu_seconds()
            runs: list[tuple[dict[str, Any], float]] = []
            failure: Exception | None = None
            for _ in range(throughput_runs(quick) if args[0] == "throughput" else 1):
                try:
                    runs.append(run_client(contender, server, *args))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failure = exc
                    progress(f"    failed: {exc}")
            if not runs:
                results[key] = {"error": str(failure)[:300]}
                continue
            server_cpu = server.cpu_seconds() - cpu_before
            result, client_cpu = runs[0]
            if "samples_ms" in result:
                entry: dict[str, Any] = summarize(result["samples_ms"])
                entry["samples_ms"] = result["samples_ms"]
            elif result["measurement"] == "rate":
                entry = {"tasks_per_s": result["tasks"] / result["seconds"], **result}
                entry["cpu_us_per_task"] = {
                    "server": server_cpu / result["tasks"] * 1e6,
                    "client": client_cpu / result["tasks"] * 1e6,
                }
            else:  # throughput: the median of its runs
                rates = [run["bytes"] / run["seconds"] / 1e6 for run, _ in runs]
                entry = {**result, "mb_per_s": statistics.median(rates), "runs_mb_per_s": rates}
            results[key] = entry
    finally:
        server.stop()
    return results


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One entry per figure from every round's: latency samples pooled, rates and
    throughput the median round; each keeps its per-round values (``rounds_<field>``) so
    that ratios can be taken round by round."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for r in rounds for k in r):
        entries = [r[key] for r in rounds if key in r and "error" not in r[key]]
        if not entries:
            merged[key] = next(r[key] for r in rounds if key in r)
            continue
        if "samples_ms" in entries[0]:
            pooled = [x for e in entries for x in e["samples_ms"]]
            entry = {**summarize(pooled), "samples_ms": pooled}
            entry["rounds_p50_ms"] = [e["p50_ms"] for e in entries]
        elif "tasks_per_s" in entries[0]:
            ordered = sorted(entries, key=lambda e: e["tasks_per_s"])
            entry = dict(ordered[(len(ordered) - 1) // 2])
            entry["rounds_tasks_per_s"] = [e["tasks_per_s"] for e in entries]
        else:
            entry = dict(entries[0])
            entry["runs_mb_per_s"] = [x for e in entries for x in e["runs_mb_per_s"]]
            entry["mb_per_s"] = statistics.median(entry["runs_mb_per_s"])
            entry["rounds_mb_per_s"] = [e["mb_per_s"] for e in entries]
        merged[key] = entry
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (well under a minute)")
    parser.add_argument("--only", help="comma-separated contender name prefixes")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds: every contender once per round; ratios are taken per round",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for the results (default bench/results, which is tracked by git)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    speed_before = system.python_speed_ms()
    everyone = contenders()
    if args.only:
        prefixes = args.only.split(",")
        everyone = [c for c in everyone if any(c.name.startswith(p) for p in prefixes)]
    for contender in everyone:
        if not contender.available:
            progress(f"skipping {contender.name}: {contender.why_not}")
    rounds: dict[str, list[dict[str, Any]]] = {c.name: [] for c in everyone}
    # Interleaved (A, B, C, A, B, C, ...): the VM's speed drifts within minutes, and a
    # ratio taken within one round compares contenders that saw the same weather.
    for number in range(1, args.rounds + 1):
        for contender in everyone:
            if not contender.available:
                continue
            progress(f"round {number}/{args.rounds}: {contender.name}")
            try:
                rounds[contender.name].append(measure(contender, args.quick))
            except RuntimeError as exc:
                contender.available, contender.why_not = False, str(exc)
    for contender in everyone:
        contender.results = merge_rounds(rounds[contender.name])
    progress("p2pnode start-up, memory and discovery ...")
    extra = system.p2pnode_system_figures(quick=args.quick)
    progress("task protocol 2 against protocol 1 ...")
    from . import task2

    versions = asyncio.run(task2.measure(args.rounds, args.quick))
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    data = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "throughput_runs": throughput_runs(args.quick),
        "rounds": args.rounds,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "node": system.node_version(),
            "python_speed_ms": [speed_before, system.python_speed_ms()],  # start, end of run
        },
        "contenders": {
            c.name: {"available": c.available, "why_not": c.why_not, "results": c.results}
            for c in everyone
        },
        "p2pnode_system": extra,
        "task2": versions,
        "seconds": time.monotonic() - started,
    }
    name = f"{stamp}-quick" if args.quick else stamp
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=1))
    markdown = report.markdown(data)
    (out_dir / f"{name}.md").write_text(markdown)
    plots = report.plots(data, out_dir / name)
    print(markdown)
    print(f"\nwrote {json_path}, {json_path.with_suffix('.md')} and {', '.join(map(str, plots))}")


if __name__ == "__main__":
    main()
