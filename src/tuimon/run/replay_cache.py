"""`state.json`: a finished run's state, so `tuimon replay` need not re-read its whole log.

Replaying a log of a million steps means decoding a million lines (seconds); the worker
already holds the run's state when the run ends (the snapshot it serves to clients that
attach), so it writes that next to the log. It is a cache, never the record:

- it names the log it stands for: `log_bytes` (the log's size when written, always the end
  of a line) and `log_seq` (the seq of that line's event). It is used only while the log
  still starts with those bytes as far as can be told cheaply: at least that long, a
  newline at `log_bytes - 1`, the last event before it carrying `log_seq`; events written
  after it (a log that grew) are read from the log and applied on top;
- it is JSON (never pickle), at most MAX_CACHE_BYTES, read with the log's own decoder
  (bounded nesting), and checked field by field before it becomes a state: anything
  unexpected, of any kind, means the log is read instead. A cache can make a replay
  faster, never wrong, crashed or hung;
- it is written like the run's other files (run/private_files.py: 0600, atomically, never
  through a symlink), and a failure to write it is silent: the run's end does not depend
  on it.

Series columns are stored as base64 of little-endian float64, exact for NaN and ±Inf (orjson
writes non-finite floats as null) and compact; everything else is what `snapshot()` holds,
encoded like a log line (run/event_codec.py keeps NaN and ±Inf as JSON's tokens).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from tuimon.run.event_codec import decode_line, encode_event
from tuimon.run.events import RUN_STATUSES
from tuimon.run.log_reader import KEPT_LINE_NUMBERS, MAX_LINE_BYTES
from tuimon.run.private_files import write_private_file
from tuimon.run.run_dir import EVENTS_FILE, STATE_FILE
from tuimon.run.run_state import (
    ERROR_LIMIT,
    HISTORY,
    MAX_ITEMS,
    MAX_KINDS,
    MAX_LAYERS,
    MAX_METRICS,
    SNAPSHOT_VERSION,
    WINDOW,
    RunState,
    load_run_state,
)
from tuimon.run.step_columns import MAX_LR_GROUPS
from tuimon.series.bucketed import FIELDS, BucketSeries

CACHE_FORMAT = "tuimon-state"
CACHE_VERSION = 1
# A 1e6-step run's cache is about 2 MiB; one that keeps every bounded list full of the
# longest texts a state holds stays well under this.
MAX_CACHE_BYTES = 64 * 1024 * 1024
MAX_CAPACITY = 1 << 16  # buckets per series (the worker keeps 2048)
# Series a state can hold: loss, its EMA, gradient norm, update ratio, LRs, metrics.
MAX_SERIES = 4 + MAX_LR_GROUPS + MAX_METRICS
MAX_TEXT = ERROR_LIMIT + 200  # a clipped text and its note
MAX_DEPTH = 8  # what RunState keeps of an event nests at most this deep (`_bounded`)
MAX_ENTRIES = 257  # per list or dict of a kept event (`_bounded`: 256 and a note)
_COLUMN_DTYPE = np.dtype("<f8")


class CacheRefused(ValueError):
    """The cache does not stand for this log, or is not what tuimon writes."""


def write_state_cache(run_dir: Path, state: RunState, log_path: Path) -> bool:
    """Write `state.json` for `state`, which holds every event of the log at `log_path`
    (call once the log is closed). Returns whether it was written; never raises."""
    try:
        with state.lock:
            snapshot = state.snapshot()
            counts = dict(state.counts)
        document = {
            "format": CACHE_FORMAT,
            "cache_version": CACHE_VERSION,
            "log_bytes": os.stat(log_path).st_size,
            "log_seq": snapshot["seq"],
            "counts": counts,
            "snapshot": _packed(snapshot),
        }
        write_private_file(Path(run_dir) / STATE_FILE, encode_event(document))
    except Exception:  # a cache: the run's end must not depend on it
        return False
    return True


def load_cached_state(run_dir: Path) -> RunState | None:
    """The run's state from `state.json` and the log written after it, or None when there
    is no usable cache (then read the log: `load_run_state`)."""
    run_dir = Path(run_dir)
    try:
        document = _read_cache(run_dir / STATE_FILE)
        log = run_dir / EVENTS_FILE
        log_bytes = _log_matches(log, document)
        state = _state_from(document)
        if os.stat(log).st_size > log_bytes:
            load_run_state(log, into=state, offset=log_bytes)
        return state
    except Exception:  # whatever a damaged or crafted cache does, the log is the answer
        return None


def load_replay_state(run_dir: Path) -> RunState:
    """A finished (or dead) run's state: from its cache when that is valid, else its log."""
    cached = load_cached_state(run_dir)
    return cached if cached is not None else load_run_state(Path(run_dir) / EVENTS_FILE)


# -- writing -------------------------------------------------------------------------------


def _packed(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The snapshot with each series' columns as base64 float64 (exact, NaN included)."""
    series = {}
    for name, data in snapshot["series"].items():
        packed = {k: v for k, v in data.items() if k not in FIELDS}
        for field in FIELDS:
            raw = np.asarray(data[field], dtype=_COLUMN_DTYPE).tobytes()
            packed[field] = base64.b64encode(raw).decode("ascii")
        series[name] = packed
    return {**snapshot, "series": series}


# -- reading -------------------------------------------------------------------------------


def _read_cache(path: Path) -> dict[str, Any]:
    """The decoded cache: a regular file of this user, not a symlink, bounded in size."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise CacheRefused("not a regular file of this user")
        if info.st_size > MAX_CACHE_BYTES:
            raise CacheRefused("too large")
        raw = file.read(MAX_CACHE_BYTES + 1)
    if len(raw) > MAX_CACHE_BYTES:
        raise CacheRefused("too large")
    document = decode_line(raw)
    if type(document) is not dict:
        raise CacheRefused("not an object")
    if document.get("format") != CACHE_FORMAT or document.get("cache_version") != CACHE_VERSION:
        raise CacheRefused("another format or version")
    return document


def _log_matches(log: Path, document: dict[str, Any]) -> int:
    """`log_bytes` when the log is (or has grown from) the one the cache was written for."""
    log_bytes = document.get("log_bytes")
    log_seq = document.get("log_seq")
    if type(log_bytes) is not int or type(log_seq) is not int or log_bytes < 1:
        raise CacheRefused("no log position")
    with log.open("rb") as file:
        if os.fstat(file.fileno()).st_size < log_bytes:
            raise CacheRefused("the log is shorter than when the cache was written")
        start = max(0, log_bytes - MAX_LINE_BYTES - 1)
        file.seek(start)
        before = file.read(log_bytes - start)
    if not before.endswith(b"\n"):
        raise CacheRefused("the cache's position is not the end of a line")
    newline = before.rfind(b"\n", 0, len(before) - 1)
    if newline < 0 and start > 0:
        raise CacheRefused("the last line before the position is too long")
    last = decode_line(before[newline + 1 :])
    if type(last) is not dict or last.get("seq") != log_seq:
        raise CacheRefused("the log's event there is not the cache's")
    return log_bytes


def _state_from(document: dict[str, Any]) -> RunState:
    snapshot = document.get("snapshot")
    if type(snapshot) is not dict:
        raise CacheRefused("no snapshot")
    _check_snapshot(snapshot)
    capacity = snapshot["capacity"]
    series = {name: _unpacked(data, capacity) for name, data in snapshot["series"].items()}
    state = RunState.from_snapshot({**snapshot, "series": {}})
    state.series = {name: BucketSeries.from_dict(data) for name, data in series.items()}
    counts = document.get("counts")
    if type(counts) is not dict or len(counts) > MAX_KINDS + 1 or not _ints(*counts.values()):
        raise CacheRefused("counts")
    state.counts = Counter(counts)
    return state


def _unpacked(data: Any, capacity: int) -> dict[str, Any]:
    """A series' columns decoded, its fields checked: what BucketSeries.from_dict takes."""
    if type(data) is not dict:
        raise CacheRefused("series")
    if data.get("capacity") != capacity:
        raise CacheRefused("series")
    span = _int(data.get("span"), "series")
    total = _int(data.get("total"), "series")
    non_finite = _int(data.get("non_finite"), "series")
    if span < 1 or span & (span - 1) or total < 0 or not 0 <= non_finite <= total:
        raise CacheRefused("series")
    columns = {}
    for field in FIELDS:
        text = data.get(field)
        if type(text) is not str or len(text) > 16 * (2 * capacity + 1):
            raise CacheRefused("series column")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CacheRefused("series column") from exc
        if len(raw) % 8:
            raise CacheRefused("series column")
        columns[field] = np.frombuffer(raw, dtype=_COLUMN_DTYPE).astype(float)
    n = len(columns["step"])
    if n > 2 * capacity or any(len(c) != n for c in columns.values()):
        raise CacheRefused("series length")
    return {"capacity": capacity, "span": span, "total": total, "non_finite": non_finite, **columns}


def _check_snapshot(s: dict[str, Any]) -> None:
    """What the views rely on, as RunState's handlers leave it; else CacheRefused."""
    if s.get("version") != SNAPSHOT_VERSION:
        raise CacheRefused("snapshot version")
    capacity, smoothing = s.get("capacity"), s.get("smoothing")
    if type(capacity) is not int or not 1 <= capacity <= MAX_CAPACITY:
        raise CacheRefused("capacity")
    if not _number(smoothing) or not 0 <= smoothing < 1:
        raise CacheRefused("smoothing")
    if not _ints(s.get("seq"), s.get("skipped_lines"), s.get("rejected")):
        raise CacheRefused("counters")
    if s.get("status") not in RUN_STATUSES or not _number(s.get("last_time")):
        raise CacheRefused("status")
    series = s.get("series")
    if type(series) is not dict or len(series) > MAX_SERIES:
        raise CacheRefused("series")
    if any(type(name) is not str or len(name) > 200 for name in series):
        raise CacheRefused("series names")
    _check_start(s.get("start"))
    _check_json(s.get("end"), dict, allow_none=True)
    for key in ("controls", "alerts", "messages", "checkpoints"):
        items = s.get(key)
        if type(items) is not list or len(items) > MAX_ITEMS:
            raise CacheRefused(key)
        for item in items:
            _check_json(item, dict)
    _check_last_step(s.get("last_step"))
    if s.get("stop_ignored_at") is not None and not _ints(s.get("stop_ignored_at")):
        raise CacheRefused("stop_ignored_at")
    if s.get("not_recording") is not None and type(s.get("not_recording")) is not str:
        raise CacheRefused("not_recording")
    _check_numbers(s.get("last_metrics"), MAX_METRICS, allow_int=True)
    _check_numbers(s.get("layer_grad_norms"), MAX_LAYERS)
    _check_numbers(s.get("layer_update_ratios"), MAX_LAYERS)
    _check_system(s.get("system"))
    _check_list_of_numbers(s.get("cpu_history"), HISTORY)
    gpu_history = s.get("gpu_history")
    if type(gpu_history) is not dict or len(gpu_history) > 64:
        raise CacheRefused("gpu_history")
    for index, history in gpu_history.items():
        if not index.isdigit() or len(index) > 6 or type(history) is not dict:
            raise CacheRefused("gpu_history")
        if set(history) != {"util", "mem"}:
            raise CacheRefused("gpu_history")
        for values in history.values():
            _check_list_of_numbers(values, HISTORY)
    recent = s.get("recent")
    if type(recent) is not list or len(recent) > WINDOW:
        raise CacheRefused("recent")
    for row in recent:
        if type(row) is not list or len(row) != 4 or not all(_number(v) for v in row):
            raise CacheRefused("recent")
    ema = s.get("ema")
    if type(ema) is not list or len(ema) != 2 or not _ints(ema[1]):
        raise CacheRefused("ema")
    if ema[0] is not None and not _number(ema[0]):
        raise CacheRefused("ema")
    lines = s.get("skipped_line_numbers")
    if type(lines) is not list or len(lines) > KEPT_LINE_NUMBERS or not _ints(*lines):
        raise CacheRefused("skipped_line_numbers")


def _check_start(start: Any) -> None:
    _check_json(start, dict, allow_none=True)
    if start is None:
        return
    for key in ("total_steps", "steps_per_epoch", "epochs", "start_step"):
        if key in start and (not _ints(start[key]) or start[key] < 0):
            raise CacheRefused(f"start.{key}")
    if "time" in start and not (_number(start["time"]) and math.isfinite(start["time"])):
        raise CacheRefused("start.time")
    if type(start.get("name")) is not str:
        raise CacheRefused("start.name")
    notes = start.get("notes", [])
    if type(notes) is not list or not all(type(n) is str for n in notes):
        raise CacheRefused("start.notes")


def _check_last_step(last: Any) -> None:
    _check_json(last, dict, allow_none=True)
    if last is None:
        return
    if last.get("step") is not None and not _ints(last["step"]):
        raise CacheRefused("last_step.step")
    if "layer_grad_norms" in last or "layer_update_ratios" in last:
        raise CacheRefused("last_step")
    if "epoch" in last and not (_number(last["epoch"]) and math.isfinite(last["epoch"])):
        raise CacheRefused("last_step.epoch")
    if "cuda_memory" in last:
        _check_readings(last["cuda_memory"])


def _check_system(system: Any) -> None:
    _check_json(system, dict, allow_none=True)
    if system is None:
        return
    _check_readings(system.get("host"))
    gpus = system.get("gpus")
    if type(gpus) is not list:
        raise CacheRefused("system.gpus")
    for gpu in gpus:
        _check_readings(gpu)
        if "index" in gpu and not _ints(gpu["index"]):
            raise CacheRefused("system.gpus")


def _check_readings(values: Any) -> None:
    """Numbers (finite), short texts and lists of numbers: what `_readings` keeps."""
    if type(values) is not dict:
        raise CacheRefused("readings")
    for value in values.values():
        if type(value) is list:
            _check_list_of_numbers(value, 1 << 16)
        elif type(value) is str:
            if len(value) > 200:
                raise CacheRefused("readings")
        elif not (_number(value) and math.isfinite(value)):
            raise CacheRefused("readings")


def _check_numbers(values: Any, limit: int, allow_int: bool = False) -> None:
    """A dict of names to floats (and ints, for metrics)."""
    if type(values) is not dict or len(values) > limit:
        raise CacheRefused("numbers")
    for name, value in values.items():
        if len(name) > 200 or not (type(value) is float or (allow_int and type(value) is int)):
            raise CacheRefused("numbers")


def _check_list_of_numbers(values: Any, limit: int) -> None:
    if type(values) is not list or len(values) > limit or not all(_number(v) for v in values):
        raise CacheRefused("numbers")


def _check_json(value: Any, kind: type, allow_none: bool = False) -> None:
    """`value` is of `kind`, nested at most MAX_DEPTH deep, its containers and texts bounded
    as RunState bounds what it keeps of an event."""
    if value is None and allow_none:
        return
    if type(value) is not kind:
        raise CacheRefused(f"not a {kind.__name__}")
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CacheRefused("nested too deep")
        if (type(item) is dict or type(item) is list) and len(item) > MAX_ENTRIES:
            raise CacheRefused("too many entries")
        if type(item) is dict:
            for key, inner in item.items():
                if len(key) > MAX_TEXT:
                    raise CacheRefused("text too long")
                stack.append((inner, depth + 1))
        elif type(item) is list:
            stack.extend((inner, depth + 1) for inner in item)
        elif type(item) is str and len(item) > MAX_TEXT:
            raise CacheRefused("text too long")


def _number(value: Any) -> TypeGuard[int | float]:
    return type(value) is float or (type(value) is int and abs(value) < 2**63)


def _int(value: Any, what: str) -> int:
    """A count or step (an int in [0, 2**63)), else CacheRefused(what)."""
    if type(value) is not int or not 0 <= value < 2**63:
        raise CacheRefused(what)
    return value


def _ints(*values: Any) -> bool:
    return all(type(v) is int and 0 <= v < 2**63 for v in values)
