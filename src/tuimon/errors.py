"""Errors that end tuimon with a message instead of a traceback."""

from __future__ import annotations

# Process exit codes (docs/CONTRACTS.md): done, training failed, bad usage or config, interrupted.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command line or configuration: exit code 2, message only."""

    exit_code = 2


class ConfigError(UsageError):
    """One or more problems in a config file, each naming where it is."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StopTraining(SystemExit):
    """Raised by `mon.step()` once a stop (`tuimon ctl RUN stop`, the UI, SIGTERM) was
    applied and its checkpoint saved.

    A `SystemExit` with code 0, so neither `except Exception` in a training loop nor the
    interpreter treats it as a failure: the Monitor's `with` block ends the run `stopped`,
    and a script that never closes its Monitor exits 0 with the run ended `stopped`.
    """

    def __init__(self, step: int = 0) -> None:
        super().__init__(0)
        self.step = step

    def __str__(self) -> str:
        return f"training stopped at step {self.step} (a stop was requested)"
