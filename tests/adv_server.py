"""``p2pnode serve`` as the adversarial suite runs it: the real command, plus what the test
must see from outside the process.

``python -m tests.adv_server STATS_PATH serve ARGS...`` runs ``p2pnode serve ARGS...``
unchanged, and inside the same process:

* writes ``STATS_PATH`` (atomically, JSON) once the node listens: its PeerId and
  addresses, so the test never has to read serve's stdout;
* samples the node every 20 ms: connections per peer, streams per connection, streams
  negotiating, bytes queued for a peer, task answers held, and how late and how busy
  its event loop was (``loop_lag_ms``, ``loop_busy_ms``: CPU the loop thread spent
  before it came back to the sampler); on SIGUSR1 it rewrites ``STATS_PATH`` with the
  highest values seen, the current ones and ``node.refusals.counts``, then bumps
  ``seq`` so the test knows the file is fresh.

With ``ADV_DEBUG_STALLS=SECONDS`` in its environment, a thread prints the loop
thread's stack to stderr whenever the loop has not come back to the sampler for that
long (what the node was doing when it kept everyone waiting).

``big_answer`` is the handler of kind ``big`` (``--handler big=tests.adv_server:big_answer``):
it answers a task whose input is a number N with N bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Any

from p2pnode.node import Node
from p2pnode.protocols.task.messages import TaskRequest

SAMPLE_INTERVAL = 0.02


async def big_answer(request: TaskRequest) -> str:
    return "x" * min(int(request.input), 16 * 1024 * 1024 - 1024)


class _Watch:
    def __init__(self, path: str) -> None:
        self.path = path
        self.node: Node | None = None
        self.task_servers: list[Any] = []
        self.seq = 0
        self.peak: Counter[str] = Counter()
        self.heartbeat = time.monotonic()
        self.sampler: asyncio.Task[None] | None = None

    def current(self) -> dict[str, int]:
        node = self.node
        assert node is not None
        conns = node.connections()
        per_peer = Counter(c.remote_peer for c in conns)
        now = {
            "connections": len(conns),
            "connections_per_peer": max(per_peer.values(), default=0),
            "streams_per_connection": max((c.stream_count for c in conns), default=0),
            "negotiating_per_connection": max((c.negotiating_streams for c in conns), default=0),
            "serving_per_peer_protocol": max(node._serving.values(), default=0),
            "unsent_per_connection": max(
                (c._transport.get_write_buffer_size() for c in conns), default=0
            ),
            "reads_paused": sum(1 for c in conns if c._stall_handle is not None),
        }
        unsent: Counter[Any] = Counter()
        for c in conns:
            unsent[c.remote_peer] += c._transport.get_write_buffer_size()
        now["unsent_per_peer"] = max(unsent.values(), default=0)
        receive = node._transport_config.receive_memory
        now["receive_memory_per_peer"] = max(map(receive.used_by, per_peer), default=0)
        now["receive_memory"] = receive.node.used
        for server in self.task_servers:
            now["answer_memory"] = server.answer_memory.node.used
            now["tasks_running"] = server.running
        return now

    async def sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for name, value in self.current().items():
                if value > self.peak[name]:
                    self.peak[name] = value
            woken = loop.time() + SAMPLE_INTERVAL
            cpu = time.thread_time()
            await asyncio.sleep(SAMPLE_INTERVAL)
            # How late the loop ran this timer: the longest the node left everyone
            # waiting; and how much of that the loop's thread ran (the rest, the
            # process waited for a CPU).
            lag = round((loop.time() - woken) * 1000)
            busy = round((time.thread_time() - cpu) * 1000)
            if lag > self.peak["loop_lag_ms"]:
                self.peak["loop_lag_ms"] = lag
                self.peak["loop_lag_cpu_ms"] = busy
            # CPU the loop spent before it came back to this timer: a callback that
            # blocks the loop shows here whatever else runs on the machine
            if busy > self.peak["loop_busy_ms"]:
                self.peak["loop_busy_ms"] = busy
            self.heartbeat = time.monotonic()

    def watch_stalls(self, threshold: float) -> None:
        """(ADV_DEBUG_STALLS=seconds) A thread that prints the loop thread's stack to
        stderr whenever the loop has not run the sampler for ``threshold`` seconds."""
        main = threading.main_thread().ident
        assert main is not None

        def watch() -> None:
            reported = 0.0
            while True:
                time.sleep(threshold / 4)
                late = time.monotonic() - self.heartbeat
                if late > threshold and self.heartbeat != reported:
                    reported = self.heartbeat
                    frame = sys._current_frames().get(main)
                    stack = "".join(traceback.format_stack(frame)) if frame else "?"
                    print(f"loop stalled {late * 1000:.0f} ms:\n"
                          f"{stack}", file=sys.stderr, flush=True)  # fmt: skip

        threading.Thread(target=watch, daemon=True).start()

    def write(self) -> None:
        node = self.node
        assert node is not None
        self.seq += 1
        now = self.current()
        stats = {
            "seq": self.seq,
            "pid": os.getpid(),
            "peer_id": str(node.peer_id),
            "addrs": [str(a.with_peer_id(node.peer_id)) for a in node.listen_addrs],
            "refusals": dict(node.refusals.counts),
            "peak": {**dict.fromkeys(now, 0), **self.peak},
            "now": now,
        }
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, self.path)

    def wrap_start(self) -> None:
        original = Node.start.__func__  # type: ignore[attr-defined]
        watch = self

        async def start(cls: type[Node], *args: Any, **kwargs: Any) -> Node:
            node = await original(cls, *args, **kwargs)
            if watch.node is None and node.listen_addrs:
                watch.node = node
                loop = asyncio.get_running_loop()
                watch.sampler = loop.create_task(watch.sample())
                if os.environ.get("ADV_DEBUG_STALLS"):
                    watch.watch_stalls(float(os.environ["ADV_DEBUG_STALLS"]))
                loop.add_signal_handler(signal.SIGUSR1, watch.write)
                watch.write()
            return node

        Node.start = classmethod(start)  # type: ignore[method-assign, assignment]

    def wrap_task_server(self) -> None:
        from p2pnode.cli import serve as serve_module

        base = serve_module.TaskServer
        watch = self

        class WatchedTaskServer(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                watch.task_servers.append(self)

        serve_module.TaskServer = WatchedTaskServer  # type: ignore[misc]


def main() -> None:
    path, *args = sys.argv[1:]
    watch = _Watch(path)
    watch.wrap_start()
    watch.wrap_task_server()
    from p2pnode.cli.main import main as cli

    cli.main(args, prog_name="p2pnode")


if __name__ == "__main__":
    main()
