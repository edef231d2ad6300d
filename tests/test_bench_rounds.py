"""The benchmark's interleaved rounds: merging rounds and per-round ratios."""

from __future__ import annotations

from typing import Any

from bench.report import FLOOR, P2P, median_ratio, ratio_cell, targets
from bench.run import merge_rounds


def latency(p50: float, samples: list[float]) -> dict[str, Any]:
    return {"n": len(samples), "p50_ms": p50, "p99_ms": max(samples), "min_ms": min(samples),
            "samples_ms": samples}  # fmt: skip


def test_rounds_pool_latency_samples_and_keep_each_rounds_p50() -> None:
    merged = merge_rounds([{"ping": latency(1.0, [1.0, 1.0])}, {"ping": latency(3.0, [3.0, 3.0])}])
    assert merged["ping"]["samples_ms"] == [1.0, 1.0, 3.0, 3.0]
    assert merged["ping"]["rounds_p50_ms"] == [1.0, 3.0]
    assert merged["ping"]["p50_ms"] == 2.0


def test_rates_take_the_median_round_and_throughput_the_median_transfer() -> None:
    rounds = [
        {"rate_16": {"tasks_per_s": v, "cpu_us_per_task": {"server": v}},
         "throughput_1_up": {"mb_per_s": v, "runs_mb_per_s": [v, v + 1]}}
        for v in (10.0, 30.0, 20.0)
    ]  # fmt: skip
    merged = merge_rounds(rounds)
    assert merged["rate_16"]["tasks_per_s"] == 20.0
    assert merged["rate_16"]["cpu_us_per_task"] == {"server": 20.0}
    assert merged["rate_16"]["rounds_tasks_per_s"] == [10.0, 30.0, 20.0]
    assert merged["throughput_1_up"]["mb_per_s"] == 20.5
    assert merged["throughput_1_up"]["rounds_mb_per_s"] == [10.0, 30.0, 20.0]


def test_a_figure_that_failed_in_one_round_keeps_the_others() -> None:
    merged = merge_rounds([{"ping": {"error": "boom"}}, {"ping": latency(2.0, [2.0])}])
    assert merged["ping"]["rounds_p50_ms"] == [2.0]
    assert merge_rounds([{"ping": {"error": "boom"}}])["ping"] == {"error": "boom"}


def data_with(p2p: list[float], floor: list[float]) -> dict[str, Any]:
    def contender(p50s: list[float]) -> dict[str, Any]:
        entry = {**latency(sorted(p50s)[len(p50s) // 2], p50s), "rounds_p50_ms": p50s}
        return {"available": True, "results": {"ping": entry, "task_64": entry}}

    return {"contenders": {P2P: contender(p2p), FLOOR: contender(floor)},
            "p2pnode_system": {"startup_ms": {"p50": 100.0}, "idle_rss_mb": 30.0}}  # fmt: skip


def test_ratios_are_taken_round_by_round() -> None:
    # the machine halves its speed in round 2: per round, p2pnode is 1.5x the floor both
    # times, although the pooled medians would say 3 / 1 = 3x or 1.5 / 2 = 0.75x
    data = data_with([1.5, 3.0], [1.0, 2.0])
    assert median_ratio(data, "ping", "p50_ms", FLOOR) == 1.5
    assert ratio_cell(data, "ping", "p50_ms", FLOOR) == "1.50x (1.50-1.50)"
    data = data_with([1.0, 3.0, 2.0], [1.0, 1.0, 1.0])
    assert ratio_cell(data, "ping", "p50_ms", FLOOR) == "2.00x (1.00-3.00)"


def test_ratio_targets_are_judged_on_the_median_ratio() -> None:
    passed = {name: ok for name, _, ok in targets(data_with([1.5, 1.7, 9.0], [1.0, 1.0, 1.0]))}
    assert passed["ping p50 <= 1.6x floor (median per-round ratio)"] is False  # median 1.7
    passed = {name: ok for name, _, ok in targets(data_with([1.5, 1.5, 9.0], [1.0, 1.0, 1.0]))}
    assert passed["ping p50 <= 1.6x floor (median per-round ratio)"] is True
