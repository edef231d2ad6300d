"""The asyncio edge: TCP transport and upgrade, connections, streams.

It drives the :mod:`p2pnode.wire` cores and owns sockets, timers and futures.
"""
