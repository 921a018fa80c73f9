"""The end of a log, read backwards in chunks, without reading the rest.

A run of 1e5 steps logs ~30 MB; a summary needs only its newest events (the last step,
the recent losses for a trend, the latest system sample, alerts and status changes). The
tail is read from the end in chunks until it holds `steps` step lines or `max_bytes`,
whichever comes first, and cut to whole lines: its first byte starts a line and its `end`
is the byte after its last newline (a torn last line, still being written, is left for
the next read, as LogReader leaves it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuimon.run.event_codec import decode_line

CHUNK_BYTES = 1 << 17  # 128 KiB per backwards read
MAX_TAIL_BYTES = 4 << 20  # never more than this per log, whatever its lines hold
RECENT_STEPS = 200  # step events wanted for the loss trend
STEP_MARK = b'"type":"step"'  # how the event log writes a step line (type first)
_STEP_PREFIX = b'{"type":"step"'
# Lines no summary reads, recognized without decoding them (the biggest lines of a log).
_UNREAD_PREFIXES = (b'{"type":"probe"',)


@dataclass
class LogTail:
    """Whole lines of a log's end, decoded: `events` in order, `skipped` damaged lines."""

    events: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0  # the window's first byte (0: the whole log was read)
    end: int = 0  # the byte after its last whole line
    size: int = 0  # the log's size when read
    bytes_read: int = 0
    skipped: int = 0


def read_tail(
    path: str | Path, steps: int = RECENT_STEPS, max_bytes: int = MAX_TAIL_BYTES
) -> LogTail:
    """The events at the end of the log at `path` (raises OSError when it cannot be read)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        chunks: list[bytes] = []
        position = size
        marks = 0
        while position > 0 and size - position < max_bytes and marks <= steps:
            length = min(CHUNK_BYTES, position, max_bytes - (size - position))
            position -= length
            file.seek(position)
            chunk = file.read(length)
            chunks.append(chunk)
            marks += chunk.count(STEP_MARK)
        data = b"".join(reversed(chunks))
    tail = LogTail(size=size, bytes_read=len(data))
    first = 0
    if position > 0:  # the window starts inside a line: that line is not whole
        newline = data.find(b"\n")
        first = len(data) if newline < 0 else newline + 1
    last = data.rfind(b"\n", first)
    tail.start = position + first
    tail.end = tail.start if last < 0 else position + last + 1
    if last < 0:
        return tail
    # Newest first: only the newest `steps` step lines are decoded; every other line of
    # the window is (alerts, status changes, samples), except probes, which no summary reads.
    events: list[dict[str, Any]] = []
    wanted = steps
    for line in reversed(data[first:last].split(b"\n")):
        if not line or line.isspace() or line.startswith(_UNREAD_PREFIXES):
            continue
        if line.startswith(_STEP_PREFIX):
            if wanted <= 0:
                continue
            wanted -= 1
        try:
            event = decode_line(line)
        except (ValueError, RecursionError):
            event = None
        if type(event) is dict:
            events.append(event)
        else:
            tail.skipped += 1
    events.reverse()
    tail.events = events
    return tail
