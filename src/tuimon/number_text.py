"""How numbers read as text, for every front end: values, durations, byte counts, shares.

The headless progress lines, the console and the UI's panels show the same readings (a
loss, an LR, an ETA, a GPU's memory); written here once, they read the same everywhere.
Every function takes what a log holds, so a reading that is missing (None) or is not a
number reads as "n/a" or "?" instead of raising. Pure: standard library only.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "n/a"  # a reading the sampler or the run did not have


def format_value(value: float | None) -> str:
    """Four significant digits; scientific notation for very small or large magnitudes."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-3 or magnitude >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def show_value(value: Any) -> str:
    """A control event's old or new value: a number, one per param group, a state name."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, float):
        return format_value(value)
    if isinstance(value, list):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    return str(value)


def short_number(value: Any) -> str:
    """A number as `:g` writes it (an LR typed by a person: 0.003, 3e-05); anything else (a
    damaged log's) as it is."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:g}"
    return str(value)


def format_duration(seconds: float | None) -> str:
    """42s, 3m07s, 5h02m, 3d04h: the two largest units; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def human_bytes(value: float | None) -> str:
    """A byte count in binary units: 512 B, 1.5 KiB, 79.6 GiB."""
    if value is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def samples_rate(samples_per_s: float) -> str:
    """Throughput as the progress line and the status bar show it: "1234 samples/s"."""
    return f"{samples_per_s:.0f} samples/s"


def percent(value: Any) -> str:
    """A 0-100 reading from the sampler, or n/a when NVML or psutil had none."""
    return f"{value:3.0f}%" if isinstance(value, int | float) else MISSING


def share(used: Any, total: Any) -> float | None:
    """used / total as a fraction (what a bar shows), when both were read."""
    return used / total if isinstance(used, int | float) and total else None


def scale_text(scale: float) -> str:
    """A loss scale as a GradScaler makes it: a power of two, 2^13 (else 3 digits)."""
    if scale > 0 and math.isfinite(scale):
        mantissa, exponent = math.frexp(scale)
        if mantissa == 0.5:
            return f"2^{exponent - 1}"
    return f"{scale:.3g}"
