"""Text from a log or a socket made safe to print or draw on a terminal.

A run name, a message or a traceback is data a training script (or anyone who can write
the log) chose; an escape sequence in it must not reach the terminal, where it could set
the title, move the cursor or worse. Everything printed or drawn that came from a log or
a socket goes through `printable`.
"""

from __future__ import annotations

import re

# Escape sequences, dropped: a whole CSI (colours, cursor moves: ESC [ or the 8-bit CSI,
# parameters, one final byte), so a coloured line of output.log reads as its plain text;
# and any other ESC with the byte after it (an OSC's ESC ], whose text then shows as text).
_SEQUENCE = re.compile("(?:\x1b\\[|\x9b)[0-?]*[ -/]*[@-~]|\x1b[@-_]?")
# What is left of C0 controls except tab and newline, DEL, and C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object, *, keep_newlines: bool = True) -> str:
    """`text` as a string without its escape sequences, and with every other control
        character but tab (and newline, unless `keep_newlines` is false; a carriage return
    becomes one) replaced by U+FFFD,
        so nothing in it can start a sequence on the terminal."""
    value = text if isinstance(text, str) else str(text)
    # A carriage return (a progress bar's redraw) would overwrite what came before it.
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    cleaned = _CONTROL.sub("\ufffd", _SEQUENCE.sub("", value))
    if not keep_newlines:
        cleaned = cleaned.replace("\n", " ")
    return cleaned
