"""Progress of a long export on stderr: bytes of the log read out of its size.

On a terminal, one line redrawn in place with a carriage return (no escape sequence), wiped
when done. Elsewhere (a pipe, a file, CI) nothing by default; asked for (--progress), a plain
line at every tenth, so a log file gets no control characters. How often it draws depends on
bytes read, not on time: a fixed number of redraws however long the log.
"""

from __future__ import annotations

from typing import TextIO

from tuimon.number_text import human_bytes

BAR_CELLS = 24
TERMINAL_STEPS = 200  # redraws on a terminal, per pass
PLAIN_STEPS = 10  # lines elsewhere, per pass


class ProgressBar:
    """`update(done)` with bytes read so far of `total` (over every pass)."""

    def __init__(self, stream: TextIO, total: int, *, enabled: bool, terminal: bool) -> None:
        self.stream = stream
        self.total = max(total, 1)
        self.enabled = enabled
        self.terminal = terminal
        self.label = "reading"
        self._steps = TERMINAL_STEPS if terminal else PLAIN_STEPS
        self._shown = -1  # the last step drawn
        self._width = 0  # of the line drawn on a terminal

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        step = min(done, self.total) * self._steps // self.total
        if step != self._shown:
            self._shown = step
            self._draw(done)

    def _draw(self, done: int) -> None:
        share = min(done, self.total) / self.total
        filled = round(share * BAR_CELLS)
        text = (
            f"tuimon export: {self.label} {share:4.0%} "
            f"({human_bytes(min(done, self.total))} of {human_bytes(self.total)})"
        )
        if self.terminal:
            bar = "█" * filled + "░" * (BAR_CELLS - filled)
            line = f"{text} {bar}"
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Wipe the bar from a terminal's line (the summary is printed after it)."""
        if self.enabled and self.terminal and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
