"""Config values and keys as they appear in error messages: short and terminal-safe.

A problem quotes what the user wrote, and a hostile or careless file can hold a 400 KB
string or an escape sequence in a key. Every value a message quotes goes through
`shown_value` (a repr cut to SHOWN_CHARS with an ellipsis) and every key path through
`dotted_key`, so an error message stays a line or two and never drives the terminal.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tuimon.terminal_text import printable

SHOWN_CHARS = 200
# A whole problem line (location, key, message): generous, but a bound.
PROBLEM_CHARS = 1000


def clipped(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` cut to `limit` characters, an ellipsis saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def shown_value(value: Any) -> str:
    """The repr of a config value, short enough to quote in a message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 600:
        # repr() of a huge int is slow and would fail past Python's 4300-digit limit.
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<a {type(value).__name__}>"
    return printable(clipped(text), keep_newlines=False)


def dotted_key(path: Iterable[Any]) -> str:
    """`optimizer.lr`: a key path written as the user would type it in `--set`."""
    return printable(clipped(".".join(str(part) for part in path)), keep_newlines=False)


def problem_line(text: str) -> str:
    """A whole problem, bounded and terminal-safe (the last line of defence)."""
    return printable(clipped(text, PROBLEM_CHARS))
