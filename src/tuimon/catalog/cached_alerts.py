"""Alerts still open at a finished run's end, from its state.json, not from its log.

A summary reads only the tail of a log, so an alert that fired early in a long run and was
never cleared is not in it. A finished run leaves `state.json` (run/replay_cache.py), whose
snapshot lists every alert it kept, a cleared one with `cleared_at`. It is read as the
replay cache reads it (a regular file of this user, opened without following a symlink,
bounded in size, JSON only, never pickle), used only while it stands for the log (its
`log_bytes` within the log, at the end of a line), but only its `alerts` list is decoded,
not the series that make most of it: a cache of a long run decodes in milliseconds.
Each alert is checked field by field; anything unexpected means no cached alerts, never an
error.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path
from typing import Any

from tuimon.catalog.run_summary import compact_alert
from tuimon.run.event_codec import decode_line
from tuimon.run.run_dir import EVENTS_FILE, STATE_FILE

CLEARED_AT = "cleared_at"  # RunState marks an alert whose episode ended with this
_HEAD_BYTES = 200
_ALERTS_KEY = b'"alerts":['
_NEXT_KEY = b',"messages":['


def cached_open_alerts(run_dir: Path, log_size: int) -> dict[str, dict[str, Any]]:
    """rule → the newest open alert of that rule, in the order they fired; {} without a
    usable cache. `log_size`: the log's size as the caller read it."""
    try:
        raw = _read(run_dir / STATE_FILE)
        head = _head().match(raw[:_HEAD_BYTES]) if raw is not None else None
        if raw is None or head is None:
            return {}
        if not _stands_for_log(run_dir / EVENTS_FILE, int(head["log_bytes"]), log_size):
            return {}
        alerts = _alerts_list(raw)
    except Exception:  # a cache: whatever it holds, the answer is "none from it"
        return {}
    latest: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        if type(alert) is not dict or type(alert.get("rule")) is not str:
            continue
        rule = alert["rule"]
        latest.pop(rule, None)
        latest[rule] = alert
    return {
        rule: compact_alert(alert)
        for rule, alert in latest.items()
        if alert.get(CLEARED_AT) is None
    }


@functools.cache
def _head() -> re.Pattern[bytes]:
    """How the replay cache begins (orjson, keys in write_state_cache's order). Imported
    here, not at the top: the replay cache brings numpy, which `tuimon ls` needs only for
    a long finished run."""
    from tuimon.run.replay_cache import CACHE_FORMAT, CACHE_VERSION

    return re.compile(
        rb'\{"format":"%s","cache_version":%d,"log_bytes":(?P<log_bytes>[0-9]{1,18}),'
        % (CACHE_FORMAT.encode(), CACHE_VERSION)
    )


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        from tuimon.run.replay_cache import MAX_CACHE_BYTES

        if info.st_size > MAX_CACHE_BYTES:
            return None
        raw = file.read(MAX_CACHE_BYTES + 1)
    return raw if len(raw) <= MAX_CACHE_BYTES else None


def _alerts_list(raw: bytes) -> list[Any]:
    """The snapshot's `alerts` list, decoded alone: the text between an `"alerts":` key
    and the `"messages"` key that follows it in a snapshot (run_state.py's order) that
    decodes as one list. The series before it (most of the file) are never decoded."""
    position = 0
    while (found := raw.find(_ALERTS_KEY, position)) >= 0:
        position = found + len(_ALERTS_KEY)
        end = raw.find(_NEXT_KEY, position)
        if end < 0:
            return []
        try:
            value = decode_line(raw[position - 1 : end])
        except (ValueError, RecursionError):
            continue
        if type(value) is list:
            return value
    return []


def _stands_for_log(log: Path, log_bytes: int, log_size: int) -> bool:
    """The cache was written for this log: its position within it, at a line's end."""
    if not 0 < log_bytes <= log_size:
        return False
    with open(log, "rb") as file:
        file.seek(log_bytes - 1)
        return file.read(1) == b"\n"
