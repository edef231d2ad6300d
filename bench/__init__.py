"""The p2pnode benchmark suite (make bench)."""
