"""Per-step values are fetched in batches, and come back exactly."""

from __future__ import annotations

import math

import torch

from tuimon.monitor import device_buffer
from tuimon.monitor.device_buffer import DeviceBuffer


def test_values_wait_for_a_full_batch_then_come_back_exactly(monkeypatch):
    monkeypatch.setattr(device_buffer, "MAX_DELAY_S", 3600)
    buffer = DeviceBuffer(log_every=10)
    for step in range(9):
        buffer.add({"step": step}, torch.tensor(step * 0.5), torch.tensor([step, step + 1.0]))
        assert not buffer.due()
    buffer.add({"step": 9}, 4.5, None)  # a float loss and a step without gradients
    assert buffer.due()
    buffer.start_transfer()
    records = buffer.collect()
    assert len(buffer) == 0 and [r.meta["step"] for r in records] == list(range(10))
    assert [r.loss for r in records] == [s * 0.5 for s in range(10)]
    assert records[3].norms == [3.0, 4.0] and records[9].norms is None


def test_slow_steps_are_fetched_after_the_delay(monkeypatch):
    monkeypatch.setattr(device_buffer, "MAX_DELAY_S", 0.0)
    buffer = DeviceBuffer(log_every=1000)
    buffer.add({"step": 1}, torch.tensor(1.0), None)
    assert buffer.due()


def test_layer_rows_of_different_lengths_are_padded():
    buffer = DeviceBuffer(log_every=2)
    buffer.add({"step": 1}, torch.tensor(1.0), torch.tensor([1.0, 2.0]))
    buffer.add({"step": 2}, torch.tensor(1.0), torch.tensor([1.0, 2.0, 3.0]))
    first, second = buffer.drain()
    assert first.norms[:2] == [1.0, 2.0] and math.isnan(first.norms[2])
    assert second.norms == [1.0, 2.0, 3.0]
