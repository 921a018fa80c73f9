"""`tuimon` alone (or `tuimon runs`, `tuimon --root DIR`): the runs screen, and the run
UIs opened from it, one after the other in this terminal (with stdout not a terminal:
`tuimon ls`'s table instead).

The runs screen exits with the run to open; its own UI (attached to a live worker, or a
replay of the log) runs here until its `q`, then the runs screen comes back with the same
filter, sort, selection and cursor, and the catalog it had already read.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from tuimon.errors import EXIT_OK, UsageError

if TYPE_CHECKING:
    from tuimon.catalog.catalog import RunCatalog


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuimon",
        exit_on_error=False,
        description="Every run on this machine, live: the runs screen.",
        epilog="Without --root: runs/ and each directory of $TUIMON_ROOTS (separated like $PATH).",
    )
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory holding runs (or a run); repeat for several",
    )
    return parser


def parse_roots(args: list[str]) -> list[Path]:
    """The roots the screen scans: each --root, else the documented default list."""
    from tuimon.catalog.roots import default_roots

    parser = _parser()
    try:
        options, extra = parser.parse_known_args(args)
    except argparse.ArgumentError as exc:  # --root without its DIR
        raise UsageError(f"{exc}: tuimon [runs] [--root DIR ...]") from None
    if extra:
        raise UsageError(
            f"unexpected argument(s) {' '.join(extra)}: tuimon [runs] [--root DIR ...]"
        )
    return [Path(root).expanduser() for root in options.root] or default_roots()


def start_first_read(roots: list[Path]) -> RunCatalog:
    """The catalog, its first read (every log's head and tail: most of the time to a full
    table) already under way on a thread while Textual is imported and the app starts;
    the screen's first refresh waits for it on the catalog's lock, then reads only what
    is new."""
    from tuimon.catalog.catalog import RunCatalog

    catalog = RunCatalog(roots)
    threading.Thread(target=catalog.refresh, name="tuimon-first-read", daemon=True).start()
    return catalog


def runs_command(args: list[str]) -> int:
    roots = parse_roots(args)
    if not sys.stdout.isatty():
        # `tuimon > runs.txt`, `tuimon | grep`, cron: the same runs as a table, no UI.
        from tuimon.catalog.ls_command import ls_command

        return ls_command(args)
    catalog = start_first_read(roots)
    if os.environ.get("SSH_CONNECTION"):
        # Fewer, cheaper frames over the network; set before Textual is imported.
        os.environ.setdefault("TEXTUAL_FPS", "5")
        os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    from tuimon.launch import run_app
    from tuimon.system.nvml import NVML
    from tuimon.ui.runs_app import RunsApp
    from tuimon.ui.runs_view import OPEN_REPLAY, RunsViewState

    view = RunsViewState()
    nvml = NVML()
    try:
        while True:
            choice = RunsApp(roots, catalog=catalog, view=view, nvml=nvml).run()
            if choice is None:
                return EXIT_OK
            how, run_dir = choice
            run_app(run_dir, replay=how == OPEN_REPLAY)
    finally:
        nvml.shutdown()
