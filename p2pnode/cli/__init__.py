"""The ``p2pnode`` command line; nothing outside this package imports it."""

from p2pnode.cli.main import main

__all__ = ["main"]
