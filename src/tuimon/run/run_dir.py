"""Where a run keeps its files, and how runs are named and found.

A run directory is refused, as git refuses a repository of "dubious ownership", when it
belongs to another user, holds files tuimon did not put there, or holds a symlink where
tuimon writes: any of these could make the worker overwrite or create files outside the
run. A directory tuimon prepared but that has no run yet (the UI's worker, a `tuimon run`
script) is used as it is.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

from tuimon.errors import UsageError
from tuimon.run.private_files import (
    create_private_file,
    is_temp_name,
    make_private_dir,
    remove_leftover_temp_files,
    restrict_dir,
)

EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.yaml"
OUTPUT_FILE = "output.log"
CONTROL_SOCKET = "control.sock"
CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"  # a finished run's state, for a fast replay (run/replay_cache.py)
RANKS_DIR = "ranks"  # a distributed job: ranks/<N>/ is rank N's own run directory
DEFAULT_BASE = Path("runs")
# A run's name becomes part of its directory's name.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# `tuimon run` tells the user's script (and its Monitor) where its run lives, and passes
# its switches: "1" turns autofix on (`tuimon run --autofix`), or keeps the Monitor quiet.
RUN_DIR_ENV = "TUIMON_RUN_DIR"
AUTOFIX_ENV = "TUIMON_AUTOFIX"
QUIET_ENV = "TUIMON_QUIET"
# `tuimon run --notify URL|COMMAND`: where the script's Monitor sends notifications.
NOTIFY_ENV = "TUIMON_NOTIFY"
# What a run directory may hold, and of which kind; anything else is not tuimon's.
_RUN_ENTRIES = {
    EVENTS_FILE: stat.S_ISREG,
    CONFIG_FILE: stat.S_ISREG,
    OUTPUT_FILE: stat.S_ISREG,
    CONTROL_SOCKET: stat.S_ISSOCK,
    CHECKPOINT_DIR: stat.S_ISDIR,
    STATE_FILE: stat.S_ISREG,
    RANKS_DIR: stat.S_ISDIR,
}
_HOW_TO_PROCEED = (
    "use a new or empty directory of your own (or no --run-dir: runs/NAME-TIME/ is made)"
)


def create_run_dir(name: str, run_dir: str | Path | None = None, base: Path = DEFAULT_BASE) -> Path:
    """Make the directory of a new run: the given one, or `runs/<name>-<timestamp>/`."""
    if run_dir is not None:
        path = open_run_dir(Path(run_dir))
        if (path / EVENTS_FILE).exists():
            raise UsageError(
                f"{path} already holds a run ({EVENTS_FILE} exists); "
                "choose a new --run-dir, or resume with train.resume"
            )
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base / f"{name}-{stamp}"
        suffix = 1
        while not make_private_dir(path):
            suffix += 1
            path = base / f"{name}-{stamp}-{suffix}"
        path = path.resolve()
    return _prepare(path)


def open_run_dir(path: Path) -> Path:
    """Create `path`, or check that the existing one may hold this run; returns it resolved.

    UsageError (exit 2) when it belongs to another user, holds what tuimon did not put
    there, or a symlink where tuimon writes.
    """
    try:
        if make_private_dir(path):
            return path.resolve()
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
        raise UsageError(f"cannot create run directory {path}: {exc.strerror}{where}") from None
    resolved = path.resolve()
    try:
        info = resolved.stat()
    except OSError as exc:
        raise UsageError(f"cannot use {path} as a run directory: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"cannot use {path} as a run directory: it is not a directory")
    if info.st_uid != os.geteuid():
        raise UsageError(
            f"refusing run directory {path}: it is owned by {_user(info.st_uid)}, not by "
            f"you ({_user(os.geteuid())}). Another user's directory can hold links that "
            f"make tuimon overwrite files outside the run; {_HOW_TO_PROCEED}, or have its "
            "owner chown it to you"
        )
    unexpected: list[str] = []
    for entry in sorted(os.listdir(resolved)):
        if is_temp_name(entry):
            continue  # a write killed midway: removed below
        if entry not in _RUN_ENTRIES:
            unexpected.append(entry)
            continue
        _check_entry(path, resolved, entry, _RUN_ENTRIES[entry])
        if entry == CHECKPOINT_DIR:
            for inner in sorted(os.listdir(resolved / entry)):
                _check_entry(path, resolved, f"{entry}/{inner}", None)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (", …" if len(unexpected) > 5 else "")
        raise UsageError(
            f"refusing run directory {path}: it is not empty and not a tuimon run "
            f"directory (it holds {shown}); {_HOW_TO_PROCEED}"
        )
    restrict_dir(resolved)
    return resolved


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
        for candidate in candidates:
            path = open_run_dir(candidate)
            try:
                create_private_file(path / EVENTS_FILE)
            except FileExistsError:
                continue
            return _prepare(path)
        candidates = [given.with_name(f"{given.name}-{name}-{suffix}")]
        suffix += 1


def rank_run_dir(job_dir: Path, rank: int, name: str) -> Path:
    """Rank N's own run directory in a distributed job: `<job_dir>/ranks/<N>/`.

    The job's directory and its `ranks/` are checked like any run directory (this user's,
    no symlink where tuimon writes) before anything is created inside them."""
    job = open_run_dir(job_dir)
    ranks = job / RANKS_DIR
    make_private_dir(ranks)
    _check_entry(job_dir, job, RANKS_DIR, stat.S_ISDIR)
    return create_run_dir(name, ranks / str(rank))


def _prepare(path: Path) -> Path:
    """The checkpoint directory, and no temporary files left by a writer that was killed."""
    make_private_dir(path / CHECKPOINT_DIR)
    remove_leftover_temp_files(path)
    remove_leftover_temp_files(path / CHECKPOINT_DIR)
    return path


def _check_entry(
    run_dir: Path, resolved: Path, where: str, is_kind: Callable[[int], bool] | None
) -> None:
    """A file tuimon writes must be of its kind and this user's, and never a symlink."""
    entry = resolved / where
    info = entry.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(
            f"refusing run directory {run_dir}: {where} is a symlink (to "
            f"{os.readlink(entry)}), where tuimon writes a file of its own; "
            f"remove it, or {_HOW_TO_PROCEED}"
        )
    if info.st_uid != os.geteuid():
        raise UsageError(
            f"refusing run directory {run_dir}: {where} is owned by {_user(info.st_uid)}, "
            f"not by you; {_HOW_TO_PROCEED}"
        )
    if is_kind is not None and not is_kind(info.st_mode):
        raise UsageError(
            f"refusing run directory {run_dir}: {where} is not what tuimon keeps under "
            f"that name; {_HOW_TO_PROCEED}"
        )


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
