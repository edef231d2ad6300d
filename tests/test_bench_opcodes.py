"""bench.opcodes: counts per operation, and the HEAD/BASE table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.opcodes import report

ROOT = Path(__file__).resolve().parent.parent


def test_the_count_covers_every_operation_and_repeats() -> None:
    def count() -> dict[str, dict[str, float]]:
        done = subprocess.run(
            [sys.executable, "-m", "bench.opcodes", "--count"],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        result: dict[str, dict[str, float]] = json.loads(done.stdout)
        return result

    first, second = count(), count()
    assert set(first) == {
        "task 64 B, 64 in flight", "task 64 B, one at a time", "ping", "bulk, per MiB",
        "fresh dial + task",
    }  # fmt: skip
    for operation, counts in first.items():
        assert counts["opcodes"] > counts["c_calls"] > 0, operation
        # the point of the measure: the machine's speed does not move it
        again = second[operation]["opcodes"]
        assert abs(again - counts["opcodes"]) <= 0.02 * counts["opcodes"], operation
    # a task does more than a ping, and a fresh connection much more than a task
    ping, task = first["ping"]["opcodes"], first["task 64 B, one at a time"]["opcodes"]
    assert ping < task < first["fresh dial + task"]["opcodes"]


def test_the_table_shows_head_over_base_for_operations_both_trees_have() -> None:
    head = {"ping": {"opcodes": 110.0, "c_calls": 9.0}, "new": {"opcodes": 5.0, "c_calls": 1.0}}
    base = {"ping": {"opcodes": 100.0, "c_calls": 10.0}}
    table = report(head, base)
    assert "| ping | 100 | 110 | 1.100 | 10 | 9 | 0.900 |" in table
    assert "new" not in table
    assert "| new | 5 | 1 |" in report(head, None)
