"""``p2pnode id`` for this node and, like ``ipfs id PEER``, for a remote peer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from p2pnode.wire.identity import Identity, PublicKey

from .netns import Process
from .test_cli import P2PNODE, one_line_error, run


@pytest.fixture
def serving(cli_env: dict[str, str]) -> Iterator[dict]:
    proc = Process(
        [*P2PNODE, "serve", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns",
         "--dht", "off", "--json", "--exec", "upper=tr a-z A-Z"],
        cli_env,
    )  # fmt: skip
    yield proc.event("listening")
    proc.stop()


def test_id_prints_the_public_key_of_this_node(cli_env: dict[str, str]) -> None:
    shown = json.loads(run(cli_env, "id", "--json").stdout)
    key = PublicKey.from_protobuf(base64.b64decode(shown["public_key"]))
    assert str(key.peer_id()) == shown["peer_id"]
    assert run(cli_env, "id").stdout.strip() == shown["peer_id"]  # plain: the PeerId alone


def test_id_of_a_remote_peer_is_what_it_says_by_identify(
    cli_env: dict[str, str], serving: dict
) -> None:
    addr = serving["addrs"][0]
    shown = json.loads(run(cli_env, "id", addr, "--json").stdout)
    assert shown["event"] == "peer"
    assert shown["peer_id"] == serving["peer_id"] and shown["addr"] == addr.split("/p2p/")[0]
    key = PublicKey.from_protobuf(base64.b64decode(shown["public_key"]))
    assert str(key.peer_id()) == serving["peer_id"]
    assert shown["agent_version"].startswith("p2pnode/")
    assert {"/ipfs/ping/1.0.0", "/ipfs/id/1.0.0", "/p2pnode/task/1.0.0"} <= set(shown["protocols"])
    assert addr.split("/p2p/")[0] in shown["listen_addrs"]
    assert shown["observed_addr"].startswith("/ip4/127.0.0.1/tcp/")
    human = run(cli_env, "id", addr).stdout
    assert human.startswith(f"peer_id           {serving['peer_id']}\n")
    assert "  /p2pnode/task/1.0.0\n" in human


def test_id_of_a_peer_nobody_listens_for_is_one_line_and_exit_3(cli_env: dict[str, str]) -> None:
    nobody = Identity.generate().peer_id
    result = run(cli_env, "id", f"/ip4/127.0.0.1/tcp/1/p2p/{nobody}", "--timeout", "5")
    assert "could not connect" in one_line_error(result, 3)


def test_a_key_file_that_cannot_be_created_is_named_in_the_error(cli_env: dict[str, str]) -> None:
    error = one_line_error(run(cli_env, "id", "--identity", "/proc/p2pnode-test.key"), 1)
    assert "cannot create the key file /proc/p2pnode-test.key" in error and ".tmp" not in error
