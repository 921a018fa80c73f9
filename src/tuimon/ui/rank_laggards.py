"""Which ranks of a distributed job hold it back, from rank 0's latest `ranks` report.

The rank strip and the rank table highlight these; the doctor's `straggler` and
`stalled_rank` rules judge the same facts over time (sustained), this only says what the
latest report shows. Pure: no Textual, so it is tested on made-up summaries.

A laggard is a rank that is dead (its process is gone, on rank 0's host), failed, had a
NaN/inf loss, is silent (rank 0 has not heard from it for `silent_after` seconds) or stuck
(its step has not moved for that long while another rank's has), is behind the others'
newest step by more than a couple of steps (beyond what the age of its report explains),
or whose step time or data time is well above the median of the other ranks'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from tuimon.number_text import format_duration
from tuimon.run.events import (
    COMPLETED,
    END_STATUSES,
    ERROR,
    FAILED,
    STOPPED,
    WARNING,
    RankSummary,
)
from tuimon.run.field_types import as_number

# Why a rank is a laggard, worst first (a rank's reasons are listed in this order).
DEAD: Final = "dead"
FAILED_RANK: Final = "failed"
NONFINITE: Final = "non-finite"
SILENT: Final = "silent"
STUCK: Final = "stuck"
BEHIND: Final = "behind"
SLOW_STEP: Final = "slow step"
SLOW_DATA: Final = "slow data"
Reason = Literal[
    "dead", "failed", "non-finite", "silent", "stuck", "behind", "slow step", "slow data"
]
REASONS: Final[tuple[Reason, ...]] = (
    DEAD,
    FAILED_RANK,
    NONFINITE,
    SILENT,
    STUCK,
    BEHIND,
    SLOW_STEP,
    SLOW_DATA,
)
# The job cannot go on past these (a collective waits on the rank forever); the others
# only slow it down.
BLOCKING: Final[frozenset[Reason]] = frozenset({DEAD, FAILED_RANK, NONFINITE, SILENT, STUCK})
ENDED: Final = (COMPLETED, STOPPED)  # ended well: not dead when its process is gone
DEFAULT_RANK_TIMEOUT: Final = 30.0  # seconds: monitor.rank_timeout's default
ERROR_WORDS: Final = 120  # characters of a failed rank's error shown


@dataclass(frozen=True)
class LaggardLimits:
    """How far from the others a rank must be to be named."""

    steps_behind: int = 2  # steps behind the newest…
    # …and more than this many seconds' worth of steps (beyond what its report's age
    # explains): reports lag the steps (a rank reports every 0.5 s, rank 0 reads them every
    # 0.5 s, a rank's steps reach its report about once a second), so ranks in lockstep
    # show steps this far apart at any rate.
    behind_seconds: float = 3.0
    slow_factor: float = 1.5  # step or data time this many times the others' median…
    slow_seconds: float = 0.005  # …and at least this many seconds above it
    silent_after: float = DEFAULT_RANK_TIMEOUT  # seconds without news, or without a step


@dataclass(frozen=True)
class Laggard:
    rank: int
    reasons: tuple[Reason, ...]  # worst first
    words: str  # what is wrong, short: "silent 45s", "data 0.31s, 3.1× the median"

    @property
    def severity(self) -> Literal["error", "warning"]:
        return ERROR if any(reason in BLOCKING for reason in self.reasons) else WARNING


DEFAULT_LIMITS: Final = LaggardLimits()


def find_laggards(
    ranks: Sequence[RankSummary], limits: LaggardLimits = DEFAULT_LIMITS
) -> dict[int, Laggard]:
    """The laggards among `ranks` (one summary per rank), by rank."""
    # Who can be silent, stuck or behind: the ranks still going.
    running = [r for r in ranks if r.get("status") not in END_STATUSES]
    steps = [r["step"] for r in running if r.get("step") is not None]
    newest = max(steps, default=None)
    ages = [r["age"] for r in running if r.get("age") is not None]
    freshest = min(ages, default=0.0)
    moving = any(r.get("step_age", math.inf) < limits.silent_after for r in running)
    # Timings are compared across every rank: an ended job's straggler still was one.
    step_times = _medians_of_others(ranks, "step_time")
    data_times = _medians_of_others(ranks, "data_time")
    typical_step = _median([t for r in ranks if (t := r.get("step_time")) is not None])
    laggards: dict[int, Laggard] = {}
    for summary in ranks:
        rank = summary["rank"]
        found: dict[Reason, str] = {}
        status = summary.get("status")
        error = summary.get("error")
        if status == FAILED or error:
            # A traceback's last line says what failed.
            lines = (error or "").strip().splitlines()
            found[FAILED_RANK] = f"failed: {lines[-1][:ERROR_WORDS]}" if lines else "failed"
        elif summary.get("alive") is False and status not in ENDED:
            found[DEAD] = "dead"  # gone without a word: killed, or crashed hard
        nonfinite = summary.get("nonfinite_step")
        if nonfinite is not None:
            found[NONFINITE] = f"NaN/inf at step {nonfinite}"
        if FAILED_RANK in found or DEAD in found:
            laggards[rank] = _laggard(rank, found)
            continue
        if status not in END_STATUSES:
            _lagging(found, summary, newest, freshest, moving, typical_step, limits)
        _slow(found, SLOW_STEP, "step", summary.get("step_time"), step_times.get(rank), limits)
        _slow(found, SLOW_DATA, "data", summary.get("data_time"), data_times.get(rank), limits)
        if found:
            laggards[rank] = _laggard(rank, found)
    return laggards


def _lagging(
    found: dict[Reason, str],
    summary: RankSummary,
    newest: int | None,
    freshest: float,
    moving: bool,
    typical_step: float | None,
    limits: LaggardLimits,
) -> None:
    """Names a rank still going that is silent, stuck or behind the newest step."""
    age = summary.get("age")
    if age is not None and age > limits.silent_after:
        found[SILENT] = f"silent {format_duration(age)}"
        return  # its step is as old as its news
    step_age = summary.get("step_age")
    if step_age is not None and step_age > limits.silent_after and moving:
        found[STUCK] = f"stuck {format_duration(step_age)}"
    step = summary.get("step")
    if step is not None and newest is not None:
        gap = newest - step
        allowed = float(limits.steps_behind)
        if typical_step:
            # A report `age - freshest` seconds older than the newest lags that much more.
            lag = limits.behind_seconds + (age - freshest if age is not None else 0.0)
            allowed = max(allowed, lag / typical_step)
        if gap > allowed:
            found[BEHIND] = f"{gap} steps behind"


def limits_for(settings: object) -> LaggardLimits:
    """The limits for a run whose start event's `settings` (the monitor section) are
    these: `rank_timeout` seconds of silence name a rank silent or stuck."""
    timeout = as_number(settings.get("rank_timeout")) if isinstance(settings, dict) else math.nan
    if 0 < timeout < math.inf:
        return LaggardLimits(silent_after=timeout)
    return DEFAULT_LIMITS


def slowest(ranks: Sequence[RankSummary]) -> RankSummary | None:
    """The rank with the lowest rate (samples/s, else steps/s) among those that report one."""
    rated = [(rate, r["rank"], r) for r in ranks if (rate := rank_rate(r)[0]) is not None]
    return min(rated, key=lambda item: (item[0], item[1]))[2] if rated else None


def rank_rate(summary: RankSummary) -> tuple[float | None, str]:
    """(rate, unit): samples/s when the rank counts samples, else steps/s from its step
    time; (None, "") when it reports neither."""
    samples = summary.get("samples_per_s")
    if samples is not None:
        return samples, "samples/s"
    step_time = summary.get("step_time")
    if step_time:
        return 1.0 / step_time, "steps/s"
    return None, ""


def _laggard(rank: int, found: dict[Reason, str]) -> Laggard:
    reasons = tuple(reason for reason in REASONS if reason in found)
    return Laggard(rank, reasons, ", ".join(found[reason] for reason in reasons))


def _slow(
    found: dict[Reason, str],
    reason: Reason,
    what: str,
    value: float | None,
    others: float | None,
    limits: LaggardLimits,
) -> None:
    """Names `reason` when `value` is well above the others' median `others`."""
    if value is None or others is None:
        return
    if value > limits.slow_factor * others and value - others > limits.slow_seconds:
        ratio = value / others if others > 0 else math.inf
        times = f", {ratio:.0f}×" if ratio >= 10 else f", {ratio:.1f}×"
        times = f"{times} the others" if ratio < math.inf else ""
        found[reason] = f"{what} {seconds_text(value)}{times}"


def seconds_text(value: float) -> str:
    """A step's or a data wait's time: "61.5 ms", "1.2 s"."""
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def _medians_of_others(
    ranks: Sequence[RankSummary], field: Literal["step_time", "data_time"]
) -> dict[int, float]:
    """For each rank reporting `field`, the median of the other ranks' values: O(n log n),
    from one sorted list (taking one value out shifts the middle by at most one place)."""
    values = sorted((value, r["rank"]) for r in ranks if (value := r.get(field)) is not None)
    count = len(values) - 1  # the others
    medians: dict[int, float] = {}
    if count < 1:
        return medians
    middle = count // 2
    for index, (_, rank) in enumerate(values):
        # The others' sorted values are `values` without position `index`.
        upper = values[middle if middle < index else middle + 1][0]
        if count % 2:
            medians[rank] = upper
        else:
            lower = values[middle - 1 if middle - 1 < index else middle][0]
            medians[rank] = (lower + upper) / 2
    return medians


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
