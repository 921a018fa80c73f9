"""Alerts still open at a finished run's end, from its state.json, not from its log.

A summary reads only the tail of a log, so an alert that fired early in a long run and was
never cleared is not in it. A finished run leaves `state.json` (run/replay_cache.py), whose
snapshot lists every alert it kept, a cleared one with `cleared_at`. It is read like the
replay cache reads it: JSON only (never pickle), a regular file of this user opened
without following a symlink, bounded in size, used only while it stands for the log (its
`log_bytes` within the log, at the end of a line); each alert is checked field by field.
Anything unexpected means no cached alerts, never an error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from tuimon.catalog.run_summary import compact_alert
from tuimon.run.event_codec import decode_line
from tuimon.run.replay_cache import CACHE_FORMAT, CACHE_VERSION, MAX_CACHE_BYTES
from tuimon.run.run_dir import EVENTS_FILE, STATE_FILE

CLEARED_AT = "cleared_at"  # RunState marks an alert whose episode ended with this


def cached_open_alerts(run_dir: Path, log_size: int) -> dict[str, dict[str, Any]]:
    """rule → the newest open alert of that rule, in the order they fired; {} without a
    usable cache. `log_size`: the log's size as the caller read it."""
    try:
        document = _read(run_dir / STATE_FILE)
        if document is None or not _stands_for_log(run_dir / EVENTS_FILE, document, log_size):
            return {}
        snapshot = document.get("snapshot")
        alerts = snapshot.get("alerts") if type(snapshot) is dict else None
        if type(alerts) is not list:
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
    except Exception:  # a cache: whatever it holds, the answer is "none from it"
        return {}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        if info.st_size > MAX_CACHE_BYTES:
            return None
        raw = file.read(MAX_CACHE_BYTES + 1)
    if len(raw) > MAX_CACHE_BYTES:
        return None
    document = decode_line(raw)
    if type(document) is not dict:
        return None
    if document.get("format") != CACHE_FORMAT or document.get("cache_version") != CACHE_VERSION:
        return None
    return document


def _stands_for_log(log: Path, document: dict[str, Any], log_size: int) -> bool:
    """The cache was written for this log: its position within it, at a line's end."""
    log_bytes = document.get("log_bytes")
    if type(log_bytes) is not int or not 0 < log_bytes <= log_size:
        return False
    with open(log, "rb") as file:
        file.seek(log_bytes - 1)
        return file.read(1) == b"\n"
