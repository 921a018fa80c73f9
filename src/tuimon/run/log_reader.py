"""Reading `events.jsonl`: the events of a run, for replay, attach and the doctor.

A log can be damaged (a disk that filled, a kill mid-write, a bit flip, a hand edit, a
hostile writer), and a damaged line must cost the reader no more than that line: it is
skipped and counted, so a caller can say "N damaged lines skipped" instead of showing
nothing or crashing. A line longer than MAX_LINE_BYTES is skipped without being held in
memory whole. The last line of a run that is still writing may be torn: it is not an
event yet, and not damage either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuimon.run.event_codec import decode_line

Event = dict[str, Any]

MAX_LINE_BYTES = 1 << 20  # no event tuimon writes comes near this
KEPT_LINE_NUMBERS = 10  # of damaged lines, to point at


class LogReader:
    """The events of a log, in order; `skipped` counts the damaged lines left out so far
    (`skipped_lines` names the first few, 1-based), `torn` says the log ends mid-line.

    `end_offset` is the byte after the last whole line read so far (never inside a torn
    last line): where a reader that follows a growing log goes on from next time."""

    def __init__(self, path: str | Path, max_line: int = MAX_LINE_BYTES, offset: int = 0) -> None:
        self.path = Path(path)
        self.max_line = max_line
        self.offset = (
            offset  # where reading starts: a line's first byte (line numbers count from it)
        )
        self.skipped = 0
        self.skipped_lines: list[int] = []
        self.torn = False
        self.end_offset = offset
        self._events = self._read()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def _read(self) -> Iterator[Event]:
        with self.path.open("rb") as file:
            if self.offset:
                file.seek(self.offset)
            readline = file.readline
            limit = self.max_line + 1  # the newline
            number = 0
            while line := readline(limit):
                number += 1
                if not line.endswith(b"\n"):
                    if len(line) < limit:
                        self.torn = True  # the end of the file: still being written
                        return
                    rest = _skip_rest_of_line(readline, limit)
                    if rest is None:
                        self.torn = True
                        return
                    self.end_offset += len(line) + rest
                    self._skip(number)
                    continue
                self.end_offset += len(line)
                if line.isspace():
                    continue
                try:
                    event = decode_line(line)
                except (ValueError, RecursionError):
                    event = None
                if type(event) is dict:
                    yield event
                else:
                    self._skip(number)

    def _skip(self, number: int) -> None:
        self.skipped += 1
        if len(self.skipped_lines) < KEPT_LINE_NUMBERS:
            self.skipped_lines.append(number)

    def damage_note(self) -> str | None:
        """ "3 damaged lines skipped (lines 4, 9, 12)", or None for a sound log."""
        return damage_note(self.skipped, self.skipped_lines)


def damage_note(skipped: int, lines: list[int]) -> str | None:
    if not skipped:
        return None
    where = ", ".join(map(str, lines)) + (", …" if skipped > len(lines) else "")
    noun = "line" if skipped == 1 else "lines"
    return f"{skipped} damaged {noun} skipped ({noun} {where})"


def _skip_rest_of_line(readline: Any, limit: int) -> int | None:
    """Read past the rest of an over-long line, a chunk at a time: the bytes read, or None
    if the file ended before its newline."""
    read = 0
    while chunk := readline(limit):
        read += len(chunk)
        if chunk.endswith(b"\n"):
            return read
    return None


def read_events(path: str | Path, offset: int = 0) -> LogReader:
    """Events of a log, skipping (and counting, in `.skipped`) damaged lines and a torn
    last line of a run that is still writing; from byte `offset` (the start of a line) on."""
    return LogReader(path, offset=offset)


def count_lines(path: str | Path, end: int) -> int:
    """Lines in the first `end` bytes of a file: to number lines read from an offset."""
    lines = 0
    with Path(path).open("rb") as file:
        while end > 0 and (chunk := file.read(min(end, 1 << 20))):
            lines += chunk.count(b"\n")
            end -= len(chunk)
    return lines
