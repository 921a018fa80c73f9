"""`tuimon.Monitor` and the probes it runs inside a training loop."""
