"""``python -m p2pnode.demo`` and the network namespaces it (and the tests) run in."""
