"""Output that never blocks the event loop.

A :class:`LineWriter` takes lines without ever blocking: they wait in a bounded queue
that one daemon thread writes to the file descriptor. When the reader is slower than
the node, new lines are dropped and counted, and a notice with the count goes out
before the next line that fits. A closed reader (``| head``) ends output quietly.
:class:`Repeats` folds repeated events of one kind from one source into a count.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

MAX_QUEUED_LINES = 1024
MAX_QUEUED_BYTES = 1 << 20
EXIT_FLUSH_TIMEOUT = 1.0  # seconds the process waits at exit for queued lines


class LineWriter:
    """A bounded, non-blocking line queue in front of a file descriptor."""

    def __init__(
        self,
        fd: int,
        dropped_notice: Callable[[int], str],
        *,
        max_lines: int = MAX_QUEUED_LINES,
        max_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self._fd = fd
        self._dropped_notice = dropped_notice
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._writing = False  # the thread holds a line it has taken off the queue
        self._unreported = 0  # dropped since the last notice
        self.dropped = 0  # dropped in all
        self.closed = False  # the reader went away: everything is dropped silently
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"p2pnode-lines-{fd}", daemon=True)
        self._thread.start()

    def write(self, line: str, *, wait: float = 0.0) -> bool:
        """Queue one line (without its newline); False when it was dropped.

        A full queue drops the line at once, unless ``wait`` > 0: then the caller waits
        up to ``wait`` seconds for room (for a last line at exit, never on the loop).
        """
        data = (line + "\n").encode("utf-8", "replace")
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                if self.closed:
                    return False
                notice = b""
                if self._unreported:
                    notice = (self._dropped_notice(self._unreported) + "\n").encode()
                if self._fits(len(notice) + len(data), 2 if notice else 1):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._unreported += 1
                    self.dropped += 1
                    return False
                self._cond.wait(remaining)
            if notice:
                self._append(notice)
                self._unreported = 0
            self._append(data)
            self._cond.notify_all()
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the queue to drain; True when it did.

        Lines dropped since the last notice get a final notice first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unreported and not self.closed:
                notice = (self._dropped_notice(self._unreported) + "\n").encode()
                if self._fits(len(notice), 1):
                    self._append(notice)
                    self._unreported = 0
                    self._cond.notify_all()
                    break
                remaining = deadline - time.monotonic()  # wait for room: the count matters
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            while (self._queue or self._writing) and not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _fits(self, size: int, lines: int) -> bool:
        return (
            len(self._queue) + lines <= self._max_lines
            and self._queued_bytes + size <= self._max_bytes
        )

    def _append(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued_bytes += len(data)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._writing = False
                    self._cond.notify_all()
                    self._cond.wait()
                data = self._queue.popleft()
                self._queued_bytes -= len(data)
                self._writing = True
                self._cond.notify_all()  # a flush may be waiting for room
            if not self._write_all(data):
                with self._cond:
                    self.closed = True
                    self.dropped += len(self._queue)
                    self._queue.clear()
                    self._queued_bytes = 0
                    self._writing = False
                    self._cond.notify_all()
                return

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    time.sleep(0.01)  # someone made the fd non-blocking: poll it
                    continue
                self._silence()
                return False
            view = view[written:]
        return True

    def _silence(self) -> None:
        """Point the fd at /dev/null so the interpreter's own flush at exit stays quiet."""
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._fd)
            os.close(devnull)
        except OSError:
            pass


class LineHandler(logging.Handler):
    """A logging handler that formats records and hands them to a :class:`LineWriter`."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.write(self.format(record))
        except Exception:
            self.handleError(record)


class Repeats:
    """Lets the first event per source through in each window and counts the rest.

    ``admit(key)`` returns None to suppress an event, or how many were suppressed since
    the last one let through (to print with it). At most ``max_keys`` sources are
    tracked; beyond them, events share one overflow key.
    """

    OVERFLOW = ("*",)

    def __init__(
        self,
        window: float = 10.0,
        *,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._open: dict[Hashable, list[float]] = {}  # key -> [window start, suppressed]

    def admit(self, key: Hashable) -> int | None:
        now = self._clock()
        entry = self._open.get(key)
        if entry is None and len(self._open) >= self.max_keys:
            key = self.OVERFLOW
            entry = self._open.get(key)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            return None
        suppressed = int(entry[1]) if entry is not None else 0
        self._open[key] = [now, 0]
        return suppressed

    def expired(self, *, everything: bool = False) -> list[tuple[Hashable, int]]:
        """Sources whose window ended (or all, at exit) with suppressed events, as
        (key, count); forgotten."""
        now = self._clock()
        done = [
            k for k, (start, _) in self._open.items() if everything or now - start >= self.window
        ]
        report = [(k, int(self._open[k][1])) for k in done if self._open[k][1]]
        for key in done:
            del self._open[key]
        return report
