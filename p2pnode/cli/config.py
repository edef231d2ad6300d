"""The config file: default options for any command; the command line overrides them.

``$XDG_CONFIG_HOME/p2pnode/config.toml`` (or ``--config PATH``) has one table per
command, keyed by the long option names, for example::

    [serve]
    listen = ["/ip4/0.0.0.0/tcp/4001"]
    exec = ["upper=tr a-z A-Z"]
    max-concurrent = 64
    no-mdns = true

Read with the standard library's ``tomllib``; click converts and checks each value
as if it had been typed, so a bad value fails as the option would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

CONFIG_NAME = "config.toml"


class ConfigError(Exception):
    """The config file cannot be used; the message says where and why."""


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/p2pnode/config.toml`` (``~/.config`` when unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "p2pnode" / CONFIG_NAME


def _option_names(command: click.Command) -> dict[str, click.Option]:
    """Each option by its long names without dashes (``max-concurrent``, ``max_concurrent``)."""
    names: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        for opt in (*param.opts, *param.secondary_opts):
            if opt.startswith("--"):
                names[opt[2:]] = param
                names[opt[2:].replace("-", "_")] = param
    return names


def _value(option: click.Option, key: str, value: Any, where: str) -> Any:
    if option.multiple:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int | float) for v in values):
            raise ConfigError(f"{where}: {key} must be a list of values")
        return [str(v) for v in values]
    if option.is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} is a flag: write true or false")
        return value
    if isinstance(value, dict | list):
        raise ConfigError(f"{where}: {key} takes one value")
    return str(value)


def load_defaults(path: Path | None, group: click.Group) -> dict[str, dict[str, Any]]:
    """click's ``default_map`` from the config file; {} when the default file is absent."""
    explicit = path is not None
    path = path if path is not None else default_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None
    import tomllib  # only when there is a file to read

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    defaults: dict[str, dict[str, Any]] = {}
    for name, table in data.items():
        command = group.commands.get(name)
        if command is None:
            known = ", ".join(sorted(group.commands))
            raise ConfigError(f"{path}: [{name}] is not a command (commands: {known})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} must be a table: [{name}]")
        options = _option_names(command)
        section: dict[str, Any] = {}
        for key, value in table.items():
            option = options.get(key)
            if option is None or option.name in ("as_json", "help"):
                raise ConfigError(
                    f"{path}: [{name}] has no option {key!r} (see p2pnode {name} --help)"
                )
            assert option.name is not None
            section[option.name] = _value(option, key, value, f"{path} [{name}]")
        defaults[name] = section
    return defaults
