"""``serve --metrics``: Prometheus metrics of a running node, scraped over loopback."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Iterator

import pytest

from p2pnode.cli.metrics import parse_listen
from p2pnode.errors import LocalProtocolError
from p2pnode.protocols.task.client import send_task
from p2pnode.protocols.task.messages import TaskRefusedError

from .conftest import start_node
from .netns import Process
from .test_cli import P2PNODE, one_line_error, run


@pytest.fixture
def serving(cli_env: dict[str, str]) -> Iterator[dict]:
    proc = Process(
        [*P2PNODE, "serve", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
         "--dht", "off", "--json", "--exec", "upper=tr a-z A-Z", "--metrics", "127.0.0.1:0"],
        cli_env,
    )  # fmt: skip
    yield proc.event("listening")
    proc.stop()


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback only
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z0-9_:]+(?:\{[^}]*\})?) (\S+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_metrics_count_tasks_connections_and_bytes(serving: dict) -> None:
    url = serving["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    assert before.get("p2pnode_streams") == 0
    assert before.get("p2pnode_task_seconds_count") == 0

    async def tasks() -> None:
        client = await start_node()
        try:
            addr = serving["addrs"][0]
            for text in ("a", "b"):
                assert (await send_task(client, addr, text, kind="upper")).output == text.upper()
            with pytest.raises(TaskRefusedError):
                await send_task(client, addr, "c", kind="nope")
            during = await asyncio.to_thread(scrape, url)
            assert during['p2pnode_connections{direction="inbound",muxer="/yamux/1.0.0"}'] == 1
        finally:
            await client.stop()

    asyncio.run(tasks())
    after = scrape(url)
    assert after['p2pnode_tasks_total{kind="upper",outcome="ok"}'] == 2
    assert after['p2pnode_tasks_total{kind="nope",outcome="unknown_kind"}'] == 1
    assert after["p2pnode_task_seconds_count"] == 3
    assert after['p2pnode_task_seconds_bucket{le="+Inf"}'] == 3
    assert after['p2pnode_bytes_total{direction="in"}'] > 0
    assert after['p2pnode_bytes_total{direction="out"}'] > 0
    deadline = time.monotonic() + 10  # the server learns of the close a moment later
    while any(k.startswith("p2pnode_connections{") and v for k, v in after.items()):
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
        after = scrape(url)
    assert after["p2pnode_streams"] == 0


def test_a_bad_metrics_address_is_a_one_line_error(cli_env: dict[str, str]) -> None:
    with pytest.raises(LocalProtocolError, match="HOST:PORT"):
        parse_listen("9464")
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    result = run(cli_env, "serve", "--ephemeral", "--no-mdns", "--dht", "off",
                 "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", "localhost")  # fmt: skip
    assert "--metrics" in one_line_error(result, 1)
