"""Two p2pnode trees side by side: is a change faster or slower, and by how much?

Runs ``bench.run --quick`` for the floor and p2pnode (asyncio) in a BASE tree and in
this one, alternately, ROUNDS times, so that both see the same machine weather; then
prints, per figure, the median of p2pnode/floor in each tree and their ratio
(HEAD/BASE; for latencies above 1 is slower, for rates and throughput above 1 is faster),
and the median of HEAD/BASE of p2pnode's own figure, taken per round (the two trees run
one after the other). Each tree runs one round of ``bench.run`` per A/B round.

    python -m bench.ab /path/to/base-worktree [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HEAD = Path(__file__).resolve().parent.parent
CONTENDERS = "floor (asyncio),p2pnode (asyncio)"
FIGURES = {  # name: (result key, field, higher is better)
    "connect p50 (ms)": ("connect", "p50_ms", False),
    "ping p50 (ms)": ("ping", "p50_ms", False),
    "task 64 B p50 (ms)": ("task_64", "p50_ms", False),
    "task 1 MiB p50 (ms)": ("task_1m", "p50_ms", False),
    # minima: the best case of each run, far less moved by other load than the median
    "connect min (ms)": ("connect", "min_ms", False),
    "ping min (ms)": ("ping", "min_ms", False),
    "task 64 B min (ms)": ("task_64", "min_ms", False),
    "task 1 MiB min (ms)": ("task_1m", "min_ms", False),
    "1 stream up (MB/s)": ("throughput_1_up", "mb_per_s", True),
    "1 stream down (MB/s)": ("throughput_1_down", "mb_per_s", True),
    "tasks/s, 16 in flight": ("rate_16", "tasks_per_s", True),
    "tasks/s, 64 in flight": ("rate_64", "tasks_per_s", True),
    # CPU of the contender's process per task: what other processes' load moves least
    "CPU per task, 16 in flight (us)": ("rate_16", "cpu_us_per_task", False),
    "CPU per task, 64 in flight (us)": ("rate_64", "cpu_us_per_task", False),
}


def figure(results: dict[str, Any], key: str, field: str) -> float | None:
    """One figure of a contender; CPU per task is the server's plus the client's."""
    value = results.get(key, {}).get(field)
    if isinstance(value, dict):
        return float(sum(value.values()))
    return None if value is None else float(value)


def run_once(tree: Path, out: Path) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    # one round each, so that both trees measure the same sequence (run.py's --rounds
    # interleaves contenders; a tree from before it has one round only)
    one_round = ["--rounds", "1"] if "--rounds" in (tree / "bench" / "run.py").read_text() else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--only",
            CONTENDERS,
            "--out",
            str(out),
            *one_round,
        ],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (result,) = out.glob("*-quick.json")
    data = json.loads(result.read_text())["contenders"]
    figures: dict[str, dict[str, float]] = {}
    for name, (key, field, _) in FIGURES.items():
        floor = figure(data["floor (asyncio)"]["results"], key, field)
        ours = figure(data["p2pnode (asyncio)"]["results"], key, field)
        if floor and ours:
            figures[name] = {"p2pnode": ours, "floor": floor, "ratio": ours / floor}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for label, tree in (("base", args.base.resolve()), ("head", HEAD)):
                out = Path(tmp) / f"{label}{round_}"
                runs[label].append(run_once(tree, out))
                print(f"round {round_ + 1}: {label} done", file=sys.stderr)
    print(f"| figure ({args.rounds} rounds, medians) | base p2pnode/floor | head p2pnode/floor "
          "| head/base of the ratios | head/base of p2pnode itself, per round |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, (_, _, higher_better) in FIGURES.items():
        ratios = {}
        for label in ("base", "head"):
            values = [r[name]["ratio"] for r in runs[label] if name in r]
            ratios[label] = statistics.median(values) if values else None
        base, head = ratios["base"], ratios["head"]
        if base is None or head is None:
            continue
        # the same figure of p2pnode in the two trees, measured one after the other
        direct = [
            h[name]["p2pnode"] / b[name]["p2pnode"]
            for b, h in zip(runs["base"], runs["head"], strict=True)
            if name in b and name in h
        ]

        def verdict(change: float, higher_better: bool = higher_better) -> str:
            return "faster" if (change > 1) == higher_better else "slower"

        change, same = head / base, statistics.median(direct)
        spread = f"{min(direct):.2f}-{max(direct):.2f}"
        print(f"| {name} | {base:.3f} | {head:.3f} | {change:.3f} ({verdict(change)}) "
              f"| {same:.3f} ({verdict(same)}; {spread}) |")  # fmt: skip


if __name__ == "__main__":
    main()
