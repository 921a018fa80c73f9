"""The Textual app: a client of a run's control socket (or a replay of its log)."""
