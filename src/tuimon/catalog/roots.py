"""Where runs live: the roots a catalog scans, and the run directories directly under them.

A run directory is a directory holding `events.jsonl`. The runs of a machine are usually
under `runs/` (where every run tuimon starts goes by default); more roots come from
$TUIMON_ROOTS (a path list, like $PATH) or `--root DIR`. A root may itself be a run.
Only the directories directly under a root are runs: a distributed job's `ranks/<N>/` are
its ranks, not runs of their own. Scanning is stat-level and never writes; a root or entry
that cannot be read is skipped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from tuimon.run.run_dir import DEFAULT_BASE, EVENTS_FILE, RANKS_DIR

ROOTS_ENV = "TUIMON_ROOTS"  # os.pathsep-separated roots scanned besides runs/


def default_roots() -> list[Path]:
    """`runs/` (of the current directory) and each entry of $TUIMON_ROOTS, without repeats."""
    extra = os.environ.get(ROOTS_ENV, "")
    return _unique([DEFAULT_BASE, *(Path(p).expanduser() for p in extra.split(os.pathsep) if p)])


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a directory holding an event log (a regular file)."""
    try:
        return stat.S_ISREG(os.stat(path / EVENTS_FILE).st_mode)
    except (OSError, ValueError):
        return False


def find_run_dirs(roots: Sequence[Path]) -> list[Path]:
    """Every run directory directly under each root (or the root itself when it is one),
    each once; never a job's `ranks/<N>/`. Roots that are missing or unreadable give none."""
    return [run_dir for run_dir, _ in scan_run_dirs(roots)]


def scan_run_dirs(roots: Sequence[Path]) -> list[tuple[Path, os.stat_result]]:
    """find_run_dirs, with the stat of each run's event log (one stat per run: the
    catalog's rescan)."""
    found: list[tuple[Path, os.stat_result]] = []
    seen: set[tuple[int, int]] = set()  # each event log once, however it is reached
    for root in roots:
        root = Path(root)
        log = _log_stat(os.path.join(root, EVENTS_FILE))
        if log is not None:
            if (log.st_dev, log.st_ino) not in seen and not _is_rank_dir(root):
                seen.add((log.st_dev, log.st_ino))
                found.append((root, log))
            continue
        if root.name == RANKS_DIR and is_run_dir(root.parent):
            continue  # a job's ranks: they belong to the job
        try:
            with os.scandir(root) as entries:
                candidates = [(entry.name, entry.path) for entry in entries if _is_dir(entry)]
        except (OSError, ValueError):
            continue
        for name, path in sorted(candidates):
            log = _log_stat(os.path.join(path, EVENTS_FILE))
            if log is not None and (log.st_dev, log.st_ino) not in seen:
                seen.add((log.st_dev, log.st_ino))
                found.append((root / name, log))
    return found


def missing_roots(roots: Sequence[Path]) -> list[Path]:
    """The roots that are not directories (a typo in --root, a $TUIMON_ROOTS entry gone)."""
    return [Path(root) for root in roots if not Path(root).is_dir()]


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_rank_dir(path: Path) -> bool:
    """`<job>/ranks/<N>`: rank N of a distributed job, shown as part of its job."""
    parent = path.parent
    return parent.name == RANKS_DIR and path.name.isdigit() and is_run_dir(parent.parent)


def _log_stat(path: str) -> os.stat_result | None:
    """The stat of an event log that is a regular file, else None."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _unique(paths: Sequence[Path]) -> list[Path]:
    """Each directory once (by its real path), in order of first appearance."""
    seen: set[str] = set()
    kept: list[Path] = []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            kept.append(Path(path))
    return kept
