"""Errors that end tuimon with a message instead of a traceback."""

from __future__ import annotations

# Process exit codes (DESIGN.md): done, training failed, bad usage or config, interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command line or configuration: exit code 2, message only."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in a config file, each naming where it is."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
