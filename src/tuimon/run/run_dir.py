"""Where a run keeps its files, and how runs are named and found."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tuimon.errors import UsageError

EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
OUTPUT_FILE = "output.log"
CONTROL_SOCKET = "control.sock"
CHECKPOINT_DIR = "checkpoints"
DEFAULT_BASE = Path("runs")
# A run's name becomes part of its directory's name.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# `tuimon run` tells the user's script (and its Monitor) where its run lives, and passes
# its switches: "1" turns autofix on (`tuimon run --autofix`), or keeps the Monitor quiet.
RUN_DIR_ENV = "TUIMON_RUN_DIR"
AUTOFIX_ENV = "TUIMON_AUTOFIX"
QUIET_ENV = "TUIMON_QUIET"


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


def flag_from_env(name: str) -> bool:
    """A switch `tuimon run` passed to the script's Monitor (AUTOFIX_ENV, QUIET_ENV)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def claim_script_run_dir(name: str, base: Path = DEFAULT_BASE) -> Path:
    """Where a script's Monitor logs when it was given no `run_dir`.

    Under `tuimon run` (RUN_DIR_ENV set) the first Monitor of the script takes that
    directory and each later one (a GAN's second network) a sibling `<dir>-<name>`, so
    every Monitor has its own run. Without it: `runs/<name>-<timestamp>/`. A directory
    is claimed by creating its event log exclusively, so two Monitors never share one.
    """
    given = run_dir_from_env()
    if given is None:
        return create_run_dir(name, base=base)
    candidates = [given, given.with_name(f"{given.name}-{name}")]
    suffix = 2
    while True:
        for path in candidates:
            path.mkdir(parents=True, exist_ok=True)
            try:
                (path / EVENTS_FILE).open("x").close()
            except FileExistsError:
                continue
            (path / CHECKPOINT_DIR).mkdir(exist_ok=True)
            return path.resolve()
        candidates = [given.with_name(f"{given.name}-{name}-{suffix}")]
        suffix += 1
