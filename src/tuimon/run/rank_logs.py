"""The logs of a distributed job's other ranks: `ranks/<N>/events.jsonl` in its run directory.

Rank 0 writes the job's log (`events.jsonl` at the root); every other rank N writes its own
under `ranks/N/`. Replay and `tuimon doctor` read them for what only those ranks know:
how far each got, how it ended and why, and where its loss went NaN. Each log is streamed
(it can be as long as the job's), folded into one `RankSummary`; damaged lines are skipped
and counted as for any log (`run/log_reader.py`).

Nothing under `ranks/` is trusted to point inside the run: a symlink at `ranks`, at
`ranks/N` or at its `events.jsonl` is not followed, so a planted link cannot make a reader
show another file as a rank's log.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuimon.run.events import (
    COMPLETED,
    END,
    END_STATUSES,
    RUNNING,
    START,
    STEP,
    RankSummary,
    RunStatus,
)
from tuimon.run.field_types import as_dict, as_list, as_number, as_step
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import EVENTS_FILE, RANKS_DIR

MAX_ERROR_CHARS = 20_000  # of an end's traceback kept in a summary (its tail: the error)


@dataclass
class RankLog:
    """One rank's log folded as it is read: its summary, plus what a report says of it."""

    rank: int
    summary: RankSummary = field(init=False)
    nonfinite_steps: int = 0  # steps whose loss was NaN or inf
    first_nonfinite_step: int | None = None
    skipped: int = 0  # damaged lines left out
    damage: str | None = None  # the damaged lines, in words

    def __post_init__(self) -> None:
        self.summary = {"rank": self.rank, "status": RUNNING, "nonfinite_step": None}

    def add(self, event: dict[str, Any]) -> None:
        """Fold one event of this rank's log into its summary."""
        kind = event.get("type")
        if kind == STEP:
            self._on_step(event)
        elif kind == START:
            self._on_start(event)
        elif kind == END:
            self._on_end(event)

    def _on_start(self, event: dict[str, Any]) -> None:
        host, pid = event.get("host"), event.get("pid")
        if isinstance(host, str):
            self.summary["host"] = host
        if type(pid) is int and pid > 0:
            self.summary["pid"] = pid
        device = as_dict(event.get("device"))
        kind, index = device.get("type"), device.get("index")
        if isinstance(kind, str):
            self.summary["device"] = f"{kind}:{index}" if type(index) is int else kind
        # Its identity as the job's start lists it, when this rank's start carries it too.
        for entry in as_list(as_dict(event.get("distributed")).get("ranks")):
            entry = as_dict(entry)
            if entry.get("rank") != self.rank:
                continue
            local_rank, node = as_step(entry.get("local_rank")), as_step(entry.get("node"))
            if local_rank is not None:
                self.summary["local_rank"] = local_rank
            if node is not None:
                self.summary["node"] = node
            if isinstance(entry.get("device"), str):
                self.summary["device"] = entry["device"]

    def _on_step(self, event: dict[str, Any]) -> None:
        step = as_step(event.get("step"))
        if step is None:
            return
        self.summary["step"] = step
        step_time, data_time = _finite(event.get("step_time")), _finite(event.get("data_time"))
        rate = _finite(event.get("samples_per_s"))
        if step_time is not None:
            self.summary["step_time"] = step_time
        if data_time is not None:
            self.summary["data_time"] = data_time
        if rate is not None:
            self.summary["samples_per_s"] = rate
        loss = event.get("loss")
        if type(loss) is float and not math.isfinite(loss):
            self.summary["nonfinite_step"] = step
            self.nonfinite_steps += 1
            if self.first_nonfinite_step is None:
                self.first_nonfinite_step = step

    def _on_end(self, event: dict[str, Any]) -> None:
        status: Any = event.get("status")
        ended: RunStatus = status if status in END_STATUSES else COMPLETED
        self.summary["status"] = ended
        step = as_step(event.get("step"))
        if step is not None:
            self.summary["step"] = step
        error = event.get("error")
        if isinstance(error, str) and error:
            self.summary["error"] = error[-MAX_ERROR_CHARS:]


def rank_log_paths(run_dir: Path) -> dict[int, Path]:
    """{rank: its log} for every `ranks/<N>/events.jsonl` that exists, by rank.

    Only real directories and regular files count: a name that is not a rank number,
    and a symlink anywhere below the run directory, are left out."""
    ranks = Path(run_dir) / RANKS_DIR
    if not _is_real(ranks, stat.S_ISDIR):
        return {}
    found: dict[int, Path] = {}
    try:
        entries = list(os.scandir(ranks))
    except OSError:
        return {}
    for entry in entries:
        rank = _rank_number(entry.name)
        if rank is None:
            continue
        try:
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        log = ranks / entry.name / EVENTS_FILE
        if _is_real(log, stat.S_ISREG):
            found[rank] = log
    return dict(sorted(found.items()))


def read_rank_log(rank: int, path: Path) -> RankLog:
    """One rank's log, streamed: one event at a time, so memory stays flat."""
    folded = RankLog(rank)
    reader = read_events(path)
    for event in reader:
        folded.add(event)
    folded.skipped = reader.skipped
    folded.damage = reader.damage_note()
    return folded


def read_rank_log_details(run_dir: Path) -> list[RankLog]:
    """Every other rank's log of a job's run directory, folded, by rank (unreadable ones
    are left out: a log removed or made unreadable while being listed)."""
    logs = []
    for rank, path in rank_log_paths(run_dir).items():
        try:
            logs.append(read_rank_log(rank, path))
        except OSError:
            continue
    return logs


def read_rank_logs(run_dir: Path) -> list[RankSummary]:
    """One summary per rank log of the job (`ranks/<N>/events.jsonl`), by rank: rank,
    host, pid (its start), last step, status (its end's, else running), error (its end's)
    and nonfinite_step (the last step whose loss was NaN or inf)."""
    return [log.summary for log in read_rank_log_details(run_dir)]


def _rank_number(name: str) -> int | None:
    """A directory name as a rank: "3", not "03", "+3", " 3" or "x"."""
    if not name.isascii() or not name.isdigit() or len(name) > 9:
        return None
    rank = int(name)
    return rank if str(rank) == name else None


def _finite(value: Any) -> float | None:
    number = as_number(value)
    return number if math.isfinite(number) else None


def _is_real(path: Path, kind: Any) -> bool:
    """Whether `path` itself (not what a symlink there points at) is of this kind."""
    try:
        return bool(kind(path.lstat().st_mode))
    except OSError:
        return False
