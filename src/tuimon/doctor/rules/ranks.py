"""Rules on a distributed job's ranks: a straggler, a rank that stalled or died, NaN on a rank.

They read rank 0's `ranks` events (every rank as rank 0 last heard of it, about once a
second while something changed), so they judge the job as one: a rank is compared with
the others, never with a fixed speed. Every time here comes from the events (their `age`
and `step_age` are rank 0's measures), so a rule says the same live and over a log.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear
from tuimon.doctor.rules.loss import RECOVER, NanLoss, recover_before
from tuimon.doctor.streak import Streak
from tuimon.run.events import (
    END_STATUSES,
    ERROR,
    FAILED,
    PAUSED,
    RANKS,
    RanksEvent,
    RankSummary,
)
from tuimon.run.field_types import as_list, as_number, as_step


def ranks_of(event: RanksEvent) -> list[RankSummary]:
    """The event's rank summaries that have a rank number (a damaged entry is left out)."""
    return [
        cast(RankSummary, item)
        for item in as_list(event.get("ranks"))
        if type(item) is dict and as_step(item.get("rank")) is not None
    ]


def who(rank: RankSummary) -> str:
    """ "rank 1 (host h, pid 123)": a rank as a person finds it on the machines."""
    where = []
    host, pid = rank.get("host"), as_step(rank.get("pid"))
    if isinstance(host, str) and host:
        where.append(f"host {host}")
    if pid is not None:
        where.append(f"pid {pid}")
    return f"rank {rank['rank']}" + (f" ({', '.join(where)})" if where else "")


def host_of(rank: RankSummary) -> str:
    host = rank.get("host")
    return f"host {host}" if isinstance(host, str) and host else "its node"


def on_host(rank: RankSummary) -> str:
    return f"on {host_of(rank)}"


def seconds(rank: RankSummary, key: str) -> float | None:
    """A time of a rank's summary in seconds, when it is a finite number ≥ 0."""
    value = as_number(rank.get(key))
    return value if math.isfinite(value) and value >= 0 else None


def ended(rank: RankSummary) -> bool:
    return rank.get("status") in END_STATUSES


def ms(value: float) -> str:
    """Seconds as milliseconds, three digits: "120 ms", "0.0826 ms"."""
    return f"{1000 * value:.3g} ms"


def ranks_text(numbers: list[int]) -> str:
    """ "rank 3", "ranks 3, 5" """
    return ("rank " if len(numbers) == 1 else "ranks ") + ", ".join(map(str, numbers))


def last_line(text: Any) -> str:
    """The last line of a traceback (the error itself), clipped; "" for no text."""
    if not isinstance(text, str):
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


TIMES = ("data_time", "step_time")  # a rank's times a straggler shows in


@dataclass
class Lag:
    """How far one rank lags the median of the others, in one of its times."""

    rank: RankSummary
    metric: str  # data_time or step_time
    value: float  # seconds per step
    median: float  # the other ranks' median
    share: float  # the gap as a share of the rank's step


class Straggler(Rule[RanksEvent]):
    """One rank much slower than the others, report after report.

    Each rank is compared with the median of the OTHER ranks, so a job where every rank is
    equally slow has no straggler. Under DDP every rank's step takes as long as the slowest
    one's (they wait for each other in the gradient all-reduce), so the step time cannot
    tell them apart there: the time a rank waits for its data can (a slow loader on one
    node). The step time names a straggler in jobs whose ranks do not run in lockstep.
    A rank's time is the median of its last `window` reports, so a noisy report or two
    (a busy moment on its host) does not make it a straggler; a rank that stays slow does.
    """

    id = "straggler"
    events = (RANKS,)
    # ratio: × the others' median (2, not 1.5: two healthy ranks' report means, each over
    # a few steps, differ by 1.5x often enough for false alarms); share: the gap as a share
    # of the rank's step; min_gap_ms: a smaller gap is noise; window: the reports a rank's
    # time is the median of; checks: `ranks` events in a row; warmup: a rank's first steps
    # (workers starting, compilation) are not judged.
    defaults = {
        "ratio": 2.0,
        "share": 0.1,
        "min_gap_ms": 5.0,
        "window": 5,
        "checks": 3,
        "warmup": 10,
    }
    clear_after = 2
    summary = "one rank's step or data time is over 2x the other ranks' median, sustained"
    fix = (
        "that node's DataLoader workers and pinned memory, its GPU's clocks, the sampler's balance"
    )

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.slow: dict[int, Streak] = {}  # per rank: reports in a row as a straggler
        # Per rank and time (data_time, step_time): its last `window` reports.
        self.recent: dict[int, dict[str, deque[float]]] = {}

    def check(self, event: RanksEvent, ctx: RunContext) -> Verdict | None:
        ranks = [
            rank
            for rank in ranks_of(event)
            if not ended(rank)
            and rank.get("status") != PAUSED
            and as_step(rank.get("step")) is not None
            and rank["step"] > self.p["warmup"]
        ]
        judged = {rank["rank"] for rank in ranks}
        for gone in (set(self.slow) | set(self.recent)) - judged:
            self.slow.pop(gone, None)
            self.recent.pop(gone, None)
        levels = {rank["rank"]: self._level(rank) for rank in ranks}
        if len(ranks) < 2:
            return None
        found: list[Lag] = []  # stragglers at this report, with their numbers
        for rank in ranks:
            others = [levels[other] for other in levels if other != rank["rank"]]
            lag = self._lag(rank, levels[rank["rank"]], others)
            streak = self.slow.setdefault(rank["rank"], Streak(self.p["checks"]))
            if lag is None:
                streak.reset()
            elif streak.hold():
                found.append(lag)
        if not found:
            # A rank slow for fewer reports than `checks` yet keeps the verdict open.
            if any(streak.count for streak in self.slow.values()):
                return None
            return clear()
        worst = max(found, key=lambda lag: lag.share)
        return self._verdict(worst, found, len(ranks))

    def _level(self, rank: RankSummary) -> dict[str, float]:
        """The rank's times now: each the median of its last `window` reports."""
        kept = self.recent.setdefault(rank["rank"], {})
        level = {}
        for key in TIMES:
            value = seconds(rank, key)
            if value is not None:
                kept.setdefault(key, deque(maxlen=max(1, int(self.p["window"])))).append(value)
            if kept.get(key):
                level[key] = statistics.median(kept[key])
        return level

    def _lag(
        self, rank: RankSummary, mine: dict[str, float], others: list[dict[str, float]]
    ) -> Lag | None:
        """How this rank lags the others' median (the larger of its two lags), or None."""
        step = mine.get("step_time")
        lags: list[Lag] = []
        for key in TIMES:
            value = mine.get(key)
            theirs = [level[key] for level in others if key in level]
            if value is None or not theirs or not step:
                continue
            median = statistics.median(theirs)
            gap = value - median
            if (
                value >= self.p["ratio"] * median
                and gap / step >= self.p["share"]
                and 1000 * gap >= self.p["min_gap_ms"]
            ):
                lags.append(Lag(rank, key, value, median, gap / step))
        return max(lags, key=lambda lag: lag.share) if lags else None

    def _verdict(self, worst: Lag, found: list[Lag], judged: int) -> Verdict:
        rank, value, median = worst.rank, worst.value, worst.median
        ratio = value / median if median > 0 else math.inf
        times = f"{ms(value)}, " + (f"{ratio:.1f}x" if ratio < 100 else "over 100x")
        others = [lag.rank["rank"] for lag in found if lag is not worst]
        also = f"; also slow: {ranks_text(others)}" if others else ""
        reports = f"medians of its last {self.p['window']:.0f} reports"
        if worst.metric == "data_time":
            message = (
                f"{who(rank)} is a straggler: it waits {times} the other ranks' median of "
                f"{ms(median)} for its data each step ({reports}){also}"
            )
            suggestion = (
                f"its data loading is slow {on_host(rank)}: raise DataLoader num_workers and "
                "set pin_memory=True there, check that node's disk and CPUs (another job on "
                "them?), or a sampler that gives this rank bigger or slower samples; every "
                "rank waits for it in the gradient all-reduce"
            )
        else:
            message = (
                f"{who(rank)} is a straggler: its steps take {times} the other ranks' median "
                f"of {ms(median)} ({reports}){also}"
            )
            suggestion = (
                f"its device is slow {on_host(rank)}: check that GPU's clocks and temperature "
                "(nvidia-smi -q -d CLOCK,TEMPERATURE,PERFORMANCE: throttling) and other "
                "processes on it, or a sampler that gives this rank longer samples"
            )
        evidence = {
            "rank": rank["rank"],
            "host": rank.get("host"),
            "metric": worst.metric,
            "seconds": value,
            "others_median": median,
            "ratio": value / median if median > 0 else None,
            "share_of_step": worst.share,
            "stragglers": [lag.rank["rank"] for lag in found],
            "ranks": judged,
        }
        return Verdict(True, message, suggestion, evidence)


# How a rank can be lost, the likeliest cause of the others' troubles first.
STALLS = ("died", "silent", "stuck", "failed")


@dataclass
class Stall:
    kind: str  # one of STALLS
    message: str
    suggestion: str


class StalledRank(Rule[RanksEvent]):
    """A rank whose process is gone, or that rank 0 has not heard from for longer than the
    job's rank timeout while other ranks still report (a hang or a dead machine), or whose
    step stopped while other ranks' steps move on.

    A rank that ended as it should (completed, stopped) is not stalled; one that failed is.
    The timeout is the rule's own `timeout` when the config sets one, else the job's
    `monitor.rank_timeout` (its start event's settings), else 30 s.
    """

    id = "stalled_rank"
    severity = ERROR
    events = (RANKS,)
    defaults = {"timeout": 30.0}
    clear_after = 1  # a rank heard from again has come back
    summary = "a rank died, or has not been heard from for rank_timeout (30 s) while others report"
    fix = "find the cause in that rank's output on its host; stop the job and resume it"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.own_timeout = "timeout" in (params or {})

    def check(self, event: RanksEvent, ctx: RunContext) -> Verdict | None:
        ranks = ranks_of(event)
        if len(ranks) < 2:
            return None
        timeout = self.p["timeout"]
        if not self.own_timeout and ctx.rank_timeout is not None:
            timeout = ctx.rank_timeout
        found: list[tuple[RankSummary, Stall]] = []
        for rank in ranks:
            if ended(rank) and rank.get("status") != FAILED:
                continue
            others = [other for other in ranks if other is not rank]
            stall = self._stalled(rank, others, timeout)
            if stall is not None:
                found.append((rank, stall))
        if not found:
            return clear()
        # The cause first: a rank that died or went silent, before those that failed
        # because of it (a collective's connection reset) or wait on it.
        found.sort(key=lambda item: STALLS.index(item[1].kind))
        rank, stall = found[0]
        message = stall.message
        if len(found) > 1:
            message += "; also " + ", ".join(f"rank {r['rank']} ({s.kind})" for r, s in found[1:])
        evidence = {
            "rank": rank["rank"],
            "host": rank.get("host"),
            "pid": rank.get("pid"),
            "step": rank.get("step"),
            "age": seconds(rank, "age"),
            "step_age": seconds(rank, "step_age"),
            "alive": rank.get("alive"),
            "timeout": timeout,
            "stalled": [r["rank"] for r, _ in found],
        }
        return Verdict(True, message, stall.suggestion, evidence)

    def _stalled(
        self, rank: RankSummary, others: list[RankSummary], timeout: float
    ) -> Stall | None:
        """What happened to a rank that died or stalled, and what to do; else None."""
        step = as_step(rank.get("step"))
        at = f" at step {step}" if step is not None else ""
        last = f"last step {step}" if step is not None else "no step yet"
        output = (
            f"look at what it printed {on_host(rank)} (torchrun's console, or the files of "
            "torchrun's --log-dir) for the cause; a kill by the kernel's out-of-memory "
            "killer shows in `dmesg` there"
        )
        if rank.get("status") == FAILED:
            error = last_line(rank.get("error"))
            return Stall(
                "failed",
                f"{who(rank)} failed{at}" + (f": {error}" if error else ""),
                f"{output}; the other ranks cannot go on without it: fix it and resume the "
                "job from its last checkpoint",
            )
        if rank.get("alive") is False:
            return Stall(
                "died",
                f"{who(rank)} died{at}: its process is gone",
                f"{output}; the other ranks will wait for it in their next collective: stop "
                "the job and resume it from its last checkpoint",
            )
        age = seconds(rank, "age")
        heard = [a for other in others if (a := seconds(other, "age")) is not None and a <= timeout]
        if age is not None and age > timeout and heard:
            return Stall(
                "silent",
                f"{who(rank)} has not reported for {age:.0f} s ({last}): hung or dead",
                f"see where it waits with `py-spy dump --pid {rank.get('pid', 'PID')}` "
                f"{on_host(rank)} (a deadlock in its data loader, a collective the others "
                "did not enter), and whether that host is reachable",
            )
        step_age = seconds(rank, "step_age")
        moving = [
            other
            for other in others
            if not ended(other)
            and other.get("status") != PAUSED
            and (a := seconds(other, "step_age")) is not None
            and a <= timeout
        ]
        if step_age is not None and step_age > timeout and rank.get("status") != PAUSED and moving:
            return Stall(
                "stuck",
                f"{who(rank)} is stuck{at}: no step for {step_age:.0f} s while rank "
                f"{moving[0]['rank']} trains on",
                f"see where it waits with `py-spy dump --pid {rank.get('pid', 'PID')}` "
                f"{on_host(rank)}: its data loader, a lock, or a collective the others skipped",
            )
        return None


class RankNan(Rule[RanksEvent]):
    """A NaN or infinite loss on a rank other than rank 0 (whose own is `nan_loss`).

    A rank's `nonfinite_step` is its latest step with a non-finite loss; the episode lasts
    until every such rank is `window` steps past it. On some ranks only, it points at their
    data (a bad sample in their shard); on every rank, at the weights (a blow-up).
    """

    id = "rank_nan"
    severity = ERROR
    cause = True
    events = (RANKS,)
    suppresses = NanLoss.suppresses
    defaults = {"window": 20}  # steps past its last NaN before a rank counts as healthy
    clear_after = 1
    summary = "the loss is NaN or infinite on a rank other than rank 0"
    fix = "that rank's data shard; a blow-up: restore the last good weights, LR ×0.1"

    def check(self, event: RanksEvent, ctx: RunContext) -> Verdict | None:
        ranks = ranks_of(event)
        recent: list[tuple[RankSummary, int]] = []  # (rank, its last NaN step)
        rank0_nan = False
        for rank in ranks:
            nan_step = as_step(rank.get("nonfinite_step"))
            step = as_step(rank.get("step"))
            if nan_step is None or (step is not None and step - nan_step >= self.p["window"]):
                continue
            if rank["rank"] == 0:
                rank0_nan = True  # nan_loss says it, from rank 0's own steps
            else:
                recent.append((rank, nan_step))
        if not recent:
            return clear()
        rank, nan_step = min(recent, key=lambda item: item[1])
        others = [r["rank"] for r, _ in recent if r is not rank]
        message = f"NaN/inf loss on rank {rank['rank']} ({host_of(rank)}) at step {nan_step}"
        if others:
            message += f", also on {ranks_text(others)}"
        if rank0_nan:
            message += " (and on rank 0: see nan_loss)"
        where = (
            f"look at rank {rank['rank']}'s data shard first (the samples its "
            f"DistributedSampler gave it near step {nan_step}: NaN/inf inputs, an empty "
            "batch, a label out of range) and at undefined values in the loss (log of 0, "
            "division by 0)"
        )
        lr = ctx.lr
        blow_up = (
            f"if it spread to every rank, {ctx.lr_text()} blew up: restore the last good "
            f"weights and use LR {lr * RECOVER['lr_factor']:.3g} (press a), and clip gradients"
            if lr
            else "if it spread to every rank, lower the learning rate and clip gradients"
        )
        evidence = {
            "rank": rank["rank"],
            "host": rank.get("host"),
            "nonfinite_step": nan_step,
            "ranks": [r["rank"] for r, _ in recent],
            "rank0_too": rank0_nan,
        }
        return Verdict(True, message, f"{where}; {blow_up}", evidence, recover_before(nan_step))
