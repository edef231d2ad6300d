"""The DHT's protocol ids, apart so that the command line can name them without the DHT."""

DEFAULT_PROTOCOL = "/ipfs/kad/1.0.0"  # the public libp2p/IPFS DHT ("Amino")
LAN_PROTOCOL = "/ipfs/lan/kad/1.0.0"  # the convention for a LAN-only DHT
