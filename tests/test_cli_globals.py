"""Global options anywhere on the line, log levels, version, help with defaults."""

from __future__ import annotations

import pytest

from p2pnode.cli.main import hoist_global_options

from .test_cli import run


@pytest.mark.parametrize(
    ("given", "parsed"),
    [
        (["ping", "ADDR", "-v"], ["-v", "ping", "ADDR"]),
        (["-q", "send-task", "P", "x", "--log-level", "debug"],
         ["-q", "--log-level", "debug", "send-task", "P", "x"]),
        (["serve", "--config=c.toml", "--json"], ["--config=c.toml", "serve", "--json"]),
        (["--config", "c.toml", "id", "-V"], ["--config", "c.toml", "-V", "id"]),
        (["send-task", "P", "--", "-v"], ["send-task", "P", "--", "-v"]),  # an input "-v"
        (["--help"], ["--help"]),
    ],
)  # fmt: skip
def test_global_options_after_the_command_move_before_it(
    given: list[str], parsed: list[str]
) -> None:
    assert hoist_global_options(given) == parsed


def test_version_and_log_options_work_after_the_command(cli_env: dict[str, str]) -> None:
    before, after = run(cli_env, "-V"), run(cli_env, "id", "--version")
    assert before.returncode == after.returncode == 0
    assert before.stdout == after.stdout and "p2pnode" in before.stdout
    for option in (["-v"], ["-vv"], ["-q"], ["--log-level", "debug"]):
        result = run(cli_env, "id", *option)
        assert result.returncode == 0 and result.stdout.startswith("12D3KooW"), result.stderr
    bad = run(cli_env, "id", "--log-level", "loud")
    assert bad.returncode == 2 and "--log-level" in bad.stderr


def test_help_shows_defaults(cli_env: dict[str, str]) -> None:
    text = run(cli_env, "ping", "-h").stdout
    assert "[default: 5" in text and "[default: both]" in text
