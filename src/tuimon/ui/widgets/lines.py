"""Helpers for text panels: lines cropped to the panel, never wrapped or spilled."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from rich.text import Text


def fit(lines: Sequence[Text | str], width: int, height: int) -> Text:
    """Join lines, each cropped to `width` with an ellipsis, keeping the first `height`."""
    out = Text(no_wrap=True, overflow="ellipsis")
    for index, line in enumerate(lines[:height]):
        text = line if isinstance(line, Text) else Text(line)
        if text.cell_len > width:
            text = text.copy()
            text.truncate(width, overflow="ellipsis")
        if index:
            out.append("\n")
        out.append_text(text)
    return out


def wrap(text: str, width: int, style: str = "", indent: str = "") -> list[Text]:
    """Plain text wrapped to `width` (continuation lines indented), one Text per line."""
    lines = textwrap.wrap(text, width=max(width, 8), subsequent_indent=indent) or [""]
    return [Text(line, style=style) for line in lines]
