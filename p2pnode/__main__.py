"""python -m p2pnode: the command line."""

from p2pnode.cli.main import main

main()
