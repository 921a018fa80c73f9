"""Text from a log or a socket made safe to print or draw on a terminal.

A run name, a message or a traceback is data a training script (or anyone who can write
the log) chose; an escape sequence in it must not reach the terminal, where it could set
the title, move the cursor or worse. Everything printed or drawn that came from a log or
a socket goes through `printable`.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and C1 controls (which include the 8-bit CSI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object, *, keep_newlines: bool = True) -> str:
    """`text` as a string with every control character but tab (and newline, unless
    `keep_newlines` is false) replaced by U+FFFD, so an ESC can never start a sequence."""
    value = text if isinstance(text, str) else str(text)
    cleaned = _CONTROL.sub("\ufffd", value)
    if not keep_newlines:
        cleaned = cleaned.replace("\n", " ")
    return cleaned
