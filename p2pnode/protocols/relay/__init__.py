"""Circuit relay v2: the relay service (hop) and the client (reservations, relayed dials, stop)."""
