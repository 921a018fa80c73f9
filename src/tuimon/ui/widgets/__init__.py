"""One panel per file; each draws itself from a RunState and never touches torch."""
