"""Application protocols on top of streams: ping, identify and the task exchange.

Each one's message codec is sans-I/O; its handler and client use only the
:class:`~p2pnode.net.host.Host` and :class:`~p2pnode.net.stream.Stream` API.
"""
