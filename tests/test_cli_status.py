"""``p2pnode status``: a running serve's connections, streams and tasks, over its socket."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
import tempfile
from pathlib import Path

from .conftest import start_node
from .netns import Process
from .test_cli import P2PNODE, one_line_error, run

SERVE = [*P2PNODE, "serve", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
         "--dht", "off", "--json"]  # fmt: skip


def status_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {**cli_env, "XDG_RUNTIME_DIR": str(tmp_path / "run")}


def short_tmp() -> Path:
    """A short directory: a unix socket's path must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="p2s", dir="/tmp"))


def test_status_shows_each_running_node_and_its_connections(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    tmp_path = short_tmp()
    env = status_env(cli_env, tmp_path)
    first, second = Process(SERVE, env), Process(SERVE, env)
    try:
        one, two = first.event("listening"), second.event("listening")
        folder = tmp_path / "run" / "p2pnode"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE((folder / f"{one['peer_id'][-16:]}.sock").stat().st_mode) == 0o600

        async def connected_status() -> dict:
            client = await start_node()
            try:
                await client.dial(one["addrs"][0])
                result = await asyncio.to_thread(run, env, "status", one["peer_id"], "--json")
                return json.loads(result.stdout)
            finally:
                await client.stop()

        status = asyncio.run(connected_status())
        assert status["event"] == "status" and status["peer_id"] == one["peer_id"]
        assert status["addrs"] == one["addrs"] and status["tasks_running"] == 0
        (conn,) = status["connections"]
        assert conn["direction"] == "inbound" and conn["muxer"] == "/yamux/1.0.0"
        everyone = [json.loads(line) for line in run(env, "status", "--json").stdout.splitlines()]
        assert sorted(s["peer_id"] for s in everyone) == sorted([one["peer_id"], two["peer_id"]])
        assert f"{two['peer_id']}: up " in run(env, "status", two["peer_id"]).stdout
    finally:
        first.stop()
        second.stop()
    assert not list(folder.glob("*.sock"))  # each removed its socket when it stopped
    assert "no running p2pnode serve" in one_line_error(run(env, "status"), 3)
    shutil.rmtree(tmp_path)


def test_serve_refuses_a_socket_directory_others_can_enter(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = status_env(cli_env, tmp_path)
    folder = tmp_path / "run" / "p2pnode"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    result = run(env, *SERVE[3:-1])  # without --json: one line of text
    assert "chmod 700" in one_line_error(result, 1)


def test_status_and_id_report_reachability_and_relay_slots(cli_env: dict[str, str]) -> None:
    tmp_path = short_tmp()
    env = status_env(cli_env, tmp_path)
    relay = Process([*SERVE, "--relay-service"], env)
    try:
        relay_addr = relay.event("listening")["addrs"][0]
        key = tmp_path / "node.key"
        run(env, "id", "--identity", str(key))
        with_key = [a if a != "--ephemeral" else f"--identity={key}" for a in SERVE]
        node = Process([*with_key, "--relay", relay_addr], env)
        try:
            me = node.event("listening")["peer_id"]
            slot = node.event("addresses", timeout=20)
            circuit = f"{relay_addr}/p2p-circuit/p2p/{me}"
            assert circuit in slot["addrs"] and slot["relays"] == [relay_addr.split("/p2p/")[1]]
            status = json.loads(run(env, "status", me, "--json").stdout)
            assert status["reachability"] in ("unknown", "public", "private")
            assert status["relays"] == slot["relays"] and circuit in status["addrs"]
            shown = json.loads(run(env, "id", "--identity", str(key), "--json").stdout)
            assert shown["reachability"] == status["reachability"] and circuit in shown["addrs"]
            human = run(env, "status", me).stdout
            assert f"reachability: {status['reachability']}; relayed via " in human
        finally:
            node.stop()
        relay_status = json.loads(run(env, "status", "--json").stdout)
        assert relay_status["relay_service"]["relayed_bytes"] == 0
        assert (
            json.loads(run(env, "id", "--identity", str(key), "--json").stdout)["reachability"]
            is None
        )  # not running any more
    finally:
        relay.stop()
    shutil.rmtree(tmp_path)
