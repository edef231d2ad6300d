"""How fast a fresh p2pnode process gets going: ``--help``, ``send-task``, the first dial.

    python -m bench.startup [--runs 10] [--python PATH]

``--python`` measures another installation (e.g. a venv with a regular, non-editable
``pip install .``: an editable install adds its import hook, ~10-15 ms, to every start).

Prints medians (and min-max) of:

- ``python -c pass``, the interpreter's own start, measured in the same rounds (the
  floor: on a loaded machine every figure here rises with it);
- ``p2pnode --help``, wall time from process start to exit;
- ``p2pnode send-task ADDR hello`` against a running ``serve`` on loopback, wall time
  from process start to exit (a full ``/p2p`` address: no lookup);
- the first connection of a fresh process: CPU seconds of ``Node.dial`` plus one ping,
  after ``from p2pnode import Node, Identity`` (so lazy imports the dial needs count),
  next to a second connection of the same process.

Targets (issue 13; machine-dependent, this VM's speed varies ~2x): ``--help`` <= 80 ms,
``send-task`` <= 150 ms, first connection <= 5 ms of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIRST_DIAL = """
import asyncio, json, sys, time
from p2pnode import Identity, Node

async def main() -> None:
    cpu = []
    for _ in range(2):
        node = Node(Identity.generate())
        started = time.process_time()
        conn = await node.dial(sys.argv[1])
        await node.ping(conn.remote_peer, 1)
        cpu.append((time.process_time() - started) * 1000)
        await node.stop()
    print(json.dumps({"first_ms": cpu[0], "second_ms": cpu[1]}))

asyncio.run(main())
"""


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=env["HOME_DIR"], capture_output=True, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} failed: {done.stderr.decode()[-300:]}")
    return elapsed


def describe(samples: list[float]) -> str:
    return f"{statistics.median(samples):7.1f} ms  ({min(samples):.1f}-{max(samples):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to run")
    args = parser.parse_args()
    p2pnode = [args.python, "-m", "p2pnode"]
    with tempfile.TemporaryDirectory() as home:
        # From a directory of its own, so that `-m p2pnode` is the installed package (not
        # the source tree of the cwd), with bytecode as an installed package has it: this
        # machine's PYTHONDONTWRITEBYTECODE=1 would make every run compile from source.
        env = dict(os.environ, XDG_CONFIG_HOME=f"{home}/config", XDG_CACHE_HOME=f"{home}/cache",
                   HOME_DIR=home)  # fmt: skip
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        log = Path(home) / "serve.log"
        with log.open("wb") as stdout:
            serve = subprocess.Popen(
                [*p2pnode, "serve", "--ephemeral", "--json", "--no-mdns", "--dht", "off",
                 "--listen", "/ip4/127.0.0.1/tcp/0"],
                stdout=stdout, env=env, cwd=home,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while "\n" not in log.read_text():
                if time.monotonic() > deadline or serve.poll() is not None:
                    raise RuntimeError("p2pnode serve did not start")
                time.sleep(0.01)
            addr = json.loads(log.read_text().split("\n", 1)[0])["addrs"][0]
            send = [*p2pnode, "send-task", "--ephemeral", "--no-cache", addr, "hello"]
            figures: dict[str, list[float]] = {
                "python": [],
                "help": [],
                "send_task": [],
                "first": [],
                "second": [],
            }
            for _ in range(args.runs):  # interleaved, so that each sees the same weather
                figures["python"].append(wall_ms([args.python, "-c", "pass"], env))
                figures["help"].append(wall_ms([*p2pnode, "--help"], env))
                figures["send_task"].append(wall_ms(send, env))
                dial = subprocess.run(
                    [args.python, "-c", FIRST_DIAL, addr],
                    env=env, cwd=home, capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                cpu = json.loads(dial.stdout)
                figures["first"].append(cpu["first_ms"])
                figures["second"].append(cpu["second_ms"])
        finally:
            serve.terminate()
            serve.wait(30)
    print(f"python -c pass (the floor)            {describe(figures['python'])}")
    print(f"p2pnode --help                        {describe(figures['help'])}  target <= 80 ms")
    print(
        f"p2pnode send-task (loopback)          {describe(figures['send_task'])}  target <= 150 ms"
    )
    print(f"first connection, CPU                 {describe(figures['first'])}  target <= 5 ms")
    print(f"second connection, same process, CPU {describe(figures['second'])}")
    if args.json:
        args.json.write_text(json.dumps({k: {"p50": statistics.median(v), "samples": v}
                                         for k, v in figures.items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
