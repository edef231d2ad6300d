"""python -m p2pnode: the command line."""

from .cli import main

main()
