"""The doctor under mixed precision: a GradScaler's loss scale that keeps collapsing is named
(`loss_scale_collapse`), a skipped step is no NaN-gradient alarm, and a scaler that skips
every step gets one verdict (`optimizer_not_stepping`), not two.

First on synthetic series made by the GradScaler's own rule (halve the scale and skip on
inf/NaN gradients, double it after `growth_interval` good steps), then on real float16
autocast loops on the CPU with `torch.amp.GradScaler("cpu")`: healthy ones (which skip
their first steps while the scaler finds its scale, and then one now and then) stay
silent on a busy machine, a faulty one is named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_doctor_loss_loops import SmallCNN, images, mlp
from test_doctor_rules import flat, one_episode, quiet, run, start, steps, the_alert
from torch import nn

from tuimon import Monitor
from tuimon.doctor.registry import RULES, override_problems
from tuimon.number_text import scale_text
from tuimon.run.log_reader import read_events

RULE = "loss_scale_collapse"

# -- synthetic series ---------------------------------------------------------------------------

Overflows = Callable[[int, float], bool]  # (step, scale) -> whether the gradients hold inf/NaN


def scaler_steps(
    count: int, overflows: Overflows, growth_interval: int = 2000, init: float = 65536.0
) -> list[dict[str, Any]]:
    """Step events of a GradScaler's life: `loss_scale` after each update, and
    `optimizer_steps` 0 where it skipped (as torch's GradScaler decides them)."""
    scale, good = init, 0
    scales, stepped = [], []
    for n in range(1, count + 1):
        if overflows(n, scale):
            scale, good = scale / 2, 0
            stepped.append(0)
        else:
            good += 1
            if good == growth_interval:
                scale, good = scale * 2, 0
            stepped.append(1)
        scales.append(scale)
    return steps(learning(count), loss_scale=scales, optimizer_steps=stepped)


def learning(count: int) -> list[float]:
    """A loss that keeps falling, as a healthy run's does (a flat one is a stall)."""
    return [0.1 + 2.2 * 0.995**n for n in range(count)]


def alerts(said: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["rule"], e["step"]) for e in said if e["type"] == "alert"]


def test_scale_text_reads_as_a_power_of_two():
    assert [scale_text(s) for s in (65536.0, 8192.0, 1.0, 0.25, 3.0, 0.0)] == [
        "2^16",
        "2^13",
        "2^0",
        "2^-2",
        "3",
        "0",
    ]


def test_a_scaler_finding_its_scale_then_growing_and_backing_off_is_silent():
    # The gradients overflow float16 above a scale of 2^12: the first four steps are
    # skipped (2^16 → 2^12), then every 10 good steps it tries 2^13, overflows and backs off.
    events = scaler_steps(1000, lambda n, scale: scale > 2.0**12, growth_interval=10)
    skipped = sum(1 for e in events if e["optimizer_steps"] == 0)
    assert skipped > 80  # one skip per 11 steps: normal life at growth_interval=10
    assert alerts(run([start(), *events])) == []


def test_gradients_that_grow_slowly_lower_the_scale_silently():
    # growth_interval 2000 (the default): the scale only comes down, by one halving each
    # time the gradients double (every 100 steps here); a few skips, a steady fall.
    events = scaler_steps(800, lambda n, scale: scale > 2.0 ** (12 - n // 100))
    assert alerts(run([start(), *events])) == []


def test_skips_that_the_scale_grows_back_from_are_silent():
    # Every 6th step overflows whatever the scale, and growth_interval=5 doubles it back
    # after each: 16 skips per 100 steps, but the scale does not fall.
    events = scaler_steps(600, lambda n, scale: n % 6 == 0, growth_interval=5)
    quiet(run([start(), *events]), RULE)


def test_a_scale_that_keeps_halving_without_growing_back_is_named():
    # A quarter of the steps overflow whatever the scale (an op that makes inf/NaN
    # gradients on some batches): with no 2000 good steps in a row, it never grows back.
    events = scaler_steps(300, lambda n, scale: n % 4 == 0)
    said = run([start(), *events])
    alert = the_alert(said, RULE)
    assert alert["step"] == 40  # the 10th skip, the scale down 2^10
    assert alert["severity"] == "warning"
    assert alert["message"].startswith("the loss scale fell from 2^16 at step 1 to 2^6")
    assert "skipped 10 of the last 40 steps" in alert["message"]
    assert alert["evidence"] == {
        "scale_from": 65536.0,
        "scale_to": 64.0,
        "since": 1,
        "skipped": 10,
        "window": 40,
        "step": 40,
    }
    for fix in ("bf16", "lower the LR", "unscale_", "overflows"):
        assert fix in alert["suggestion"]
    assert alerts(said) == [(RULE, 40)]  # no nan_grad, no optimizer_not_stepping


def test_just_under_the_skip_threshold_is_silent():
    # Every 12th step skipped and never grown back: at most 9 skips in any 100 steps.
    events = scaler_steps(600, lambda n, scale: n % 12 == 0 and scale > 1)
    assert (
        max(sum(1 for e in events[i : i + 100] if not e["optimizer_steps"]) for i in range(500))
        == 9
    )
    quiet(run([start(), *events]), RULE)


def test_the_thresholds_can_be_overridden():
    events = scaler_steps(300, lambda n, scale: n % 4 == 0)
    alert = the_alert(run([start(), *events], {RULE: {"skips": 12}}), RULE)
    assert alert["step"] == 48  # the 12th skip
    assert override_problems(RULE, {"skips": 20, "fall": 16, "window": 50}) == []
    assert override_problems(RULE, {"skip": 20})[0][0] == "skip"


def test_a_collapse_that_stops_ends_its_episode():
    # Overflows until step 60, then none: the scale stays at 2^1, the skips leave the
    # 100-step window by step 124, and 20 clear looks later the episode is over.
    events = scaler_steps(300, lambda n, scale: n <= 60 and n % 4 == 0)
    alert, cleared = one_episode(run([start(), *events]), RULE)
    assert alert["step"] == 40
    assert cleared["step"] == 143


def test_a_scale_below_one_that_the_optimizer_steps_at_is_an_error():
    # Gradients overflow float16 above a scale of 1/4: they are over 65504 unscaled. The
    # search skips 18 steps (fewer than optimizer_not_stepping's 20), then it steps at 2^-2.
    events = scaler_steps(100, lambda n, scale: scale > 0.25)
    said = run([start(), *events])
    alert = the_alert(said, RULE)
    assert alert["step"] == 21  # the third step at a scale below 1
    assert alert["severity"] == "error"
    assert "to 2^-2, below 1" in alert["message"]
    assert "even unscaled" in alert["message"]
    quiet(said, "optimizer_not_stepping")


def test_a_scaler_that_skips_every_step_is_optimizer_not_stepping_alone():
    events = scaler_steps(60, lambda n, scale: True)
    said = run([start(), *events])
    assert alerts(said) == [("optimizer_not_stepping", 20)]


def test_a_collapse_into_skipping_every_step_stays_one_verdict():
    # Healthy for 30 steps, then every step overflows: the collapse is named at the 10th
    # skip, and the 20 skips in a row that follow are not a second alert.
    events = scaler_steps(120, lambda n, scale: n > 30)
    said = run([start(), *events])
    assert alerts(said) == [(RULE, 40)]


def test_runs_without_a_scaler_and_old_logs_say_nothing():
    quiet(run([start(), *steps(flat(2.0, 300), optimizer_steps=1)]), RULE)
    quiet(run([start(), *steps(flat(2.0, 300))]), RULE)
    skips = [0 if n % 3 == 0 else 1 for n in range(300)]  # a skip without a scale is not ours
    quiet(run([start(), *steps(flat(2.0, 300), optimizer_steps=skips)]), RULE)
    # A damaged log: a scale that is no number, a step count that is no int.
    for scale, stepped in (("2^16", 0), (float("nan"), 0), (1e-3, False), (None, 0)):
        said = run([start(), *steps(flat(2.0, 300), loss_scale=scale, optimizer_steps=stepped)])
        quiet(said, RULE)


def test_a_skipped_step_with_an_infinite_clip_norm_is_no_nan_grad():
    # clip_grad_norm_ after unscale_ returns inf on a step the scaler then skips: that step
    # has grad_norm_unclipped inf and no grad_norm (the optimizer's pre-hook never ran).
    events = scaler_steps(300, lambda n, scale: scale > 2.0**12, growth_interval=10)
    for event in events:
        if event["optimizer_steps"]:
            event["grad_norm"] = event["grad_norm_unclipped"] = 0.5
        else:
            event["grad_norm_unclipped"] = float("inf")
    assert alerts(run([start(), *events])) == []


def test_the_rule_is_registered_next_to_optimizer_not_stepping():
    assert RULES[RULE].defaults == {
        "window": 100,
        "skips": 10,
        "fall": 64.0,
        "min_scale": 1.0,
        "confirm": 3,
    }
    assert RULE in RULES["optimizer_not_stepping"].suppresses
    assert "optimizer_not_stepping" in RULES[RULE].suppresses


# -- real float16 loops on the CPU --------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: one intra-op thread, not two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def amp_training(
    tmp_path: Path,
    model: nn.Module,
    scaler: torch.amp.GradScaler,
    steps: int,
    *,
    reduction: str = "mean",
    lr: float = 0.05,
    clip: float | None = None,
    duplicates: int = 0,
) -> list[dict[str, Any]]:
    """A float16 autocast loop as the AMP recipe writes it: scaler.scale(loss).backward(),
    (unscale_ and clip_grad_norm_, its norm handed to the Monitor), scaler.step(), update().

    `duplicates`: that many samples of the data set are copies of their neighbour, and the
    loss has a spread term on the pairwise distances of a batch's outputs through sqrt,
    whose gradient is NaN where two of them coincide: inf/NaN gradients on the batches
    that hold a copy, whatever the scale."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = images(1024, 8)
    copies = torch.randperm(1023, generator=torch.Generator().manual_seed(0))[:duplicates]
    for k in copies.tolist():
        x[k + 1], y[k + 1] = x[k], y[k]
    apart = ~torch.eye(64, dtype=torch.bool)
    run_dir = tmp_path / "run"
    with Monitor(model, optimizer, scaler=scaler, run_dir=run_dir, quiet=True) as mon:
        for n in range(steps):
            start = (n * 64) % len(x)
            xb, yb = x[start : start + 64], y[start : start + 64]
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                outputs = model(xb)
                loss = F.cross_entropy(outputs, yb, reduction=reduction)
            if duplicates:
                diff = outputs.float()[:, None] - outputs.float()[None]
                loss = loss - 0.01 * torch.sqrt((diff**2).sum(dim=-1)[apart]).mean()
            scaler.scale(loss).backward()
            norm = None
            if clip is not None:
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            mon.step(loss, grad_norm=norm, inputs=xb, targets=yb, outputs=outputs)
    return list(read_events(run_dir / "events.jsonl"))


def skipped_steps(events: list[dict[str, Any]]) -> list[int]:
    return [e["step"] for e in events if e["type"] == "step" and e["optimizer_steps"] == 0]


def test_a_healthy_amp_loop_whose_first_steps_are_skipped_raises_nothing(tmp_path, cpu_burner):
    # A summed loss: its gradients overflow float16 at the scaler's first scale (2^16), so
    # it skips steps 1 and 2 while it finds its scale. clip_grad_norm_'s norm is handed to
    # step(): inf on those steps. Default growth_interval (2000).
    scaler = torch.amp.GradScaler("cpu")
    events = amp_training(tmp_path, mlp(64), scaler, 300, reduction="sum", lr=0.05 / 64, clip=5.0)
    skipped = skipped_steps(events)
    assert skipped[:2] == [1, 2]
    steps_ = [e for e in events if e["type"] == "step"]
    assert steps_[0]["grad_norm_unclipped"] == float("inf") and "grad_norm" not in steps_[0]
    assert steps_[0]["loss_scale"] == 32768.0
    assert [e for e in events if e["type"] == "alert"] == []


def test_a_healthy_amp_loop_with_a_short_growth_interval_raises_nothing(tmp_path, cpu_burner):
    # growth_interval=10: the scale grows every 10 good steps until float16 overflows,
    # then backs off: a skip every ~16 steps, for 300 steps.
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    events = amp_training(tmp_path, mlp(64), scaler, 300)
    assert len(skipped_steps(events)) >= 10
    assert [e for e in events if e["type"] == "alert"] == []


def test_a_healthy_amp_cnn_raises_nothing(tmp_path, cpu_burner):
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    events = amp_training(tmp_path, SmallCNN(), scaler, 160, reduction="sum", lr=0.05 / 64)
    assert skipped_steps(events)[:2] == [1, 2]
    assert len(skipped_steps(events)) >= 6
    assert [e for e in events if e["type"] == "alert"] == []


@pytest.mark.parametrize("growth_interval", [2000, 10])
def test_gradients_that_are_nan_on_some_batches_collapse_the_scale_and_are_named(
    tmp_path, cpu_burner, growth_interval
):
    # Four duplicated samples: 3 batches in 16 get NaN gradients. Without a scaler that is
    # nan_grad; under AMP the scaler skips those steps and halves its scale every time.
    scaler = torch.amp.GradScaler("cpu", growth_interval=growth_interval)
    events = amp_training(tmp_path, mlp(64), scaler, 150, duplicates=4)
    said = [e for e in events if e["type"] == "alert"]
    assert [a["rule"] for a in said] == [RULE], said
    alert = said[0]
    assert alert["step"] <= 60
    assert alert["evidence"]["skipped"] >= 10
    assert alert["evidence"]["scale_from"] / alert["evidence"]["scale_to"] >= 64
    assert "bf16" in alert["suggestion"]
