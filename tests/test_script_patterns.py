"""The README's patterns for real scripts: gradient accumulation, clipping, torch.compile.

Each is a real loop the way users write it, checked against what the log then says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tuimon
from tuimon.run.checkpoint import model_weights
from tuimon.run.log_reader import read_events


def _steps(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "step"]


def test_gradient_accumulation_counts_every_micro_batch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    accumulate, batch = 4, 8
    with tuimon.Monitor(model, optimizer, run_dir=tmp_path / "run", quiet=True) as mon:
        for _ in range(6):
            optimizer.zero_grad()
            for _micro in range(accumulate):
                x, y = torch.randn(batch, 8), torch.randint(0, 3, (batch,))
                out = model(x)
                loss = F.cross_entropy(out, y)
                (loss / accumulate).backward()
            optimizer.step()
            mon.step(loss, inputs=x, targets=y, outputs=out, micro_batches=accumulate)
        mon.step(loss, samples=100)  # the summed batch size, given directly
    steps = _steps(tmp_path / "run")
    assert [s["samples"] for s in steps] == [32] * 6 + [100]
    assert all(s["optimizer_steps"] == 1 for s in steps[:6])
    assert steps[-1]["optimizer_steps"] == 0  # no optimizer.step() before the last call
    with pytest.raises(ValueError, match="micro_batches"):
        tuimon.Monitor(model, optimizer, run_dir=tmp_path / "bad", quiet=True).step(
            loss, micro_batches=0
        )


def test_clipping_records_the_norm_before_and_after(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with tuimon.Monitor(model, optimizer, run_dir=tmp_path / "run", quiet=True) as mon:
        for _ in range(5):
            x = 100 * torch.randn(16, 8)  # big inputs: big gradients, so clipping bites
            optimizer.zero_grad()
            loss = F.mse_loss(model(x), torch.zeros(16, 1))
            loss.backward()
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            mon.step(loss, inputs=x, grad_norm=total)
            last_total = float(total)
    steps = _steps(tmp_path / "run")
    assert all(s["grad_norm"] <= 1.0 + 1e-4 for s in steps)  # what the optimizer used
    assert all(s["grad_norm_unclipped"] > 10 for s in steps)  # what the loss produced
    assert steps[-1]["grad_norm_unclipped"] == pytest.approx(last_total, rel=1e-5)


def test_a_compiled_model_is_watched_under_its_own_names(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    compiled = torch.compile(model)  # compiles lazily: never called here, so it stays cheap
    assert next(n for n, _ in compiled.named_parameters()).startswith("_orig_mod.")
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.05)
    with tuimon.Monitor(compiled, optimizer, run_dir=tmp_path / "run", quiet=True) as mon:
        for _ in range(3):
            x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            mon.step(loss, inputs=x, targets=y)
        path = mon.checkpoint()
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert events[0]["model"]["layers"] == ["0", "2"]
    assert set(_steps(tmp_path / "run")[0]["layer_grad_norms"]) == {"0", "2"}
    weights = model_weights(path)
    assert set(weights) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_exploding_gradients_are_seen_through_the_users_clipping():
    from tuimon.doctor.engine import Doctor

    def steps(unclipped: bool) -> list[dict]:
        events = []
        for step in range(1, 40):
            norm = 1.0 if step < 10 else 10.0 ** (step - 8)  # explodes from step 10
            event = {"type": "step", "step": step, "loss": 1.0, "grad_norm": min(norm, 1.0)}
            if unclipped:
                event["grad_norm_unclipped"] = norm
            events.append(event)
        return events

    def named(events: list[dict]) -> bool:
        return any(a["rule"] == "exploding_gradients" for a in Doctor().run(events))

    assert named(steps(unclipped=True))
    assert not named(steps(unclipped=False))  # the clipped norm alone hides it
