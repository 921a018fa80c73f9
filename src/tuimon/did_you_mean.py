"""'Did you mean …?' hints for misspelt keys, names and commands.

A leaf of the standard library only: the config loader, the control protocol and the
doctor all use it, and importing it must pull none of their dependencies into the others.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to `word`, if any is close enough to be a likely typo."""
    pool = list(choices)
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered:
        return lowered[word.lower()]
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' or '' when nothing is close."""
    match = closest(word, choices)
    return f" (did you mean {match}?)" if match else ""
