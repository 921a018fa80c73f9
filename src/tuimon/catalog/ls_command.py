"""`tuimon ls`: every run under the roots as a plain table, or as JSON, for scripts and cron.

The table is the runs screen's without a terminal UI: one line per run, newest start
first. Everything in it that a log supplied (names, alert rules) goes through
terminal_text.printable, so no escape sequence in a log reaches the terminal; `--json`
escapes control characters itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tuimon.catalog.catalog import RunCatalog
from tuimon.catalog.roots import ROOTS_ENV, default_roots, missing_roots
from tuimon.catalog.run_summary import CATALOG_STATUSES, RunSummary
from tuimon.errors import EXIT_OK
from tuimon.number_text import MISSING, format_duration, format_value, human_bytes
from tuimon.terminal_text import printable

HEADER = ("RUN", "STATE", "STEP", "LOSS", "ALERT", "GPU", "STARTED", "DURATION")
TREND_FLAT = 0.01  # a relative change of the mean loss below this reads as flat
RISING, FALLING, FLAT = "↑", "↓", "→"
MAX_CELL = 40  # a cell longer than this is cut, with an ellipsis


def ls_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tuimon ls",
        description=(
            "List every run under the roots: runs/ and the directories in "
            f"${ROOTS_ENV} (a {os.pathsep}-separated list), or the --root directories."
        ),
    )
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of runs (repeatable; replaces the default roots)",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list, one object per run")
    parser.add_argument(
        "--state",
        action="append",
        default=[],
        choices=CATALOG_STATUSES,
        metavar="STATE",
        help=f"only runs in this state (repeatable): {', '.join(CATALOG_STATUSES)}",
    )
    options = parser.parse_args(args)
    roots = [Path(root) for root in options.root] or default_roots()
    for root in missing_roots(roots):
        print(f"tuimon ls: no such directory: {printable(root)}", file=sys.stderr)
    summaries = RunCatalog(roots).complete_alerts()
    if options.state:
        summaries = [s for s in summaries if s.status in options.state]
    try:
        if options.json:
            print(json.dumps([s.to_json() for s in summaries], indent=None))
        elif summaries:
            print(format_table(summaries, time.time()))
        else:
            where = ", ".join(printable(root) for root in roots)
            kind = f" in state {', '.join(options.state)}" if options.state else ""
            print(f"no runs{kind} under {where}")
        sys.stdout.flush()
    except BrokenPipeError:  # `tuimon ls | head`: stop quietly, as a tool killed by SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return EXIT_OK


def format_table(summaries: Sequence[RunSummary], now: float) -> str:
    """The runs as aligned columns under a header."""
    rows = [HEADER, *(table_row(summary, now) for summary in summaries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def table_row(summary: RunSummary, now: float) -> tuple[str, ...]:
    """One run's cells, each safe to print."""
    return (
        _cell(summary.run_dir.name),
        summary.status,
        step_text(summary),
        loss_text(summary),
        _cell(alert_text(summary)),
        gpu_text(summary),
        _started(summary.started, now),
        format_duration(summary.duration) if summary.duration is not None else MISSING,
    )


def step_text(summary: RunSummary) -> str:
    if summary.step is None:
        return MISSING
    return f"{summary.step}/{summary.total_steps}" if summary.total_steps else str(summary.step)


def loss_text(summary: RunSummary) -> str:
    """The last loss and an arrow for its trend: ↓ falling, ↑ rising, → flat."""
    if summary.loss is None:
        return MISSING
    return f"{format_value(summary.loss)} {trend_arrow(summary.loss_trend)}".rstrip()


def trend_arrow(trend: float | None) -> str:
    if trend is None:
        return ""
    if trend <= -TREND_FLAT:
        return FALLING
    return RISING if trend >= TREND_FLAT else FLAT


def alert_text(summary: RunSummary) -> str:
    """The worst open alert as "error lr_too_high", with "+N" for the other open ones."""
    alert = summary.alert
    if not alert:
        return ""
    text = f"{alert.get('severity') or '?'} {alert.get('rule')}"
    return text + (f" +{summary.alerts_open - 1}" if summary.alerts_open > 1 else "")


def gpu_text(summary: RunSummary) -> str:
    if not summary.gpus:
        return ""
    indices = ",".join(map(str, summary.gpus))
    return f"{indices} {human_bytes(summary.gpu_mem)}" if summary.gpu_mem else indices


def _started(started: float | None, now: float) -> str:
    if started is None:
        return MISSING
    same_day = time.localtime(started)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(started))


def _cell(text: str) -> str:
    text = printable(text, keep_newlines=False)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
