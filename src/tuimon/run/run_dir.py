"""Where a run keeps its files, and how runs are named and found."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tuimon.errors import UsageError

EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
OUTPUT_FILE = "output.log"
CONTROL_SOCKET = "control.sock"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_BASE = Path("runs")
# `tuimon run` tells the user's script (and its Monitor) where its run lives.
RUN_DIR_ENV = "TUIMON_RUN_DIR"


def create_run_dir(name: str, run_dir: str | Path | None = None, base: Path = DEFAULT_BASE) -> Path:
    """Make the directory of a new run: the given one, or `runs/<name>-<timestamp>/`."""
    if run_dir is not None:
        path = Path(run_dir)
        if (path / EVENTS_FILE).exists():
            raise UsageError(
                f"{path} already holds a run ({EVENTS_FILE} exists); "
                "choose a new --run-dir, or resume with train.resume"
            )
        path.mkdir(parents=True, exist_ok=True)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base / f"{name}-{stamp}"
        suffix = 1
        while True:
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                suffix += 1
                path = base / f"{name}-{stamp}-{suffix}"
    (path / CHECKPOINT_DIR).mkdir(exist_ok=True)
    return path.resolve()


def run_dir_from_env() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None
