"""Per-step values kept on the device and fetched in batches, never one sync per step.

Each step leaves its loss and probe vectors (gradient norms, update norms) as device
tensors. Every `log_every` steps (or once a second when steps are slow) they are stacked
and copied to the host in one transfer per kind. On CUDA the copy goes to pinned memory
without blocking and is picked up on a later step once its event has completed; on the CPU
it is immediate.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import torch

# Steps slower than this are fetched one by one: the log must be fed at least every second.
MAX_DELAY_S = 1.0


@dataclass
class StepRecord:
    """What is known of a step once its device values have reached the host."""

    meta: dict[str, Any]
    loss: float | None  # None: the step had no loss (a framework loop that gave none)
    values: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class _Batch:
    metas: list[dict[str, Any]]
    loss_slots: list[int | float | None]  # index into the loss tensor, or the loss itself
    slots: list[dict[str, tuple[int, int]]]  # per step: kind -> (row, width) in its tensor
    losses: torch.Tensor | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    ready: Any = None  # torch.cuda.Event for an asynchronous copy


class DeviceBuffer:
    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self._reset()
        self._in_flight: deque[_Batch] = deque()
        self._last_fetch = time.monotonic()

    def _reset(self) -> None:
        self._metas: list[dict[str, Any]] = []
        self._loss_tensors: list[torch.Tensor] = []
        self._loss_slots: list[int | float | None] = []
        self._rows: dict[str, list[torch.Tensor]] = {}
        self._slots: list[dict[str, tuple[int, int]]] = []

    def __len__(self) -> int:
        return len(self._metas)

    @property
    def in_flight(self) -> bool:
        """Whether a transfer waits for `collect()`."""
        return bool(self._in_flight)

    def add(
        self, meta: dict[str, Any], loss: Any, tensors: Mapping[str, torch.Tensor | None]
    ) -> None:
        """Keep a step's values (`tensors`: by kind; None where the step has none)."""
        self._metas.append(meta)
        if isinstance(loss, torch.Tensor):
            self._loss_slots.append(len(self._loss_tensors))
            value = loss.detach()
            self._loss_tensors.append(value if value.dim() == 0 else value.reshape(()))
        else:
            self._loss_slots.append(None if loss is None else _to_float(loss))
        slots = {}
        for kind, tensor in tensors.items():
            if tensor is None:
                continue
            rows = self._rows.get(kind)
            if rows is None:
                rows = self._rows[kind] = []
            slots[kind] = (len(rows), tensor.numel())
            rows.append(tensor)
        self._slots.append(slots)

    def due(self) -> bool:
        pending = len(self._metas)
        if not pending:
            return False
        return pending >= self.log_every or time.monotonic() - self._last_fetch >= MAX_DELAY_S

    def start_transfer(self) -> None:
        """Stack what is pending and start moving it to the host."""
        if not self._metas:
            return
        batch = _Batch(self._metas, self._loss_slots, self._slots)
        batch.losses = torch.stack(self._loss_tensors) if self._loss_tensors else None
        batch.tensors = {kind: _stack_ragged(rows) for kind, rows in self._rows.items()}
        on_gpu = [t for t in (batch.losses, *batch.tensors.values()) if t is not None and t.is_cuda]
        if on_gpu:
            batch.losses = _async_to_host(batch.losses)
            batch.tensors = {k: _async_to_host(t) for k, t in batch.tensors.items()}
            batch.ready = torch.cuda.Event()
            batch.ready.record()
        self._in_flight.append(batch)
        self._reset()
        self._last_fetch = time.monotonic()

    def collect(self, wait: bool = False) -> list[StepRecord]:
        """Records of every transfer that has completed (all of them if `wait`)."""
        records: list[StepRecord] = []
        while self._in_flight:
            batch = self._in_flight[0]
            if batch.ready is not None and not batch.ready.query():
                if not wait:
                    break
                batch.ready.synchronize()
            self._in_flight.popleft()
            records += _records(batch)
        return records

    def drain(self) -> list[StepRecord]:
        """Everything, now (at pause, checkpoint and close: a sync is fine there)."""
        self.start_transfer()
        return self.collect(wait=True)


def _records(batch: _Batch) -> list[StepRecord]:
    losses = batch.losses.float().tolist() if batch.losses is not None else []
    rows = {kind: tensor.float().tolist() for kind, tensor in batch.tensors.items()}
    records = []
    for meta, loss_slot, slots in zip(batch.metas, batch.loss_slots, batch.slots, strict=True):
        loss = losses[loss_slot] if isinstance(loss_slot, int) else loss_slot
        values = {kind: rows[kind][row][:width] for kind, (row, width) in slots.items()}
        records.append(StepRecord(meta=meta, loss=loss, values=values))
    return records


def _stack_ragged(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack vectors; a parameter added mid-run makes later rows longer, so pad with NaN."""
    width = max(t.numel() for t in tensors)
    if all(t.numel() == width for t in tensors):
        return torch.stack(tensors)
    padded = [torch.nn.functional.pad(t, (0, width - t.numel()), value=math.nan) for t in tensors]
    return torch.stack(padded)


@overload
def _async_to_host(tensor: torch.Tensor) -> torch.Tensor: ...
@overload
def _async_to_host(tensor: None) -> None: ...
def _async_to_host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None or not tensor.is_cuda:
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
