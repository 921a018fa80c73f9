"""Rules on the data: NaN and unscaled inputs, skewed or sorted labels, a slow loader."""

from __future__ import annotations

import math
import statistics
from collections import deque

from tuimon.doctor.context import RunContext
from tuimon.doctor.rule import Rule, Verdict, clear, probe_route
from tuimon.doctor.streak import Streak
from tuimon.run.events import BATCH_PROBE, ERROR, BatchProbeEvent, StepEvent


class InputNan(Rule[BatchProbeEvent]):
    id = "input_nan"
    cause = True
    severity = ERROR
    events = (probe_route(BATCH_PROBE),)
    clear_after = 50  # clean probed batches in a row
    suppresses = (
        "nan_loss",
        "nan_grad",
        "divergence",
        "exploding_gradients",
        "dead_relu",
        "saturated_activations",
        "chance_level",
        "stall",
        "oscillation",
    )
    summary = "a batch contains NaN or Inf"
    fix = "fix the data pipeline (division by zero, corrupt samples)"

    def check(self, event: BatchProbeEvent, ctx: RunContext) -> Verdict | None:
        inputs = event.get("inputs") or {}
        if "nonfinite" not in inputs:
            return None
        bad = inputs["nonfinite"]
        if not bad:
            return clear()
        return Verdict(
            True,
            f"the batch at step {event.get('step')} has {bad:.0f} NaN/Inf values among its "
            f"{inputs.get('count', 0):.0f} inputs",
            "find where the data pipeline makes them (a division by zero in normalization, a "
            "log of 0, a corrupt sample) and filter or fix them; the loss will go NaN",
            {"step": event.get("step"), "nonfinite": bad, "count": inputs.get("count")},
        )


class InputScale(Rule[BatchProbeEvent]):
    id = "input_scale"
    cause = True
    events = (probe_route(BATCH_PROBE),)
    defaults = {"max_scale": 10.0, "min_scale": 1e-3, "patience": 2}
    suppresses = (
        "dead_relu",
        "saturated_activations",
        "vanishing_gradients",
        "exploding_gradients",
        "chance_level",
        "stall",
        "lr_too_low",
        "lr_too_high",
        "oscillation",
        "divergence",
    )
    summary = "inputs are far from normalized (e.g. raw 0-255 pixels)"
    fix = "normalize to ~zero mean, unit variance"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.unscaled = Streak(self.p["patience"])  # probed batches far from normalized

    def check(self, event: BatchProbeEvent, ctx: RunContext) -> Verdict | None:
        inputs = event.get("inputs") or {}
        if "mean" not in inputs or not inputs.get("floating", True):
            return None
        mean, std = inputs["mean"], inputs["std"]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in (mean, std)):
            return None
        scale = max(abs(mean), std)
        if self.p["min_scale"] <= scale <= self.p["max_scale"]:
            self.unscaled.reset()
            return clear()
        if not self.unscaled.hold():
            return None
        low, high = inputs.get("min"), inputs.get("max")
        if scale > self.p["max_scale"]:
            pixels = high is not None and 100 < high <= 255.5 and low is not None and low >= 0
            hint = (
                " — these look like raw 0-255 pixels: divide by 255, then normalize by "
                "the dataset's mean and std"
                if pixels
                else ""
            )
            advice = (
                f"normalize the inputs to about zero mean and unit variance: "
                f"x = (x - {mean:.3g}) / {std:.3g}{hint}"
            )
        else:
            advice = "the inputs are nearly constant: check the preprocessing (scaled twice?)"
        return Verdict(
            True,
            f"inputs have mean {mean:.3g} and std {std:.3g} (range {low:.3g} to {high:.3g})",
            advice,
            {"mean": mean, "std": std, "min": low, "max": high},
        )


class ClassImbalance(Rule[BatchProbeEvent]):
    id = "class_imbalance"
    events = (probe_route(BATCH_PROBE),)
    defaults = {"ratio": 10.0, "min_samples": 1000}
    summary = "the label distribution is heavily skewed"
    fix = "a class-weighted loss or a weighted sampler"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.counts: list[float] = []
        self.pure_classes: set[int] = set()  # the class of each one-class batch seen

    def check(self, event: BatchProbeEvent, ctx: RunContext) -> Verdict | None:
        counts = (event.get("targets") or {}).get("counts")
        if not counts:
            return None
        if len(self.counts) != len(counts):
            self.counts = [0.0] * len(counts)
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        size = sum(counts)
        dominant = max(range(len(counts)), key=lambda c: counts[c])
        if size and counts[dominant] / size >= 0.9:
            self.pure_classes.add(dominant)
        if sum(self.counts) < self.p["min_samples"]:
            return None
        if len(self.pure_classes) >= 2:
            return None  # one-class batches of changing classes: sorted data, not skew
        high, low = max(self.counts), min(self.counts)
        ratio = high / low if low > 0 else math.inf
        if ratio <= self.p["ratio"]:
            return clear()
        most, least = self.counts.index(high), self.counts.index(low)
        return Verdict(
            True,
            f"class {most} is {ratio:.3g}× as frequent as class {least} in "
            f"{sum(self.counts):.0f} sampled labels",
            "the model can score well by ignoring rare classes: weight the loss "
            "(CrossEntropyLoss(weight=...)) or resample (WeightedRandomSampler), and judge it "
            "by per-class accuracy",
            {"counts": [int(c) for c in self.counts], "ratio": ratio},
        )


class UnshuffledData(Rule[BatchProbeEvent]):
    id = "unshuffled_data"
    cause = True
    events = (probe_route(BATCH_PROBE),)
    defaults = {"purity": 0.9, "min_batch": 16, "run": 3}
    clear_after = 10  # mixed probed batches in a row
    suppresses = (
        "class_imbalance",
        "divergence",
        "oscillation",
        "stall",
        "dead_relu",
        "chance_level",
    )
    summary = "batches come sorted by label"
    fix = "shuffle the data (DataLoader(shuffle=True))"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.recent: deque[int | None] = deque(maxlen=int(self.p["run"]))
        self.dominants: set[int] = set()

    def check(self, event: BatchProbeEvent, ctx: RunContext) -> Verdict | None:
        counts = (event.get("targets") or {}).get("counts")
        if not counts or len(counts) < 2:
            return None
        size = sum(counts)
        if size < self.p["min_batch"]:
            return None
        dominant = max(range(len(counts)), key=lambda c: counts[c])
        present = sum(1 for c in counts if c > 0)
        pure = counts[dominant] / size >= self.p["purity"] and present <= 2
        self.recent.append(dominant if pure else None)
        if pure:
            self.dominants.add(dominant)
        else:
            return clear()
        # Sorted data: run after run of one-class batches, and the class changes over time
        # (a dataset that is simply dominated by one class is class_imbalance instead).
        if len(self.recent) < self.p["run"] or None in self.recent or len(self.dominants) < 2:
            return None
        return Verdict(
            True,
            f"the last {len(self.recent)} sampled batches each hold a single class "
            f"({', '.join(str(c) for c in self.recent)}), and the class changes as training "
            f"goes on ({len(self.dominants)} so far)",
            "the data comes sorted by label, so each step pulls the model toward one class: "
            "shuffle it (DataLoader(shuffle=True))",
            {"dominant_classes": sorted(self.dominants), "batch_size": size},
        )


class DataloaderBottleneck(Rule[StepEvent]):
    """The typical step (the median over a window) waits on data for most of its time,
    and for long enough to matter.

    Medians, not sums: time the script spends once per epoch elsewhere (validation,
    saving, a pause) lands in one step's wait and is an outlier, while a slow loader slows
    every step. And a wait under `min_wait_ms` (a tiny model on a busy machine) is never a
    bottleneck worth a worker process.
    """

    id = "dataloader_bottleneck"
    defaults = {"warmup": 20, "window": 100, "share": 0.5, "min_wait_ms": 5.0, "checks": 2}
    clear_after = 2
    summary = "the typical step waits on data most of the time (and ≥ 5 ms)"
    fix = "more DataLoader workers, pin_memory, faster decoding"

    def __init__(self, params: dict[str, float] | None = None) -> None:
        super().__init__(params)
        self.waits: list[tuple[float, float]] = []  # (data time, step time) in the window
        self.starved = Streak(self.p["checks"])  # windows that waited on data

    def check(self, event: StepEvent, ctx: RunContext) -> Verdict | None:
        step_time, data_time = event.get("step_time"), event.get("data_time")
        if ctx.step <= self.p["warmup"] or not isinstance(step_time, int | float):
            return None
        if not isinstance(data_time, int | float) or step_time <= 0:
            return None
        self.waits.append((data_time, step_time))
        if len(self.waits) < self.p["window"]:
            return None
        share = statistics.median(min(1.0, data / total) for data, total in self.waits)
        data_ms = 1000 * statistics.median(data for data, _ in self.waits)
        step_ms = 1000 * statistics.median(total for _, total in self.waits)
        self.waits = []
        if share <= self.p["share"] or data_ms < self.p["min_wait_ms"]:
            self.starved.reset()
            return clear()
        if not self.starved.hold():
            return None
        workers = f" (now {ctx.num_workers})" if ctx.num_workers is not None else ""
        return Verdict(
            True,
            f"the step waits for data {share:.0%} of the time: {data_ms:.1f} ms of every "
            f"{step_ms:.1f} ms (medians over {self.p['window']:.0f} steps)",
            f"the model is starved: raise DataLoader num_workers{workers}, set "
            "pin_memory=True, cache decoded samples, or move augmentation to the GPU",
            {"share": share, "data_ms": data_ms, "step_ms": step_ms},
        )
