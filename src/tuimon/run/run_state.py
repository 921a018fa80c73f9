"""What is known about a run, built from its events: the model behind every view of it.

The same class serves the worker (which keeps one up to date from its own event log, so a
client that attaches gets the whole run as one compact snapshot instead of replaying a
million events) and the UI (which starts from that snapshot and applies live events).
Everything here is bounded: long series are bucketed, lists are capped. No Textual, no torch.

RunState is what a reader knows of a whole run (its series, alerts, controls, status); it
is not the live Monitor's status (the phase the training thread is in, which it reports
as events) nor `state.json` (a finished run's RunState saved for replay:
run/replay_cache.py). It keeps the events it stores as bounded JSON objects: a damaged
log's fields are clipped, so they are dicts, not the vocabulary's TypedDicts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

from tuimon.control.commands import STATUS_COMMANDS, STOP
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    CHECKPOINT,
    COMPLETED,
    CONTROL,
    END,
    END_STATUSES,
    MESSAGE,
    METRICS,
    PAUSED,
    RANKS,
    RESERVED_METRIC_KEYS,
    RUN_STATUSES,
    RUNNING,
    START,
    STARTING,
    STEP,
    STOPPED,
    STOPPING,
    SYSTEM,
    AlertClearedEvent,
    AlertEvent,
    CheckpointEvent,
    ControlEvent,
    EndEvent,
    MessageEvent,
    MetricsEvent,
    RanksEvent,
    RankSummary,
    RunStatus,
    StartEvent,
    StepEvent,
    SystemEvent,
)
from tuimon.run.field_types import (
    MAX_RANKS,
    MAX_STEP,
    RANK_ERROR_LIMIT,
    as_dict,
    as_list,
    as_number,
    as_step,
    typed_ranks,
)
from tuimon.run.log_reader import KEPT_LINE_NUMBERS, count_lines, damage_note, read_events
from tuimon.run.step_columns import MAX_LR_GROUPS, OPTIONAL_STEP_SERIES, StepRows
from tuimon.series.bucketed import BucketSeries
from tuimon.series.smoothing import DebiasedEMA

SNAPSHOT_VERSION = 1
MAX_ITEMS = 2000  # alerts, messages, controls, checkpoints kept
HISTORY = 120  # system samples kept for sparklines
WINDOW = 200  # recent steps for throughput, data-wait share and ETA
# Bounds on what one event may add, so a damaged or hostile log cannot make the state (or
# a view of it) huge: text kept per field, LR groups and metrics plotted, kinds counted.
TEXT_LIMIT = 4096
ERROR_LIMIT = 65536  # an `end` event's traceback: its tail is kept
MAX_METRICS = 64
MAX_LAYERS = 4096
MAX_KINDS = 64

# A `message` event with this field true: a Monitor(stop="flag") loop ran on past a stop,
# so the run is running again and takes commands (`stop_requested_at`: the stop's step).
STOP_IGNORED: Final = "stop_ignored"


class RunState:
    def __init__(self, capacity: int = 2048, smoothing: float = 0.9) -> None:
        self.lock = threading.RLock()
        self.capacity = capacity
        self.smoothing = smoothing
        self.version = 0
        self.seq = 0
        self.last_time = 0.0  # of the newest event seen
        self.start: dict[str, Any] | None = None
        self.end: dict[str, Any] | None = None
        self.status: RunStatus = STARTING
        self.series: dict[str, BucketSeries] = {}
        self.controls: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        self.messages: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        self.checkpoints: deque[dict[str, Any]] = deque(maxlen=MAX_ITEMS)
        # Events applied, by type: these keep counting when the deques above are full, so
        # a view can tell that something new arrived.
        self.counts: Counter[str] = Counter()
        self._last_step: dict[str, Any] | None = None
        self._last_step_event: StepEvent | None = None  # made into last_step when read
        # Lines of the log that were not events, and events whose fields were unusable:
        # both left out, both counted, so a view can say so.
        self.skipped_lines = 0
        self.skipped_line_numbers: list[int] = []
        self.rejected = 0
        self._t0: float | None = None  # the start's time
        self._per_epoch: int | None = None  # the start's steps_per_epoch
        self.stop_ignored_at: int | None = None  # the step of a stop the loop did not obey
        # Why the worker's events are not being written (a full disk), until they are again.
        self.not_recording: str | None = None
        self.last_metrics: dict[str, Any] = {}
        self.layer_grad_norms: dict[str, float] = {}
        self.layer_update_ratios: dict[str, float] = {}
        # Mixed precision (a run with a GradScaler): its latest loss scale, and how many
        # steps it skipped (`optimizer_steps: 0`: inf/NaN gradients) in the whole run.
        self.loss_scale: float | None = None
        self.skipped_steps = 0
        # While a log is loaded: step rows waiting to be folded into the series in bulk,
        # and the newest step events, made into `_recent` rows at the end.
        self._rows: StepRows | None = None
        self._recent_events: deque[StepEvent] = deque(maxlen=WINDOW)
        self.system: dict[str, Any] | None = None
        self.cpu_history: deque[float] = deque(maxlen=HISTORY)
        self.gpu_history: dict[int, dict[str, deque[float]]] = {}
        self._recent: deque[tuple[float, float, float, float]] = deque(maxlen=WINDOW)
        self._ema = DebiasedEMA(smoothing)
        # A distributed job: every rank as last heard of (the start's identities, then the
        # `ranks` events), at most MAX_RANKS; the world size the job declared.
        self._ranks: dict[int, RankSummary] = {}
        self._sorted_ranks: list[RankSummary] | None = None  # made when read
        self._world_size: int | None = None
        self.ranks_version = 0  # changes whenever what is known of the ranks does
        # While a log is loaded: only the newest `ranks` event matters, applied at the end.
        self._pending_ranks: tuple[Any, list[Any]] | None = None

    # -- building ------------------------------------------------------------------------

    def apply_many(self, events: list[dict[str, Any]]) -> None:
        with self.lock:
            for event in events:
                self._apply(event)
            if events:
                self.version += 1

    def apply(self, event: dict[str, Any]) -> None:
        self.apply_many([event])

    def _apply(self, event: dict[str, Any], dedupe: bool = True) -> None:
        kind = event.get("type") if type(event) is dict else None
        if type(kind) is not str:
            self.rejected += 1
            return
        seq = event.get("seq")
        if type(seq) is int and 0 <= seq <= MAX_STEP:
            if seq <= self.seq:
                if dedupe:
                    return  # already in the snapshot this state started from
            else:
                self.seq = seq
        when = event.get("time")
        if type(when) is not float:
            when = as_number(when)
        if when > self.last_time:
            self.last_time = when
        if kind == STEP:
            rank = event.get("rank")
            if type(rank) is int and rank != 0:
                return  # another rank's step (its own log): the job's curves are rank 0's
            self._on_step(cast(StepEvent, event))
            return
        if kind in self.counts or len(self.counts) < MAX_KINDS:
            self.counts[kind] += 1
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, event)

    def _on_start(self, event: StartEvent) -> None:
        self.start = start = _bounded(event, depth=8, items=256)
        for key in ("total_steps", "steps_per_epoch", "epochs", "start_step"):
            if key in start and as_step(start[key]) is None:
                del start[key]  # the views and the ETA compute with these
        if "time" in start and not math.isfinite(as_number(start["time"])):
            del start["time"]
        start["name"] = _clip(start.get("name", "run"), 200)
        if not isinstance(start.get("notes", []), list):
            del start["notes"]
        if "notes" in start:
            start["notes"] = [_clip(note) for note in start["notes"]]
        self._remember_start()
        self.status = RUNNING
        distributed = as_dict(event.get("distributed"))
        if distributed:
            self._on_distributed(distributed)
        smoothing = as_number(as_dict(start.get("settings")).get("smoothing"))
        if 0 <= smoothing < 1 and "loss" not in self.series and not self._rows:
            self.smoothing = smoothing
            self._ema = DebiasedEMA(self.smoothing)

    def _remember_start(self) -> None:
        """What every step needs from the start event, looked up once."""
        start = self.start or {}
        self._t0 = as_number(start.get("time")) if "time" in start else None
        per_epoch = as_step(start.get("steps_per_epoch"))
        self._per_epoch = per_epoch if per_epoch else None

    def _on_step(self, event: StepEvent) -> None:
        get = event.get
        step = get("step")
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            step = as_step(step)
            if step is None:
                self.rejected += 1  # nowhere to draw it: a step that is not a step number
                return
        self.counts[STEP] += 1
        x = float(step)
        when = get("time")
        t0 = self._t0
        if t0 is not None and type(when) is float and when - when == 0:
            elapsed = when - t0 if when > t0 else 0.0
        else:
            elapsed = self._elapsed(when)
        if self._per_epoch:
            epoch = x / self._per_epoch
        else:
            epoch = as_number(get("epoch"))
            epoch = epoch if math.isfinite(epoch) else 0.0
        loss = get("loss")
        if type(loss) is not float:
            loss = as_number(loss)
        smoothed = self._ema.update(loss)
        if smoothed is None:
            smoothed = math.nan
        lrs = get("lrs")
        if type(lrs) is not list or not lrs:
            lrs = [get("lr")]
        rows = self._rows
        if rows is not None:
            # Loading a log: one row now (StepRows.ROW), the series in bulk later.
            grad = get("grad_norm", rows)
            ratio = get("update_ratio", rows)
            flags = 0.0
            if grad is rows:
                grad = math.nan
            else:
                flags += 1.0
                grad = grad if type(grad) is float else as_number(grad)
            if ratio is rows:
                ratio = math.nan
            else:
                flags += 2.0
                ratio = ratio if type(ratio) is float else as_number(ratio)
            lr = lrs[0]
            lr = lr if type(lr) is float else as_number(lr)
            rows.rows.extend((x, elapsed, epoch, loss, smoothed, grad, ratio, lr, flags))
            if len(lrs) > 1:
                rows.add_more_lrs(x, elapsed, epoch, lrs)
            self._recent_events.append(event)
        else:
            self._add("loss", x, elapsed, epoch, loss)
            self._add("loss_ema", x, elapsed, epoch, smoothed)
            fields: Mapping[str, Any] = event
            for name in OPTIONAL_STEP_SERIES:
                if name in fields:
                    self._add(name, x, elapsed, epoch, as_number(fields[name]))
            for group, lr in enumerate(lrs[:MAX_LR_GROUPS]):
                self._add(f"lr/{group}", x, elapsed, epoch, as_number(lr))
            self._recent.append(_recent_row(event))
        if "loss_scale" in event:
            scale = as_number(event["loss_scale"])
            self.loss_scale = scale if math.isfinite(scale) else self.loss_scale
        stepped = get("optimizer_steps")
        if stepped == 0 and type(stepped) is int:
            self.skipped_steps += 1
        if "layer_grad_norms" in event:
            layers = event["layer_grad_norms"]
            if layers and type(layers) is dict:
                self.layer_grad_norms = _layer_values(layers)
        if "layer_update_ratios" in event:
            layers = event["layer_update_ratios"]
            if layers and type(layers) is dict:
                self.layer_update_ratios = _layer_values(layers)
        self._last_step_event = event

    def _on_distributed(self, distributed: dict[str, Any]) -> None:
        """A torchrun job's shape from its start event: the world size, and who each rank
        is (rank, node, host, pid, device) before any of them reports."""
        world_size = as_step(distributed.get("world_size"))
        if world_size:
            self._world_size = world_size
        self._merge_ranks(typed_ranks(distributed.get("ranks")))

    def _on_ranks(self, event: RanksEvent) -> None:
        if self._rows is not None:  # loading a log: the newest one is applied at the end
            self._pending_ranks = (event.get("world_size"), as_list(event.get("ranks")))
            return
        self._apply_ranks(event.get("world_size"), event.get("ranks"))

    def _apply_ranks(self, world_size: Any, ranks: Any) -> None:
        size = as_step(world_size)
        if size:
            self._world_size = size
        self._merge_ranks(typed_ranks(ranks))

    def _merge_ranks(self, summaries: list[RankSummary]) -> None:
        """Each summary's fields over what was known of its rank (a report need not repeat
        a rank's identity); a rank past MAX_RANKS known ones is left out."""
        known = self._ranks
        for summary in summaries:
            rank = summary["rank"]
            kept = known.get(rank)
            if kept is not None:
                kept.update(summary)
            elif len(known) < MAX_RANKS:
                known[rank] = summary
        if summaries:
            if self.end is not None:
                self._end_rank_zero()  # a report read after the end (a log's, at its fold)
            self._sorted_ranks = None
            self.ranks_version += 1

    def apply_rank_finals(self, finals: list[RankSummary]) -> None:
        """What each rank's own log (`ranks/<N>/events.jsonl`, run/rank_logs.py) says of
        how far it got and how it ended, over what rank 0 last reported of it (rank 0's
        last report may predate a rank's end). For a replay, or a job that has ended.

        A rank's log is the record of its steps and its end: its last step counts when
        further, its end status and error when it has an `end` (a log that stops without
        one, a killed rank, leaves rank 0's word), its latest non-finite step when it had
        one. What rank 0 did not know of it (host, pid, device, timings) is filled in."""
        with self.lock:
            changed = False
            for final in typed_ranks(finals):
                rank = final["rank"]
                known = self._ranks.get(rank)
                if known is None:
                    if len(self._ranks) >= MAX_RANKS:
                        continue
                    known = self._ranks[rank] = {"rank": rank}
                update: dict[str, Any] = {
                    k: v for k, v in final.items() if k not in known and k != "status"
                }
                step, before = final.get("step"), known.get("step")
                if step is not None and (before is None or step > before):
                    update["step"] = step
                if final.get("status") in END_STATUSES:
                    update["status"] = final["status"]
                if final.get("error"):
                    update["error"] = final["error"]
                if final.get("nonfinite_step") is not None:
                    update["nonfinite_step"] = final["nonfinite_step"]
                known.update(cast(RankSummary, update))
                changed = changed or bool(update)
            changed = self._end_rank_zero() or changed
            if changed:
                self._sorted_ranks = None
                self.ranks_version += 1
                self.version += 1

    def _end_rank_zero(self) -> bool:
        """Rank 0's end is the job log's own `end`: its step, status and error. True if
        that changed what is known of rank 0."""
        zero = self._ranks.get(0)
        if zero is None or self.end is None:
            return False
        update: dict[str, Any] = {}
        step = self.step
        if step > zero.get("step", -1):
            update["step"] = step
        if self.status in END_STATUSES and zero.get("status") != self.status:
            update["status"] = self.status
        error = self.end.get("error")
        if isinstance(error, str) and error and "error" not in zero:
            update["error"] = error[-RANK_ERROR_LIMIT:]
        zero.update(cast(RankSummary, update))
        return bool(update)

    def _on_metrics(self, event: MetricsEvent) -> None:
        rank = event.get("rank")
        if type(rank) is int and rank != 0:
            return  # another rank's own scalars: the job's curves are rank 0's
        step = as_step(event.get("step"))
        x = float(step if step is not None else self.step)
        elapsed = self._elapsed(event.get("time"))
        epoch = x / self._per_epoch if self._per_epoch else as_number(event.get("epoch"))
        epoch = epoch if math.isfinite(epoch) else 0.0
        scalars: Mapping[str, Any] = event  # any key beside the reserved ones is a metric
        for key, value in scalars.items():
            if key in _NOT_METRICS or len(key) > 100:
                continue
            if type(value) is not float and type(value) is not int:
                continue
            name = f"metrics/{key}"
            if name not in self.series and len(self.last_metrics) >= MAX_METRICS:
                continue
            number = as_number(value)
            self._add(name, x, elapsed, epoch, number)
            # An int too large to draw is kept as the float it is drawn as.
            self.last_metrics[key] = value if type(value) is float or abs(value) < 2**63 else number

    def _on_control(self, event: ControlEvent) -> None:
        self.controls.append(_bounded(event))
        command = event.get("command")
        if command == STOP:
            self.stop_ignored_at = None  # a new stop: the loop gets its chance again
        new = event.get("new")
        if command in STATUS_COMMANDS and new in RUN_STATUSES:
            self.status = new

    def _on_alert(self, event: AlertEvent) -> None:
        self.alerts.append(_bounded(event))

    def _on_alert_cleared(self, event: AlertClearedEvent) -> None:
        """The episode is over: the newest alert of that rule is marked cleared."""
        for alert in reversed(self.alerts):
            if alert.get("rule") == event.get("rule"):
                alert["cleared_at"] = as_step(event.get("step"))
                break

    def _on_message(self, event: MessageEvent) -> None:
        kept = _bounded(event)
        if "text" in kept and type(kept["text"]) is not str:
            kept["text"] = _clip(kept["text"])
        self.messages.append(kept)
        if event.get("recording") is False:  # run/event_log.py: the log cannot be written
            self.not_recording = str(kept.get("text", "events are not being recorded"))
        elif "dropped_events" in event:  # written again, with the count of what was lost
            self.not_recording = None
        if event.get(STOP_IGNORED):
            requested = as_step(event.get("stop_requested_at"))
            self.stop_ignored_at = requested if requested is not None else self.step
            if self.status == STOPPING:
                self.status = RUNNING

    def _on_checkpoint(self, event: CheckpointEvent) -> None:
        self.checkpoints.append(_bounded(event))

    def _on_system(self, event: SystemEvent) -> None:
        self.system = system = _bounded(event, depth=4, items=64)
        # The panels format these fields as numbers: only numbers (and names) are kept.
        host = system["host"] = _readings(system.get("host"))
        gpus = system["gpus"] = [
            _readings(g)
            for g in as_list(system.get("gpus"))
            if as_step(as_dict(g).get("index", 0)) is not None
        ]
        cpu = as_number(host.get("cpu_percent"))
        if math.isfinite(cpu):
            self.cpu_history.append(cpu)
        for gpu in gpus:
            index = as_step(gpu.get("index", 0))
            if index is None or (index not in self.gpu_history and len(self.gpu_history) >= 64):
                continue
            history = self.gpu_history.setdefault(
                index, {"util": deque(maxlen=HISTORY), "mem": deque(maxlen=HISTORY)}
            )
            util = as_number(gpu.get("util"))
            if math.isfinite(util):
                history["util"].append(util)
            used, total = as_number(gpu.get("mem_used")), as_number(gpu.get("mem_total"))
            if math.isfinite(used) and math.isfinite(total) and total:
                history["mem"].append(100.0 * used / total)

    def _on_end(self, event: EndEvent) -> None:
        error = event.get("error")
        self.end = end = _bounded(event)
        if error is not None:
            end["error"] = _clip_tail(error, ERROR_LIMIT)
        if "elapsed" in end and not math.isfinite(as_number(end["elapsed"])):
            del end["elapsed"]
        status = end.get("status", COMPLETED)
        self.status = status if status in RUN_STATUSES else STOPPED
        if self._end_rank_zero():
            self._sorted_ranks = None
            self.ranks_version += 1

    def _add(self, name: str, step: float, elapsed: float, epoch: float, value: float) -> None:
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = BucketSeries(self.capacity)
        series.append(step, elapsed, epoch, value)

    def _fold(self) -> None:
        """Step rows gathered while loading go into their series; the newest `ranks`
        event into the ranks."""
        if self._rows is not None:
            self._rows.fold_into(self.series, self.capacity)
            self._recent.extend(_recent_row(event) for event in self._recent_events)
            self._recent_events.clear()
        if self._pending_ranks is not None:
            pending, self._pending_ranks = self._pending_ranks, None
            self._apply_ranks(*pending)

    def _elapsed(self, when: Any) -> float:
        if self._t0 is None:
            return math.nan
        when = as_number(when)
        return max(0.0, when - self._t0) if math.isfinite(when) else math.nan

    # -- reading ---------------------------------------------------------------------------

    @property
    def last_step(self) -> dict[str, Any] | None:
        """The newest step event, without its per-layer values (kept apart), its text
        bounded: made when read, not on every step (under the lock: a view may read it
        while the connection thread applies new steps)."""
        with self.lock:
            event = self._last_step_event
            if event is not None:
                self._last_step_event = None
                last = {k: v for k, v in event.items() if k not in _PER_LAYER}
                last = _bounded(last, depth=3, items=64)
                last["step"] = as_step(event.get("step"))
                if "cuda_memory" in last:
                    last["cuda_memory"] = _readings(last["cuda_memory"])
                if "epoch" in last and not math.isfinite(as_number(last["epoch"])):
                    del last["epoch"]
                self._last_step = last
            return self._last_step

    @last_step.setter
    def last_step(self, value: dict[str, Any] | None) -> None:
        with self.lock:
            self._last_step_event = None
            self._last_step = value

    def damage_note(self) -> str | None:
        """What of the log was left out, for a view to say, or None."""
        notes = []
        lines = damage_note(self.skipped_lines, self.skipped_line_numbers)
        if lines:
            notes.append(lines)
        if self.rejected:
            noun = "event" if self.rejected == 1 else "events"
            notes.append(f"{self.rejected} {noun} with unusable fields ignored")
        return "; ".join(notes) or None

    def elapsed_at(self, when: Any) -> float:
        started = as_number((self.start or {}).get("time"))
        when = as_number(when)
        if math.isfinite(when) and math.isfinite(started):
            return max(0.0, when - started)
        return math.nan

    @property
    def name(self) -> str:
        return _clip((self.start or {}).get("name", "run"), 200)

    @property
    def runs_in(self) -> str:
        """Who owns the loop and in what precision ("lightning 2.6.6 · bf16-mixed"), from
        the start event; "" for a plain loop in float32."""
        start = self.start or {}
        parts = [start.get("framework"), start.get("precision")]
        shown = [_clip(part, 40) for part in parts if type(part) is str and part and part != "32"]
        return " · ".join(shown)

    @property
    def step(self) -> int:
        last = as_step((self.last_step or {}).get("step"))
        if last is not None:
            return last
        return as_step((self.start or {}).get("start_step")) or 0

    @property
    def total_steps(self) -> int | None:
        total = as_step((self.start or {}).get("total_steps"))
        return total if total else None

    @property
    def ranks(self) -> list[RankSummary]:
        """Every rank of a distributed job as last heard of, by rank (empty for one
        process). The list is shared until the ranks change: do not modify it."""
        with self.lock:
            if self._sorted_ranks is None:
                self._sorted_ranks = [self._ranks[rank] for rank in sorted(self._ranks)]
            return self._sorted_ranks

    @property
    def world_size(self) -> int:
        """How many processes the job has: 1 for a single-process run."""
        return self._world_size or len(self._ranks) or 1

    @property
    def lr_groups(self) -> int:
        return sum(1 for name in self.series if name.startswith("lr/"))

    def rates(self) -> dict[str, float | None]:
        """Recent samples/s, seconds per step and share of step time spent waiting for data."""
        with self.lock:
            recent = list(self._recent)
        step_time = sum(r[0] for r in recent if math.isfinite(r[0]))
        data_time = sum(r[1] for r in recent if math.isfinite(r[1]))
        samples = sum(r[2] for r in recent if math.isfinite(r[0]))
        count = sum(1 for r in recent if math.isfinite(r[0]))
        return {
            "samples_per_s": samples / step_time if step_time > 0 and samples else None,
            "seconds_per_step": step_time / count if count else None,
            "data_wait_share": data_time / step_time if step_time > 0 else None,
        }

    def eta(self) -> float | None:
        total, rate = self.total_steps, self.rates()["seconds_per_step"]
        if total is None or rate is None or self.status not in (RUNNING, PAUSED):
            return None
        return max(0, total - self.step) * rate

    def elapsed(self, live: bool = True) -> float | None:
        """Seconds since the start: until now for a live run, else until its last event."""
        if self.start is None:
            return None
        if self.end is not None and isinstance(self.end.get("elapsed"), int | float):
            return float(self.end["elapsed"])
        until = time.time() if live else self.last_time
        return max(0.0, until - float(self.start.get("time", 0)))

    # -- snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-serializable: what a client needs to draw the whole run."""
        with self.lock:
            return {
                "version": SNAPSHOT_VERSION,
                "seq": self.seq,
                "capacity": self.capacity,
                "smoothing": self.smoothing,
                "start": self.start,
                "end": self.end,
                "status": self.status,
                "series": {name: s.to_dict() for name, s in self.series.items()},
                "controls": list(self.controls),
                "alerts": list(self.alerts),
                "messages": list(self.messages),
                "checkpoints": list(self.checkpoints),
                "last_step": self.last_step,
                "stop_ignored_at": self.stop_ignored_at,
                "not_recording": self.not_recording,
                "last_metrics": self.last_metrics,
                "layer_grad_norms": self.layer_grad_norms,
                "layer_update_ratios": self.layer_update_ratios,
                "loss_scale": self.loss_scale,
                "skipped_steps": self.skipped_steps,
                "system": self.system,
                "cpu_history": list(self.cpu_history),
                "gpu_history": {
                    str(k): {n: list(v) for n, v in h.items()} for k, h in self.gpu_history.items()
                },
                "recent": list(self._recent),
                "ema": [self._ema._biased, self._ema._count],
                "last_time": self.last_time,
                "skipped_lines": self.skipped_lines,
                "skipped_line_numbers": self.skipped_line_numbers,
                "rejected": self.rejected,
                "world_size": self._world_size,
                "ranks": [dict(summary) for summary in self.ranks],
            }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> RunState:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {data.get('version')!r}")
        state = cls(int(data["capacity"]), float(data["smoothing"]))
        state.seq = int(data["seq"])
        state.start, state.end, state.status = data["start"], data["end"], data["status"]
        state._remember_start()
        state.series = {name: BucketSeries.from_dict(s) for name, s in data["series"].items()}
        state.controls.extend(data["controls"])
        state.alerts.extend(data["alerts"])
        state.messages.extend(data["messages"])
        state.checkpoints.extend(data["checkpoints"])
        state.counts.update(
            {CONTROL: len(state.controls), ALERT: len(state.alerts), MESSAGE: len(state.messages)}
        )
        state.last_step = data["last_step"]
        state.stop_ignored_at = data.get("stop_ignored_at")
        state.not_recording = data.get("not_recording")
        state.last_metrics = dict(data["last_metrics"])
        state.layer_grad_norms = dict(data["layer_grad_norms"])
        state.layer_update_ratios = dict(data["layer_update_ratios"])
        # A snapshot from before mixed precision has neither.
        scale = data.get("loss_scale")
        state.loss_scale = as_number(scale) if math.isfinite(as_number(scale)) else None
        skipped = data.get("skipped_steps")
        state.skipped_steps = skipped if type(skipped) is int and skipped >= 0 else 0
        state.system = data["system"]
        state.cpu_history.extend(data["cpu_history"])
        for index, history in data["gpu_history"].items():
            state.gpu_history[int(index)] = {
                name: deque(values, maxlen=HISTORY) for name, values in history.items()
            }
        state._recent.extend(tuple(r) for r in data["recent"])
        state._ema._biased, state._ema._count = data["ema"]
        state.last_time = float(data.get("last_time", 0.0))
        state.skipped_lines = int(data.get("skipped_lines", 0))
        state.skipped_line_numbers = list(data.get("skipped_line_numbers", []))
        state.rejected = int(data.get("rejected", 0))
        # A snapshot from before distributed jobs has neither; a cache's are checked here.
        state._apply_ranks(data.get("world_size"), data.get("ranks"))
        state.version = 1
        return state


# The handler of each event type but `step` (RunState._apply calls that one first). Each
# takes its event's TypedDict: _apply has checked only that it is an object with a type.
_HANDLERS: Final[dict[str, Callable[[RunState, Any], None]]] = {
    START: RunState._on_start,
    END: RunState._on_end,
    METRICS: RunState._on_metrics,
    SYSTEM: RunState._on_system,
    ALERT: RunState._on_alert,
    ALERT_CLEARED: RunState._on_alert_cleared,
    CONTROL: RunState._on_control,
    CHECKPOINT: RunState._on_checkpoint,
    MESSAGE: RunState._on_message,
    RANKS: RunState._on_ranks,
}


def load_run_state(
    path: str | Path, fold_every: int = 65536, *, into: RunState | None = None, offset: int = 0
) -> RunState:
    """A run's state read from its event log (for `replay`, or a run whose worker is gone).

    Damaged lines are skipped and counted (`skipped_lines`). The log is the record, so
    every event is applied in its order (no seq de-duplication, which is for a snapshot
    meeting live events). Step points wait in columns and are folded into the series in
    bulk, the same buckets as one by one, many times faster for a long run.

    `into` and `offset`: the events from byte `offset` on, applied to a state that already
    holds those before it (run/replay_cache.py: a cached state and the log written since).
    """
    state = into if into is not None else RunState()
    reader = read_events(path, offset)
    with state.lock:
        state._rows = StepRows()
        try:
            for count, event in enumerate(reader, start=1):
                state._apply(event, dedupe=False)
                if not count % fold_every:
                    state._fold()
            state._fold()
        finally:
            state._rows = None
        if reader.skipped:
            before = count_lines(path, offset) if offset else 0
            room = KEPT_LINE_NUMBERS - len(state.skipped_line_numbers)
            state.skipped_line_numbers.extend(
                before + number for number in reader.skipped_lines[: max(0, room)]
            )
            state.skipped_lines += reader.skipped
        state.version += 1
    return state


_PER_LAYER = ("layer_grad_norms", "layer_update_ratios")
# Keys of a `metrics` event that are not metrics: the log's own, and the rank that wrote
# it in a distributed job.
_NOT_METRICS: Final = RESERVED_METRIC_KEYS | {"rank"}


def _recent_row(event: StepEvent) -> tuple[float, float, float, float]:
    """(step time, data time, samples, time) of a step, for the rates of recent steps."""
    samples = as_number(event.get("samples"))
    return (
        as_number(event.get("step_time")),
        as_number(event.get("data_time")),
        samples if math.isfinite(samples) else 0.0,
        as_number(event.get("time")),
    )


def _readings(values: Any) -> dict[str, Any]:
    """A sample of a machine (host, GPU, CUDA memory): its numbers, lists of numbers and
    short texts (a name); a field of another type is left out."""
    readings: dict[str, Any] = {}
    for key, value in as_dict(values).items():
        kind = type(value)
        if kind is int or kind is float:
            number = as_number(value)
            if math.isfinite(number):
                readings[key] = value
        elif kind is str and len(value) <= 200:
            readings[key] = value
        elif kind is list and all(type(v) is int or type(v) is float for v in value):
            readings[key] = [as_number(v) for v in value]
    return readings


def _layer_values(layers: dict[Any, Any]) -> dict[str, float]:
    """Per-layer numbers: names that are text, values that are numbers, a bounded count."""
    values: dict[str, float] = {}
    for name, value in layers.items():
        if len(values) >= MAX_LAYERS:
            break
        if type(value) is float or type(value) is int:
            values[_clip(name, 200)] = as_number(value)
    return values


def _clip(text: Any, limit: int = TEXT_LIMIT) -> str:
    """Text, at most `limit` characters of it (a note says how many were cut)."""
    if type(text) is not str:
        text = _short_repr(text)
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [{len(text) - limit} more characters]"


def _clip_tail(text: Any, limit: int) -> str:
    """The end of a long text (a traceback's last lines say what failed)."""
    if type(text) is not str:
        text = _short_repr(text)
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters cut] …" + text[-limit:]


def _short_repr(value: Any) -> str:
    bounded = _bounded({"v": value}, depth=3, items=16)["v"]
    return bounded if isinstance(bounded, str) else repr(bounded)


def _bounded(value: Any, depth: int = 4, items: int = 100, text: int = TEXT_LIMIT) -> Any:
    """A copy of a JSON value with its strings clipped to `text`, its containers to
    `items` entries and its nesting to `depth`: what a stored event may hold."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= text else _clip(value, text)
    if kind is dict:
        if depth <= 0:
            return "{…}"
        out: dict[str, Any] = {}
        for key, inner in value.items():
            if len(out) >= items:
                out["…"] = f"{len(value) - items} more entries"
                break
            name = key if type(key) is str and len(key) <= 200 else _clip(key, 200)
            out[name] = _bounded(inner, depth - 1, items, text)
        return out
    if kind is list:
        if depth <= 0:
            return "[…]"
        out_list = [_bounded(inner, depth - 1, items, text) for inner in value[:items]]
        if len(value) > items:
            out_list.append(f"… {len(value) - items} more items")
        return out_list
    if kind is int and abs(value) >= 2**63:
        return as_number(value)
    return value
