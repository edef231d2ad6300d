"""Output that never blocks: the bounded line writer and the repeat folding."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import pytest

from p2pnode.cli.lines import LineWriter, Repeats

WRITERS: list[LineWriter] = []


def line_writer(fd: int, **limits: int) -> LineWriter:
    writer = LineWriter(fd, lambda n: f"dropped {n}", **limits)
    WRITERS.append(writer)
    return writer


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe; at the end its reader goes away and each writer's thread is seen to stop
    before the fds are closed (a thread still writing to a reused fd number would
    write into the next test's pipe)."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    with contextlib.suppress(OSError):
        os.close(read_fd)
    for writer in WRITERS:
        writer.write("end")
        writer._thread.join(5.0)
        assert not writer._thread.is_alive()
    WRITERS.clear()
    os.close(write_fd)


def read_available(fd: int, until: bytes, timeout: float = 5.0) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    deadline = time.monotonic() + timeout
    while until not in data and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if not chunk:
            break
        data += chunk
    return data


def test_lines_reach_the_reader_in_order(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    writer = line_writer(write_fd)
    for i in range(100):
        assert writer.write(f"line {i}")
    assert writer.flush(5.0)
    data = read_available(read_fd, b"line 99\n")
    assert data.decode().splitlines() == [f"line {i}" for i in range(100)]
    assert writer.dropped == 0


def test_a_reader_that_never_reads_costs_dropped_lines_not_a_blocked_caller(
    pipe: tuple[int, int],
) -> None:
    _read_fd, write_fd = pipe
    writer = line_writer(write_fd, max_lines=50, max_bytes=1 << 20)
    line = "x" * 10_000
    # 20 MB into a pipe that holds 64 KiB: a blocking write would never return.
    accepted = sum(writer.write(line) for _ in range(2000))
    assert accepted < 2000
    assert writer.dropped == 2000 - accepted
    assert not writer.flush(0.05)  # nobody reads: it cannot drain


def test_the_next_line_that_fits_carries_the_count_of_dropped_lines(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    writer = line_writer(write_fd, max_lines=4, max_bytes=1 << 20)
    big = "y" * 200_000  # larger than the pipe: the thread blocks on it
    writer.write(big)
    deadline = time.monotonic() + 5
    while not writer._writing and time.monotonic() < deadline:  # the thread took it
        time.sleep(0.001)
    accepted = [writer.write(f"line {i}") for i in range(10)]
    assert accepted == [True] * 4 + [False] * 6
    data = read_available(read_fd, big.encode() + b"\n")  # the reader catches up
    assert writer.flush(5.0)
    writer.write("after")
    assert writer.flush(5.0)
    data += read_available(read_fd, b"after\n")
    lines = data.decode().splitlines()
    assert lines[1:] == ["line 0", "line 1", "line 2", "line 3", "dropped 6", "after"]


def test_flush_reports_drops_that_no_later_line_carried(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    writer = line_writer(write_fd, max_lines=1, max_bytes=1 << 20)
    writer.write("y" * 200_000)
    deadline = time.monotonic() + 5
    while not writer._writing and time.monotonic() < deadline:
        time.sleep(0.001)
    writer.write("queued")
    assert not writer.write("lost")
    data = read_available(read_fd, b"queued\n")
    assert writer.flush(5.0)
    data += read_available(read_fd, b"dropped 1\n")
    assert data.decode().splitlines()[1:] == ["queued", "dropped 1"]


def test_flush_waits_for_room_for_the_count_when_the_queue_is_full(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    writer = line_writer(write_fd, max_lines=2, max_bytes=1 << 20)
    writer.write("y" * 200_000)  # the thread blocks on it: the pipe holds 64 KiB
    deadline = time.monotonic() + 5
    while not writer._writing and time.monotonic() < deadline:
        time.sleep(0.001)
    assert writer.write("a") and writer.write("b")
    assert not writer.write("lost")  # the queue is full when the flush starts
    flushed: list[bool] = []
    flusher = threading.Thread(target=lambda: flushed.append(writer.flush(5.0)))
    flusher.start()
    data = read_available(read_fd, b"dropped 1\n")  # the reader arrives only now
    flusher.join(5.0)
    assert flushed == [True]
    assert data.decode().splitlines()[1:] == ["a", "b", "dropped 1"]


def test_a_last_line_waits_for_room_and_comes_after_the_count(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    writer = line_writer(write_fd, max_lines=2, max_bytes=1 << 20)
    writer.write("y" * 200_000)  # the thread blocks on it: the pipe holds 64 KiB
    deadline = time.monotonic() + 5
    while not writer._writing and time.monotonic() < deadline:
        time.sleep(0.001)
    assert writer.write("a") and writer.write("b")
    assert not writer.write("lost")  # dropped at once: the queue is full
    written: list[bool] = []
    last = threading.Thread(target=lambda: written.append(writer.write("stopped", wait=5.0)))
    last.start()
    data = read_available(read_fd, b"stopped\n")  # the reader arrives only now
    last.join(5.0)
    assert written == [True]
    assert data.decode().splitlines()[1:] == ["a", "b", "dropped 1", "stopped"]


def test_a_last_line_is_dropped_when_no_room_comes_in_time(pipe: tuple[int, int]) -> None:
    _, write_fd = pipe
    writer = line_writer(write_fd, max_lines=1, max_bytes=1 << 20)
    writer.write("y" * 200_000)
    deadline = time.monotonic() + 5
    while not writer._writing and time.monotonic() < deadline:
        time.sleep(0.001)
    assert writer.write("a")
    started = time.monotonic()
    assert not writer.write("stopped", wait=0.2)  # nobody reads: the wait is bounded
    assert time.monotonic() - started >= 0.2
    assert writer.dropped == 1


def test_a_reader_gone_away_ends_output_quietly(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    writer = line_writer(write_fd)
    os.close(read_fd)
    writer.write("nobody hears this")
    assert writer.flush(5.0)  # returns at once: there is nothing left to wait for
    assert writer.closed
    assert writer.write("nor this") is False
    os.write(write_fd, b"the fd now points at /dev/null\n")  # no EPIPE any more


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_repeats_let_one_event_per_window_through_and_count_the_rest() -> None:
    clock = FakeClock()
    repeats = Repeats(10.0, clock=clock)
    assert repeats.admit("a") == 0
    assert [repeats.admit("a") for _ in range(5)] == [None] * 5
    assert repeats.admit("b") == 0  # another source has its own window
    clock.now = 10.0
    assert repeats.admit("a") == 5  # the next one through says how many were folded
    assert repeats.admit("a") is None


def test_repeats_report_folded_events_when_their_window_ends() -> None:
    clock = FakeClock()
    repeats = Repeats(10.0, clock=clock)
    repeats.admit("a")
    repeats.admit("a")
    repeats.admit("a")
    repeats.admit("b")
    clock.now = 5.0
    assert repeats.expired() == []
    clock.now = 10.0
    assert repeats.expired() == [("a", 2)]  # b had nothing folded
    assert repeats.admit("a") == 0  # forgotten: a fresh window
    repeats.admit("a")
    assert repeats.expired(everything=True) == [("a", 1)]  # at exit, open windows too


def test_repeats_track_a_bounded_number_of_sources() -> None:
    clock = FakeClock()
    repeats = Repeats(10.0, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        assert repeats.admit(key) == 0
    assert repeats.admit("d") == 0  # the overflow key, once per window
    assert all(repeats.admit(f"e{i}") is None for i in range(1000))
    assert len(repeats._open) == 4
