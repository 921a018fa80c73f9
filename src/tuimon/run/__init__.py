"""The run directory and what lives in it: event log, checkpoints, captured output."""
