"""``send-task --timeout`` bounds the whole command; ``--connect-timeout`` the connecting.

Each case would take 10 s or more if a phase kept its own clock (the Noise handshake's
10 s, the mDNS lookup, then the task): the bounds below sit well under that.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from p2pnode.demo.netns import Host
from p2pnode.wire.identity import Identity

from .netns import p2pnode

P2PNODE = [sys.executable, "-m", "p2pnode"]
EXIT_TIMEOUT = 5
PEER_ID = str(Identity.generate().peer_id)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def timed(argv: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    return result, time.monotonic() - started


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_timeout_covers_a_peer_that_accepts_and_stays_silent(
    silent_port: int, cli_env: dict[str, str]
) -> None:
    target = f"/ip4/127.0.0.1/tcp/{silent_port}/p2p/{PEER_ID}"
    result, elapsed = timed([*P2PNODE, "send-task", target, "x", "--timeout", "2"], cli_env)
    assert result.returncode == EXIT_TIMEOUT, result.stderr
    line = error_line(result)
    assert "--timeout 2s" in line and f"connecting to {target}" in line
    assert elapsed < 7, elapsed  # was 10.2 s: the handshake had its own 10 s


def test_connect_timeout_ends_connecting_first_and_says_so(
    silent_port: int, cli_env: dict[str, str]
) -> None:
    target = f"/ip4/127.0.0.1/tcp/{silent_port}/p2p/{PEER_ID}"
    argv = [*P2PNODE, "send-task", target, "x", "--timeout", "30", "--connect-timeout", "1"]
    result, elapsed = timed([*argv, "--json"], cli_env)
    assert result.returncode == EXIT_TIMEOUT, result.stderr
    error = json.loads(result.stderr.strip().splitlines()[-1])  # errors go to stderr
    assert error["event"] == "error" and error["code"] == "timeout"
    assert "--connect-timeout 1s" in error["message"]
    assert elapsed < 7, elapsed


def black_holed_address(host: Host) -> str:
    """An address on ``host``'s link whose packets reach a namespace that drops them.

    The neighbour entry sends frames for it to the other end of the veth pair, which
    does not own the address and does not forward: no SYN-ACK, no RST, no ICMP.
    """
    links = json.loads(
        subprocess.run(
            ["ip", "-n", host.name, "-j", "link", "show", "type", "veth"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    device = links[0]["ifname"]
    hole = host.ip.rsplit(".", 1)[0] + ".99"
    subprocess.run(
        ["ip", "-n", host.name, "neigh", "replace", hole, "lladdr", "02:00:00:00:00:99",
         "dev", device, "nud", "permanent"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return hole


def test_timeout_covers_a_black_holed_address(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    host = hosts[0]
    target = f"/ip4/{black_holed_address(host)}/tcp/4001/p2p/{PEER_ID}"
    argv = p2pnode(host, "send-task", target, "x", "--timeout", "2", "--no-cache")
    result, elapsed = timed(argv, cli_env)
    assert result.returncode == EXIT_TIMEOUT, result.stderr
    assert "--timeout 2s" in error_line(result)
    assert elapsed < 7, elapsed  # was 10.3 s


def test_timeout_covers_the_mdns_lookup_of_a_bare_peer_id(
    hosts: tuple[Host, Host], cli_env: dict[str, str]
) -> None:
    argv = p2pnode(hosts[0], "send-task", PEER_ID, "x", "--timeout", "2", "--no-cache")
    result, elapsed = timed(argv, cli_env)
    assert result.returncode in (3, EXIT_TIMEOUT), result.stderr  # not found, or out of time
    assert PEER_ID in error_line(result)
    assert elapsed < 7, elapsed
