"""The control channel: a Unix socket in the run directory speaking JSON lines."""
