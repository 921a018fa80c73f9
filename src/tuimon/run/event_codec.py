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
import re
from collections.abc import Mapping
from typing import Any

import orjson


def _has_non_finite(value: Any) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One log line without its newline. Raises TypeError/ValueError for a value JSON
    cannot hold (the writer logs a `log_error` in its place)."""
    if not _has_non_finite(event):
        try:
            return orjson.dumps(event, default=str)
        except orjson.JSONEncodeError:
            pass  # e.g. an int over 64 bits, or a non-str key: json handles those
    return json.dumps(event, separators=(",", ":"), default=str).encode("utf-8")


MAX_DEPTH = 64  # nesting a line may have; a real event nests about 5 deep
# Shorter lines cannot nest deep enough to harm (at most 512 levels: orjson and json parse
# them, every reader bounds the depth it walks), and are not scanned: the scan costs a
# third of decoding a typical step line.
DEPTH_CHECK_BYTES = 1024
# A JSON string (its escapes included): brackets inside one do not nest.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")
_LONE_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def decode_line(line: bytes | str) -> Any:
    """The JSON value of one line; raises ValueError (JSONDecodeError, a bad UTF-8 byte,
    a line of DEPTH_CHECK_BYTES or more nested deeper than MAX_DEPTH, a number or a string
    `json` refuses) for a line that is not JSON an event can hold."""
    raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
    if (
        len(raw) >= DEPTH_CHECK_BYTES
        and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
        and _depth(raw) > MAX_DEPTH
    ):
        # Checked before parsing: orjson crashes the process on a line nested ~1e5 deep.
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("nested too deep") from exc
    if _LONE_SURROGATE_ESCAPE.search(raw):
        # `json` accepts "\\ud800" alone, a string no terminal or encoder can take.
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise ValueError(f"not representable: {exc}") from None
    return value


def _depth(raw: bytes) -> int:
    """How deep the brackets of a line nest, outside its strings (at most MAX_DEPTH + 1)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    while brackets and depth <= MAX_DEPTH:
        inner = _INNERMOST.sub(b"", brackets)  # one level of pairs per pass
        if inner == brackets:
            return MAX_DEPTH + 1  # brackets that do not pair: not JSON anyway
        brackets, depth = inner, depth + 1
    return depth
