"""The probes' cheaper paths: what they report is unchanged, and steps they do not probe
carry none of their hooks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tuimon
from tuimon.monitor.batch_probe import BatchProbe
from tuimon.run.log_reader import read_events


def test_batch_probe_statistics_are_the_textbook_ones():
    # The probe reads extremes and norms to save kernels; the event must still hold the
    # std, the largest |row sum - 1| and the largest |logsumexp| themselves.
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(32, 1, 28, 28, generator=generator) * 3 + 5
    x[5, 0, 0, 0] = math.nan
    x[6, 0, 1, 1] = math.inf
    y = torch.randint(0, 10, (32,), generator=generator)
    for out in (
        torch.randn(32, 10, generator=generator),
        torch.randn(32, 10, generator=generator).softmax(dim=1),
        torch.randn(32, 10, generator=generator).log_softmax(dim=1),
    ):
        loss = nn.functional.cross_entropy(out, y)
        row, layout = BatchProbe(1).measure(x, y, out, loss)
        event = BatchProbe.decode(row.tolist(), layout)
        assert event["inputs"]["nonfinite"] == 2
        assert math.isnan(event["inputs"]["mean"]) and math.isnan(event["inputs"]["std"])
        clean = torch.randn(32, 1, 28, 28, generator=generator) * 3 + 5
        row, layout = BatchProbe(1).measure(clean, y, out, loss)
        event = BatchProbe.decode(row.tolist(), layout)
        std, mean = torch.std_mean(clean[:16], correction=0)
        assert event["inputs"]["nonfinite"] == 0
        assert event["inputs"]["mean"] == pytest.approx(float(mean), rel=1e-5)
        assert event["inputs"]["std"] == pytest.approx(float(std), rel=1e-5)
        assert event["inputs"]["min"] == float(clean[:16].min())
        assert event["outputs"]["min"] == float(out.min())
        assert event["outputs"]["row_sum_error"] == pytest.approx(
            float((out.sum(dim=1) - 1).abs().max()), rel=1e-5, abs=1e-6
        )
        assert event["loss"]["logsumexp_error"] == pytest.approx(
            float(out.logsumexp(dim=1).abs().max()), rel=1e-5, abs=1e-6
        )
        assert "cross_entropy" in event["loss"]["matches"]
        assert event["targets"]["counts"] == torch.bincount(y, minlength=10).float().tolist()


def test_off_steps_carry_no_probe_hooks(tmp_path):
    # A hooked module takes nn.Module's slow call path and a hooked parameter costs a call
    # per backward: between probes, the activation and stale-gradient probes leave none.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    relu, last_bias = model[2], model[3].bias
    hooked = []
    with tuimon.Monitor(
        model, opt, run_dir=tmp_path / "run", quiet=True, probes={"activations_every": 10}
    ) as mon:
        for _ in range(25):
            x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            mon.step(loss, inputs=x, targets=y, outputs=out)
            hooked.append((bool(relu._forward_hooks), bool(last_bias._backward_hooks)))
    # After step n: the ReLU is hooked when step n+1 is probed (1, 2, 3, 10, 20: steps
    # 1, 2, 9, 19), the bias while a checked step's gradient is kept (1, 2, 5, 10, 20).
    assert [n for n, (acts, _) in enumerate(hooked, 1) if acts] == [1, 2, 9, 19]
    assert [n for n, (_, grad) in enumerate(hooked, 1) if grad] == [1, 2, 5, 10, 20]
    events = list(read_events(mon.run_dir / "events.jsonl"))
    probed = [e["step"] for e in events if e.get("probe") == "activations"]
    assert probed == [2, 3, 10, 20]
    assert not relu._forward_hooks and not last_bias._backward_hooks
