"""All the probes a Monitor runs inside the training loop, and how their numbers come back.

Each probe leaves device tensors for a step (no sync); `StepProbes.read` turns the fetched
host values into the step event's fields (gradient norms, update ratio) and into `probe`
events (batch, activations, stale gradients) that the training doctor reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuimon.config.schema import ProbeConfig
from tuimon.monitor.activation_probe import ActivationProbe
from tuimon.monitor.batch_probe import BatchProbe
from tuimon.monitor.dead_unit_probe import DeadUnitProbe
from tuimon.monitor.device_buffer import StepRecord
from tuimon.monitor.grad_probe import GradientProbe
from tuimon.monitor.param_layout import ParamLayout
from tuimon.monitor.stale_grad_probe import StaleGradProbe
from tuimon.monitor.update_probe import UpdateProbe
from tuimon.run.events import (
    ACTIVATIONS_PROBE,
    BATCH_PROBE,
    DEAD_UNITS_PROBE,
    PROBE,
    STALE_GRAD_PROBE,
    ActivationsProbeEvent,
    BatchProbeEvent,
    DeadUnitsProbeEvent,
    ProbeEvent,
    StaleGradProbeEvent,
)

# The device-buffer slot of a fused optimizer's GradScaler flag: 1 when it skipped the step.
FOUND_INF = "found_inf"


@dataclass
class StepSample:
    """One `Monitor.step()`'s probe results, before any of them is read back to the host."""

    lrs: list[float] | None  # as used by the step's optimizer.step(); None if it did not step
    tensors: dict[str, torch.Tensor]  # device tensors (those it has), fetched in batches
    layout: dict[str, Any]  # host-side facts needed to decode them
    optimizer_steps: int  # optimizer.step() calls since the previous Monitor.step()


class StepProbes:
    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: ProbeConfig,
        grad_clip: float | None,
    ) -> None:
        self.settings = settings
        self.layout = ParamLayout(model, optimizer)
        self.grads = GradientProbe(self.layout, optimizer)
        self.grads.clip = grad_clip
        self.updates = UpdateProbe(self.layout, optimizer, settings.update_ratio_every)
        self.batch = BatchProbe(settings.batch_every)
        self.activations = ActivationProbe(model, settings.activations_every)
        self.stale = StaleGradProbe(self.layout, optimizer, settings.stale_grad_every)
        # Dead units behind functional activations, on the activation probe's schedule.
        self.dead_units = DeadUnitProbe(model, self.layout, optimizer, settings.activations_every)
        self._layer_norms_logged = False
        self._sampled: tuple[tuple[str, Any], ...] = (
            ("update", self.updates),
            ("acts", self.activations),
            ("stale", self.stale),
            ("dead", self.dead_units),
        )

    def remove(self) -> None:
        for probe in (self.grads, self.updates, self.activations, self.stale, self.dead_units):
            probe.remove()

    def sample(
        self, step: int, inputs: Any, targets: Any, outputs: Any, loss: Any = None
    ) -> StepSample:
        """What the probes left on the device for this step, and its host-side facts."""
        grads = self.grads.take()
        optimizer_steps = self.grads.take_step_count()
        tensors: dict[str, torch.Tensor] = {}
        if grads is not None and grads.norms is not None:
            tensors["grad"] = grads.norms
        if grads is not None and grads.found_inf is not None:
            tensors[FOUND_INF] = grads.found_inf
        # The sampled probes: most steps, each has nothing and costs one look.
        for kind, probe in self._sampled:
            found = probe.take()
            if found is not None:
                tensors[kind] = found
        layout: dict[str, Any] = {}
        if self.batch.due(step):
            found, layout = self.batch.measure(inputs, targets, outputs, loss)
            if found is not None:
                tensors["batch"] = found
        self.activations.arm(step + 1)
        self.dead_units.arm(step + 1)
        return StepSample(
            lrs=grads.lrs if grads is not None else None,
            tensors=tensors,
            layout=layout,
            optimizer_steps=optimizer_steps,
        )

    def read(self, records: list[StepRecord]) -> list[tuple[dict[str, Any], list[ProbeEvent]]]:
        """For each record: (fields of its step event, its probe events)."""
        with_grads = [r for r in records if "grad" in r.values]
        norms = dict(
            zip(
                map(id, with_grads),
                self.layout.reduce([r.values["grad"] for r in with_grads]),
                strict=True,
            )
        )
        out = []
        for record in records:
            step = record.meta["step"]
            fields: dict[str, Any] = {}
            probes: list[ProbeEvent] = []
            if FOUND_INF in record.values and record.values[FOUND_INF][0] > 0:
                # The GradScaler found inf/NaN: the optimizer was called but skipped the
                # update, as a step the scaler did not call at all (no grad_norm).
                fields["optimizer_steps"] = max(record.meta["optimizer_steps"] - 1, 0)
            elif id(record) in norms:
                total, layers = norms[id(record)]
                fields["grad_norm"] = total
                every = self.settings.layer_norms_every
                if layers and (step % every == 0 or not self._layer_norms_logged):
                    self._layer_norms_logged = True
                    fields["layer_grad_norms"] = layers
            if "update" in record.values:
                ratio, layers = self.updates.reduce(record.values["update"])
                fields["update_ratio"] = ratio
                fields["layer_update_ratios"] = layers
            if "batch" in record.values:
                batch: BatchProbeEvent = {"type": PROBE, "probe": BATCH_PROBE, "step": step}
                batch.update(
                    BatchProbe.decode(record.values["batch"], record.meta.get("batch_layout", {}))
                )
                probes.append(batch)
            if "acts" in record.values:
                activations: ActivationsProbeEvent = {
                    "type": PROBE,
                    "probe": ACTIVATIONS_PROBE,
                    "step": step,
                    "layers": self.activations.decode(record.values["acts"]),
                }
                probes.append(activations)
            if "dead" in record.values:
                dead: DeadUnitsProbeEvent = {
                    "type": PROBE,
                    "probe": DEAD_UNITS_PROBE,
                    "step": step,
                    "layers": self.dead_units.decode(record.values["dead"]),
                }
                probes.append(dead)
            if "stale" in record.values:
                stale: StaleGradProbeEvent = {
                    "type": PROBE,
                    "probe": STALE_GRAD_PROBE,
                    "step": step,
                    "stale": record.values["stale"][0] > 0.5,
                    "param": self.stale.param_name,
                }
                probes.append(stale)
            out.append((fields, probes))
        return out
