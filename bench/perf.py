"""Throughput over the libp2p perf protocol (/perf/1.0.0), p2pnode and py-libp2p 0.8.1.

Every pairing of client and server (p2pnode's ``perf`` command and ``serve --perf``;
py-libp2p's PerfService, bench/contenders/pylibp2p_perf.py) uploads N MiB, then downloads
N MiB, RUNS times each, one client process per run, and prints the medians in MB/s
(10^6 bytes a second) of each client's own figure for the whole transfer.

    python -m bench.perf [--quick] [--mib N] [--runs R] [--muxer yamux|mplex] [--only NAMES]
                         [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYLIBP2P = ROOT / "bench" / ".contenders" / "pylibp2p-venv" / "bin" / "python"
P2PNODE = [sys.executable, "-m", "p2pnode"]
PY_PERF = [str(PYLIBP2P), "-m", "bench.contenders.pylibp2p_perf"]
CLIENT_TIMEOUT = 300  # seconds
CONTENDERS = ("p2pnode", "py-libp2p")


def environment(home: Path) -> dict[str, str]:
    """This tree on the path, key files and caches in a temporary folder."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(
        os.environ,
        PYTHONPATH=path,
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
    )


@contextmanager
def server(name: str, muxer: str, env: dict[str, str]) -> Iterator[str]:
    """Start ``name``'s perf server; yield its address; stop it (by its PID) at the end."""
    if name == "p2pnode":
        argv = [*P2PNODE, "serve", "--perf", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
                "--dht", "off", "--ephemeral", "--muxer", muxer, "--json"]  # fmt: skip
    else:
        argv = [*PY_PERF, "--muxer", muxer, "server"]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        event = json.loads(line) if line else {}
        if event.get("event") != "listening":
            raise RuntimeError(f"the {name} perf server did not start: {line!r}")
        yield event["addrs"][0] if name == "p2pnode" else event["addr"]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_client(
    name: str, addr: str, muxer: str, upload: int, download: int, env: dict[str, str]
) -> float:
    """One measurement by ``name``'s client: the seconds the whole transfer took."""
    if name == "p2pnode":
        argv = [*P2PNODE, "perf", addr, "--upload", str(upload), "--download", str(download),
                "--muxer", muxer, "--timeout", str(CLIENT_TIMEOUT), "--json"]  # fmt: skip
    else:
        argv = [*PY_PERF, "--muxer", muxer, "client", addr, "--upload", str(upload),
                "--download", str(download)]  # fmt: skip
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT + 30
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{name} perf client failed: {done.stderr.strip() or done.stdout}")
    result = lines[-1]
    if (result["upload_bytes"], result["download_bytes"]) != (upload, download):
        raise RuntimeError(f"{name} perf client moved other byte counts: {result}")
    return float(result["total_ms"]) / 1000 if name == "p2pnode" else float(result["seconds"])


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = args.mib << 20
    names = [name for name in CONTENDERS if name in args.only.split(",")]
    if "py-libp2p" in names and not PYLIBP2P.exists():
        print(f"py-libp2p is not installed ({PYLIBP2P}): p2pnode only", file=sys.stderr)
        names.remove("py-libp2p")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as home:
        env = environment(Path(home))
        for server_name in names:
            with server(server_name, args.muxer, env) as addr:
                for client_name in names:
                    row: dict[str, Any] = {"client": client_name, "server": server_name}
                    for direction, upload, download in (("up", size, 0), ("down", 0, size)):
                        seconds = [
                            run_client(client_name, addr, args.muxer, upload, download, env)
                            for _ in range(args.runs)
                        ]
                        rates = [size / s / 1e6 for s in seconds]
                        row[f"{direction}_mb_per_s"] = round(statistics.median(rates), 1)
                        row[f"{direction}_runs_mb_per_s"] = [round(r, 1) for r in rates]
                    rows.append(row)
                    print(
                        f"{client_name} -> {server_name}: up {row['up_mb_per_s']} MB/s, "
                        f"down {row['down_mb_per_s']} MB/s",
                        file=sys.stderr,
                    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB a transfer instead of 64")
    parser.add_argument("--mib", type=int, help="MiB a transfer (default 64, --quick 8)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--muxer", choices=["yamux", "mplex"], default="yamux")
    parser.add_argument(
        "--only", default=",".join(CONTENDERS), help="comma-separated: p2pnode,py-libp2p"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if args.mib is None:
        args.mib = 8 if args.quick else 64
    rows = measure(args)
    if args.json:
        print(json.dumps({"mib": args.mib, "runs": args.runs, "muxer": args.muxer, "rows": rows}))
        return
    print(f"perf /perf/1.0.0, {args.mib} MiB a transfer, {args.muxer}, median of {args.runs}\n")
    print("| client -> server | upload MB/s | download MB/s |")
    print("|---|---|---|")
    for row in rows:
        pair = f"{row['client']} -> {row['server']}"
        print(f"| {pair} | {row['up_mb_per_s']} | {row['down_mb_per_s']} |")


if __name__ == "__main__":
    main()
