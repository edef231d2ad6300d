"""The sans-I/O cores: bytes in, events and bytes out; no sockets, clocks or tasks.

Keys and PeerIds, multiaddrs, varints and protobuf fields, multistream-select,
Noise, the yamux and mplex muxers, and length-prefixed messages.
"""
