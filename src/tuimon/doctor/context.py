"""What every rule needs to know about the run so far, kept up to date once per event.

Rules are pure functions of the metric history; this is the shared part of that history
(smoothed loss, its starting value and best, the task, the optimizer and LR), maintained
incrementally so that a rule costs the same at step 10 and at step 10 million.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, cast

from tuimon.run.events import (
    BATCH_PROBE,
    PROBE,
    START,
    STEP,
    BatchProbeEvent,
    StartEvent,
    StepEvent,
)
from tuimon.run.field_types import as_dict, as_number, as_step, has_loss
from tuimon.series.smoothing import DebiasedEMA

INITIAL_STEPS = 10  # the loss at the start: the mean of this many finite losses
HISTORY = 1024  # recent (step, smoothed loss) pairs kept for "N steps ago"
# The EMA weight of the loss every rule reads. Fixed, not the run's `monitor.smoothing`:
# the rules' thresholds (divergence's rise, stall's and oscillation's progress over a
# window, chance_level's tolerance…) and the fault zoo's detection steps were calibrated on
# it, so how smooth a user likes the chart must not change when or whether a rule fires.
SMOOTHING = 0.9


class RunContext:
    def __init__(self) -> None:
        self.step = 0
        self.loss = math.nan
        self.lr: float | None = None
        self.max_lr = 0.0
        self.grad_norm: float | None = None
        self.update_ratio: float | None = None  # the latest probed ‖Δw‖/‖w‖
        self.ema = DebiasedEMA(SMOOTHING)
        self.initial: float | None = None
        self.best: float | None = None
        self.best_step = 0
        self._first: list[float] = []
        self._ema_history: deque[tuple[int, float]] = deque(maxlen=HISTORY)
        self.num_classes: int | None = None
        self.task: str | None = None  # classification | regression, when known
        # Assumed until a start event names another (the trainer's default; what most
        # classifiers use with the Monitor API).
        self.loss_name = "CrossEntropyLoss"
        self.label_smoothing = 0.0
        self.optimizer: str = "the optimizer"
        self.num_workers: int | None = None
        self.last_input_nan_step: int | None = None
        self.causes: dict[str, int] = {}  # root-cause rules that have alerted, and when
        # A distributed job (the start's `settings` and `distributed`): seconds a rank may
        # go unheard (monitor.rank_timeout), and how many ranks it has.
        self.rank_timeout: float | None = None
        self.world_size: int | None = None

    # -- updating ----------------------------------------------------------------------------

    def update(self, event: dict[str, Any]) -> None:
        # The `type` (and a probe's `probe`) says which event it is; field_types.py has
        # checked its known fields' types.
        kind = event.get("type")
        if kind == START:
            self._on_start(cast(StartEvent, event))
        elif kind == STEP:
            self._on_step(cast(StepEvent, event))
        elif kind == PROBE and event.get("probe") == BATCH_PROBE:
            self._on_batch_probe(cast(BatchProbeEvent, event))

    def _on_start(self, event: StartEvent) -> None:
        # Every field read as the type it must have: a damaged log's start is still a start.
        data = as_dict(event.get("data"))
        config = as_dict(event.get("config"))
        classes = as_step(data.get("num_classes"))
        if data.get("task") == "regression":
            self.task = "regression"
        elif classes is not None and classes >= 2:
            self.task, self.num_classes = "classification", classes
        # The loss as the Monitor saw it (start event's `loss`), else as configured.
        loss = as_dict(event.get("loss")) or as_dict(config.get("loss"))
        name = loss.get("name")
        self.loss_name = name if isinstance(name, str) and name else self.loss_name
        smoothing = as_number(loss.get("label_smoothing"))
        if 0 < smoothing <= 1:
            self.label_smoothing = smoothing
        optimizer = as_dict(event.get("optimizer")).get("class")
        self.optimizer = optimizer if isinstance(optimizer, str) and optimizer else self.optimizer
        self.num_workers = as_step(as_dict(config.get("data")).get("num_workers"))
        timeout = as_number(as_dict(event.get("settings")).get("rank_timeout"))
        self.rank_timeout = timeout if math.isfinite(timeout) and timeout > 0 else None
        self.world_size = as_step(as_dict(event.get("distributed")).get("world_size"))

    def _on_step(self, event: StepEvent) -> None:
        step = as_step(event.get("step"))
        self.step = step if step is not None else self.step
        lr = event.get("lr")
        if type(lr) is float or type(lr) is int:
            self.lr = as_number(lr)
            self.max_lr = max(self.max_lr, self.lr)
        grad = event.get("grad_norm")
        if type(grad) is float or type(grad) is int:
            self.grad_norm = as_number(grad)
        ratio = as_number(event.get("update_ratio"))
        if math.isfinite(ratio):
            self.update_ratio = ratio
        if not has_loss(event):
            return  # a step without a loss: the curve and its EMA stand still
        self.loss = as_number(event.get("loss"))
        smoothed = self.ema.update(self.loss)
        if math.isfinite(self.loss) and len(self._first) < INITIAL_STEPS:
            self._first.append(self.loss)
            if len(self._first) == INITIAL_STEPS:
                self.initial = sum(self._first) / INITIAL_STEPS
        if smoothed is not None:
            self._ema_history.append((self.step, smoothed))
            if self.initial is not None and (self.best is None or smoothed < self.best):
                self.best, self.best_step = smoothed, self.step

    def _on_batch_probe(self, event: BatchProbeEvent) -> None:
        inputs = as_dict(event.get("inputs"))
        if inputs.get("nonfinite"):
            self.last_input_nan_step = as_step(event.get("step")) or 0
        counts = as_dict(event.get("targets")).get("counts")
        if self.task is None and isinstance(counts, list):
            self.task, self.num_classes = "classification", len(counts)

    # -- reading -------------------------------------------------------------------------------

    @property
    def smoothed(self) -> float | None:
        return self.ema.value

    def smoothed_ago(self, steps: int) -> float | None:
        """The smoothed loss about `steps` steps ago, if that far back is known."""
        target = self.step - steps
        if not self._ema_history or self._ema_history[0][0] > target:
            return None
        for step, value in reversed(self._ema_history):
            if step <= target:
                return value
        return None

    def learning(self, window: int, fraction: float) -> bool:
        """Whether the smoothed loss reached a new low, by `fraction`, in the last `window`
        steps: below its lowest before them (or its first value, early in the run).
        A run that still learns is not held back by whatever a rule sees in it."""
        if not self._ema_history:
            return False
        since = self.step - window
        before = [v for s, v in self._ema_history if s <= since]
        recent = [v for s, v in self._ema_history if s > since]
        reference = min(before) if before else self._ema_history[0][1]
        return bool(recent) and min(recent) < (1 - fraction) * reference

    @property
    def chance_loss(self) -> float | None:
        """ln(C): the cross-entropy of a classifier that predicts uniformly."""
        if self.task == "classification" and self.num_classes:
            return math.log(self.num_classes)
        return None

    @property
    def loss_floor(self) -> float:
        """The lowest loss reachable: 0, or with label smoothing ε over C classes the
        entropy of the smoothed target, -(1-ε+ε/C)·ln(1-ε+ε/C) - (C-1)·(ε/C)·ln(ε/C)."""
        eps, classes = self.label_smoothing, self.num_classes
        if not eps or not classes or not self.loss_is_ce:
            return 0.0
        right, wrong = 1 - eps + eps / classes, eps / classes
        return -right * math.log(right) - (classes - 1) * wrong * math.log(wrong)

    def unconverged(self, far_chance: float, far_initial: float) -> bool:
        """Still far from a good loss: above `far_chance` of the way from the floor up to
        ln(C) for a classifier, else above `far_initial` x the starting loss (both measured
        above the floor label smoothing sets)."""
        smoothed = self.smoothed
        if smoothed is None:
            return False
        floor, chance = self.loss_floor, self.chance_loss
        if chance is not None and self.loss_is_ce:
            return smoothed - floor > far_chance * (chance - floor)
        initial = self.initial
        return initial is not None and smoothed - floor > far_initial * (initial - floor)

    @property
    def loss_is_ce(self) -> bool:
        """A cross-entropy loss, whose value at chance is ln(C) and which wants logits."""
        return self.loss_name in CE_LOSSES

    def lr_text(self) -> str:
        return f"{self.optimizer} at LR {self.lr:.3g}" if self.lr is not None else self.optimizer


CE_LOSSES = ("CrossEntropyLoss", "NLLLoss")
