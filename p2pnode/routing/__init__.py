"""Peer routing: the peer store and the routers that fill it (address cache, mDNS)."""
