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
        buffer.add(
            {"step": step},
            torch.tensor(step * 0.5),
            {"grad": torch.tensor([step, step + 1.0]), "update": None},
        )
        assert not buffer.due()
    # A float loss, a step without gradients and a probe that runs on this step only.
    buffer.add({"step": 9}, 4.5, {"grad": None, "update": torch.tensor([0.5, math.nan])})
    assert buffer.due()
    buffer.start_transfer()
    records = buffer.collect()
    assert len(buffer) == 0 and [r.meta["step"] for r in records] == list(range(10))
    assert [r.loss for r in records] == [s * 0.5 for s in range(10)]
    assert records[3].values == {"grad": [3.0, 4.0]}
    assert records[9].values["update"][0] == 0.5 and math.isnan(records[9].values["update"][1])
    assert "grad" not in records[9].values


def test_slow_steps_are_fetched_after_the_delay(monkeypatch):
    monkeypatch.setattr(device_buffer, "MAX_DELAY_S", 0.0)
    buffer = DeviceBuffer(log_every=1000)
    buffer.add({"step": 1}, torch.tensor(1.0), {})
    assert buffer.due()


def test_rows_of_different_lengths_come_back_at_their_own_length():
    buffer = DeviceBuffer(log_every=2)
    buffer.add({"step": 1}, torch.tensor(1.0), {"grad": torch.tensor([1.0, 2.0])})
    buffer.add({"step": 2}, torch.tensor([1.5]), {"grad": torch.tensor([1.0, 2.0, 3.0])})
    first, second = buffer.drain()
    assert first.values["grad"] == [1.0, 2.0]
    assert second.values["grad"] == [1.0, 2.0, 3.0] and second.loss == 1.5
