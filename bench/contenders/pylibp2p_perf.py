"""py-libp2p 0.8.1's own perf service (``libp2p.perf.PerfService``) for ``bench/perf.py``.

Runs in the py-libp2p venv, as a module from the repository root:

    bench/.contenders/pylibp2p-venv/bin/python -m bench.contenders.pylibp2p_perf server
    ... -m bench.contenders.pylibp2p_perf client ADDR --upload BYTES --download BYTES

``server`` prints ``{"event": "listening", "addr"}`` and serves ``/perf/1.0.0`` until SIGTERM,
SIGINT or the end of its stdin pipe. ``client`` connects, runs one measurement and prints
``{"measurement": "perf", "upload_bytes", "download_bytes", "seconds"}``, where ``seconds``
is PerfService's own final figure (it includes opening the stream, not the connection).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.perf import PerfService

from .contract import run_and_report
from .pylibp2p_bench import SHUTDOWN_GRACE, full_addr, make_host, run_trio, until_stopped


async def serve(muxer: str) -> None:
    host = make_host(muxer, dialer=False)
    perf = PerfService(host)
    with (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        trio.CancelScope() as shutdown,
    ):
        async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            await perf.start()
            print(json.dumps({"event": "listening", "addr": full_addr(host)}), flush=True)
            await until_stopped(signals)
            shutdown.deadline = trio.current_time() + SHUTDOWN_GRACE


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    target = multiaddr.Multiaddr(args.addr)
    host = make_host(args.muxer, dialer=True)
    final: dict[str, Any] = {}
    with trio.CancelScope() as scope:
        async with host.run(listen_addrs=[]):
            await host.connect(info_from_p2p_addr(target))  # not part of the figure
            perf = PerfService(host)
            async for report in perf.measure_performance(target, args.upload, args.download):
                if report["type"] == "final":
                    final = dict(report)
            scope.deadline = trio.current_time() + SHUTDOWN_GRACE  # bound py-libp2p's teardown
    if not final:
        raise RuntimeError("PerfService gave no final report")
    return {
        "measurement": "perf",
        "upload_bytes": final["upload_bytes"],
        "download_bytes": final["download_bytes"],
        "seconds": final["time_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--muxer", default="yamux")
    sub = parser.add_subparsers(dest="mode", required=True)
    sub.add_parser("server")
    client = sub.add_parser("client")
    client.add_argument("addr")
    client.add_argument("--upload", type=int, default=0)
    client.add_argument("--download", type=int, default=0)
    args = parser.parse_args()
    code = 0
    try:
        if args.mode == "server":
            run_and_report(lambda: run_trio(serve, args.muxer))
        else:
            run_and_report(lambda: run_trio(measure, args))
    except SystemExit as exc:  # run_and_report's exit 1 after the error line
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()  # py-libp2p leaves threads behind: do not wait for them at exit
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
