"""When a periodic probe runs: one rule, so that `0 = off` means the same for every probe."""

from __future__ import annotations


def probe_due(step: int, every: int, early: tuple[int, ...] = ()) -> bool:
    """Every `every` steps (0: never), and at the `early` steps, where some faults do their
    damage before the first regular probe."""
    return bool(every) and (step in early or step % every == 0)
