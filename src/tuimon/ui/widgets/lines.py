"""Helpers for text panels: lines cropped to the panel, never wrapped or spilled."""

from __future__ import annotations

import textwrap
from typing import Any

from rich.text import Text


def fit(lines: list[Text | str], width: int, height: int) -> Text:
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


def percent(value: Any) -> str:
    """A 0-100 reading from the sampler, or n/a when NVML or psutil had none."""
    return f"{value:3.0f}%" if isinstance(value, int | float) else "n/a"


def share(used: Any, total: Any) -> float | None:
    """used / total as a fraction, when both were read."""
    return used / total if isinstance(used, int | float) and total else None


def human_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
