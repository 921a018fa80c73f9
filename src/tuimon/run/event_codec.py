"""One line of `events.jsonl` <-> one event, fast, and readable by any JSON tool.

The format is what Python's `json` module writes, so old logs and new ones read the same:
non-finite floats are the bare tokens `NaN`, `Infinity` and `-Infinity` (the doctor's
`nan_grad` must still see them in a replayed log). orjson encodes and decodes the common
case; orjson writes NaN as `null` and refuses those tokens, so an event holding a
non-finite float is encoded by `json`, and a line orjson refuses is decoded by `json`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

Event = dict[str, Any]


def _has_non_finite(value: Any) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def encode_event(event: Event) -> bytes:
    """One log line without its newline. Raises TypeError/ValueError for a value JSON
    cannot hold (the writer logs a `log_error` in its place)."""
    if not _has_non_finite(event):
        try:
            return orjson.dumps(event, default=str)
        except orjson.JSONEncodeError:
            pass  # e.g. an int over 64 bits, or a non-str key: json handles those
    return json.dumps(event, separators=(",", ":"), default=str).encode("utf-8")


def decode_line(line: bytes | str) -> Any:
    """The JSON value of one line; raises ValueError (JSONDecodeError, a bad UTF-8 byte,
    a nesting or number `json` refuses) for a line that is not JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except RecursionError as exc:
        raise ValueError("nested too deep") from exc
