"""The config file: default options per command, overridden by the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .netns import Process
from .test_cli import P2PNODE, one_line_error, run


def write_config(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "p2pnode" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pongs(env: dict[str, str], addr: str, *args: str) -> int:
    lines = run(env, "ping", addr, *args, "--json").stdout.splitlines()
    return sum(json.loads(line)["event"] == "pong" for line in lines)


def test_serve_and_ping_take_their_defaults_from_the_config_file(cli_env: dict[str, str]) -> None:
    write_config(
        cli_env,
        '[serve]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\nno-mdns = true\ndht = "off"\n'
        'exec = ["upper=tr a-z A-Z"]\nephemeral = true\n\n[ping]\ncount = 2\n',
    )
    serve = Process([*P2PNODE, "serve", "--json"], cli_env)
    try:
        listening = serve.event("listening")
        assert listening["mdns"] is False and "upper" in listening["kinds"]
        assert listening["addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
        addr = listening["addrs"][0]
        assert pongs(cli_env, addr) == 2  # count = 2 from the file
        assert pongs(cli_env, addr, "--count", "3") == 3  # the command line wins
    finally:
        serve.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serv]\nlisten = []\n", "[serv] is not a command"),
        ("[serve]\nbogus = 1\n", "has no option 'bogus'"),
        ("[serve]\nno-mdns = 1\n", "no-mdns is a flag"),
        ("[serve]\nlisten = \n", "is not valid TOML"),
        ("[ping]\njson = true\n", "has no option 'json'"),
    ],
)
def test_a_bad_config_file_is_a_one_line_error(
    cli_env: dict[str, str], text: str, message: str
) -> None:
    path = write_config(cli_env, text)
    error = one_line_error(run(cli_env, "id"), 1)
    assert message in error and str(path) in error


def test_a_bad_value_fails_as_the_option_would(cli_env: dict[str, str]) -> None:
    write_config(cli_env, "[ping]\ncount = 0\n")
    result = run(
        cli_env,
        "ping",
        "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
    )
    assert (
        result.returncode == 2 and "--count" in result.stderr and "Traceback" not in result.stderr
    )


def test_an_explicit_config_file_must_exist(cli_env: dict[str, str], tmp_path: Path) -> None:
    error = one_line_error(run(cli_env, "--config", str(tmp_path / "none.toml"), "id"), 1)
    assert "does not exist" in error
