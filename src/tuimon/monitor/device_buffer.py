"""Per-step values kept on the device and fetched in batches, never one sync per step.

Each step leaves its loss and gradient norms as device tensors. Every `log_every` steps (or
once a second when steps are slow) they are stacked and copied to the host in one transfer.
On CUDA the copy goes to pinned memory without blocking and is picked up on a later step
once its event has completed; on the CPU it is immediate.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

# Steps slower than this are fetched one by one: the log must be fed at least every second.
MAX_DELAY_S = 1.0


@dataclass
class StepRecord:
    """What is known of a step once its device values have reached the host."""

    meta: dict[str, Any]
    loss: float
    norms: list[float] | None


@dataclass
class _Batch:
    metas: list[dict[str, Any]]
    loss_slots: list[int | float]  # index into the loss tensor, or the loss itself
    norm_slots: list[int | None]  # index into the norms tensor
    losses: torch.Tensor | None = None
    norms: torch.Tensor | None = None
    ready: Any = None  # torch.cuda.Event for an asynchronous copy


class DeviceBuffer:
    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self._metas: list[dict[str, Any]] = []
        self._loss_tensors: list[torch.Tensor] = []
        self._loss_slots: list[int | float] = []
        self._norm_tensors: list[torch.Tensor] = []
        self._norm_slots: list[int | None] = []
        self._in_flight: deque[_Batch] = deque()
        self._last_fetch = time.monotonic()

    def __len__(self) -> int:
        return len(self._metas)

    def add(self, meta: dict[str, Any], loss: Any, norms: torch.Tensor | None) -> None:
        self._metas.append(meta)
        if isinstance(loss, torch.Tensor):
            self._loss_slots.append(len(self._loss_tensors))
            value = loss.detach()
            self._loss_tensors.append(value if value.dim() == 0 else value.reshape(()))
        else:
            self._loss_slots.append(_to_float(loss))
        if norms is None:
            self._norm_slots.append(None)
        else:
            self._norm_slots.append(len(self._norm_tensors))
            self._norm_tensors.append(norms)

    def due(self) -> bool:
        if not self._metas:
            return False
        return (
            len(self._metas) >= self.log_every or time.monotonic() - self._last_fetch >= MAX_DELAY_S
        )

    def start_transfer(self) -> None:
        """Stack what is pending and start moving it to the host."""
        if not self._metas:
            return
        batch = _Batch(self._metas, self._loss_slots, self._norm_slots)
        batch.losses = _stack(self._loss_tensors)
        batch.norms = _stack_ragged(self._norm_tensors)
        device_tensors = [t for t in (batch.losses, batch.norms) if t is not None]
        if any(t.is_cuda for t in device_tensors):
            batch.losses = _async_to_host(batch.losses)
            batch.norms = _async_to_host(batch.norms)
            batch.ready = torch.cuda.Event()
            batch.ready.record()
        self._in_flight.append(batch)
        self._metas, self._loss_tensors, self._loss_slots = [], [], []
        self._norm_tensors, self._norm_slots = [], []
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
    norms = batch.norms.float().tolist() if batch.norms is not None else []
    records = []
    for meta, loss_slot, norm_slot in zip(
        batch.metas, batch.loss_slots, batch.norm_slots, strict=True
    ):
        loss = losses[loss_slot] if isinstance(loss_slot, int) else loss_slot
        row = norms[norm_slot] if norm_slot is not None else None
        records.append(StepRecord(meta=meta, loss=loss, norms=row))
    return records


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(tensors) if tensors else None


def _stack_ragged(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """Stack norm vectors; a layer added mid-run makes later rows longer, so pad with NaN."""
    if not tensors:
        return None
    width = max(t.numel() for t in tensors)
    if all(t.numel() == width for t in tensors):
        return torch.stack(tensors)
    padded = [torch.nn.functional.pad(t, (0, width - t.numel()), value=math.nan) for t in tensors]
    return torch.stack(padded)


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
