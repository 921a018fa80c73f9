"""LR changes keep the schedule's shape: after scaling by f the curve is f x the original."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.optim import lr_scheduler

from tuimon.monitor.lr_control import (
    LrLimits,
    LrRefused,
    current_lrs,
    scale_lr,
    set_lr,
    show_lr,
)


def make(schedule, lrs=(0.1,), optimizer=torch.optim.SGD, **opt_kwargs):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    opt = optimizer(groups, **opt_kwargs)
    return opt, schedule(opt)


def curve(opt, sched, steps, at=None, factor=None, plateau_metric=None):
    """LRs over `steps` scheduler steps; scale by `factor` after step `at`."""
    lrs = []
    for step in range(steps):
        lrs.append(current_lrs(opt))
        opt.step()
        if plateau_metric is not None:
            sched.step(plateau_metric(step))
        else:
            sched.step()
        if step == at:
            scale_lr(opt, sched, factor)
    return lrs


SCHEDULES = {
    "cosine": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=50),
    "cosine_eta_min": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=50, eta_min=1e-3),
    "step": lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "multistep": lambda o: lr_scheduler.MultiStepLR(o, milestones=[10, 30], gamma=0.1),
    "exponential": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.95),
    "lambda": lambda o: lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
    "onecycle": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=60),
    "warmup_cosine": lambda o: lr_scheduler.SequentialLR(
        o,
        [
            lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=10),
            lr_scheduler.CosineAnnealingLR(o, T_max=40),
        ],
        milestones=[10],
    ),
    "polynomial": lambda o: lr_scheduler.PolynomialLR(o, total_iters=50, power=2.0),
    "warm_restarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=15, eta_min=1e-4),
    "cyclic": lambda o: lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=8),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("at", [3, 12, 25])
def test_scaled_schedule_is_f_times_the_original(name, at):
    factor = 0.5
    reference = curve(*make(SCHEDULES[name], lrs=(0.1, 0.02)), steps=55)
    scaled = curve(*make(SCHEDULES[name], lrs=(0.1, 0.02)), steps=55, at=at, factor=factor)
    for step in range(55):
        expected = reference[step] if step <= at else [factor * lr for lr in reference[step]]
        assert scaled[step] == pytest.approx(expected, rel=1e-9, abs=1e-15), (name, step)


def test_reduce_on_plateau_continues_from_the_new_value():
    metric = lambda step: 1.0  # noqa: E731 - never improves: the LR drops every 3 epochs
    opt, sched = make(lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=2))
    lrs = curve(opt, sched, steps=12, at=4, factor=0.1, plateau_metric=metric)
    after_scale = lrs[5][0]
    assert after_scale == pytest.approx(lrs[4][0] * 0.1)
    # Later reductions halve the new value.
    assert min(lr[0] for lr in lrs[5:]) == pytest.approx(after_scale * 0.5**2)


def test_set_lr_sets_group_zero_and_keeps_other_ratios():
    opt, sched = make(lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10), lrs=(0.1, 0.01))
    old, new = set_lr(opt, sched, 0.05)
    assert old == pytest.approx([0.1, 0.01]) and new == pytest.approx([0.05, 0.005])
    assert sched.base_lrs == pytest.approx([0.05, 0.005])


def test_set_lr_of_one_group_leaves_the_others():
    opt, sched = make(lambda o: lr_scheduler.StepLR(o, 5), lrs=(0.1, 0.01))
    set_lr(opt, sched, 0.03, group=1)
    assert current_lrs(opt) == pytest.approx([0.1, 0.03])
    assert sched.base_lrs == pytest.approx([0.1, 0.03])
    with pytest.raises(ValueError, match="param group 2 does not exist"):
        set_lr(opt, sched, 0.03, group=2)


def test_set_lr_from_zero_sets_it_outright():
    opt, sched = make(lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.0 if e == 0 else 1.0))
    assert current_lrs(opt) == [0.0]
    set_lr(opt, sched, 0.2)
    assert current_lrs(opt) == [0.2] and sched.base_lrs == [0.2]


def test_without_scheduler_and_with_tensor_lr():
    opt, _ = make(lambda o: None, optimizer=torch.optim.Adam)
    set_lr(opt, None, 0.003)
    assert current_lrs(opt) == pytest.approx([0.003])
    param = torch.nn.Parameter(torch.zeros(1))
    tensor_lr = torch.optim.Adam([param], lr=torch.tensor(0.01))
    lr_tensor = tensor_lr.param_groups[0]["lr"]
    scale_lr(tensor_lr, None, 2.0)
    assert tensor_lr.param_groups[0]["lr"] is lr_tensor  # still the same tensor
    assert float(lr_tensor) == pytest.approx(0.02)


# -- every LR a command leads to is checked, and a refused change writes nothing -------

BOUNDED = {
    "step": lambda o: lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "cosine_eta_min": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=50, eta_min=1e-3),
    "onecycle": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=60),
    "lambda": lambda o: lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e)),
}


def numbers(value):
    """Every float or int inside a scheduler's or optimizer's state (lambdas excluded)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist() if value.is_floating_point() else []
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in numbers(v)]
    return []


def lr_state(opt, sched):
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return {"groups": groups, "scheduler": sched.state_dict()}


def assert_all_finite(opt, sched):
    state = lr_state(opt, sched)
    assert all(math.isfinite(n) for n in numbers(state)), state


def advance(opt, sched, steps=5):
    for _ in range(steps):
        opt.step()
        sched.step()
        assert_all_finite(opt, sched)


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_set_lr_to_a_denormal_is_refused_and_changes_nothing(name):
    opt, sched = make(BOUNDED[name], lrs=(0.1, 0.02))
    advance(opt, sched, 3)
    before = copy.deepcopy(lr_state(opt, sched))
    with pytest.raises(LrRefused, match=r"resulting lr 5e-324 is below the minimum 1e-12"):
        set_lr(opt, sched, 5e-324)
    assert lr_state(opt, sched) == before
    # The old code accepted it, and the next set-lr scaled by ~1e322: eta_min = 0 * inf.
    set_lr(opt, sched, 0.05)
    advance(opt, sched)


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_scaling_up_stops_at_the_maximum(name):
    opt, sched = make(BOUNDED[name])
    advance(opt, sched, 2)
    accepted = 0
    for _ in range(3):
        before = copy.deepcopy(lr_state(opt, sched))
        try:
            scale_lr(opt, sched, 1000)
            accepted += 1
        except LrRefused as exc:
            assert "above the maximum 100" in str(exc)
            assert lr_state(opt, sched) == before
        assert_all_finite(opt, sched)
        assert max(current_lrs(opt)) <= 100
    # 0.1 (or less) x 1000 is within the limit; another x1000 is not.
    assert accepted == 1
    advance(opt, sched)
    # Every value a schedule may rise back to stays within the maximum too.
    for _ in range(50 if name == "onecycle" else 10):
        assert max(current_lrs(opt)) <= 100
        opt.step()
        sched.step()


def test_limits_can_be_widened_and_refusals_name_the_group():
    opt, sched = make(lambda o: lr_scheduler.StepLR(o, 5), lrs=(0.1, 0.001))
    wide = LrLimits(minimum=1e-300, maximum=1e6)
    set_lr(opt, sched, 1e-200, limits=wide)
    assert current_lrs(opt)[0] == pytest.approx(1e-200)
    set_lr(opt, sched, 0.1, limits=wide)
    with pytest.raises(LrRefused, match="resulting lr 1e-13 of group 1 is below the minimum"):
        set_lr(opt, sched, 1e-11)  # group 1 keeps its ratio: 1e-13
    with pytest.raises(LrRefused, match=r"param group 999 does not exist: .*groups: 0, 1"):
        scale_lr(opt, sched, 2.0, group=999)
    assert current_lrs(opt) == pytest.approx([0.1, 0.001])


def test_an_lr_outside_the_limits_may_move_back_toward_them():
    opt, sched = make(lambda o: lr_scheduler.StepLR(o, 5), lrs=(500.0,))
    scale_lr(opt, sched, 0.5)  # 500 -> 250: still above 100, but lower
    assert current_lrs(opt) == [250.0]
    with pytest.raises(LrRefused, match="above the maximum"):
        scale_lr(opt, sched, 1.5)


def test_a_zero_lr_scaled_stays_zero():
    opt, sched = make(lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.0 if e == 0 else 1.0))
    scale_lr(opt, sched, 0.5)  # 0 x 0.5: nothing below the minimum was asked for
    assert current_lrs(opt) == [0.0] and sched.base_lrs == [0.05]
    with pytest.raises(LrRefused, match="below the minimum"):
        set_lr(opt, sched, 1e-20)


def test_show_lr_writes_values_as_typed():
    assert [show_lr(v) for v in (5e-324, 1e6, 0.1, 100.0, 1e-12)] == [
        "5e-324",
        "1e+06",
        "0.1",
        "100",
        "1e-12",
    ]


def test_set_lr_late_in_a_decayed_schedule_is_not_refused_for_a_base_it_never_reaches():
    """After StepLR has decayed 1000x, set-lr scales its base 1000x: a value a StepLR never
    returns to, so only the LR itself is held to the maximum. A warm-restarting cosine does
    return to its base, so there the same command is refused."""
    from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, StepLR

    from tuimon.monitor.lr_control import LrRefused, set_lr

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.001)
    optimizer.step()
    scheduler.step()
    _old, new = set_lr(optimizer, scheduler, 0.25)
    assert new == [0.25] and scheduler.base_lrs[0] == pytest.approx(250.0)

    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    restarts = CosineAnnealingWarmRestarts(optimizer, T_0=1000, eta_min=0.0)
    for _ in range(999):
        optimizer.step()
        restarts.step()
    assert optimizer.param_groups[0]["lr"] < 1e-4
    with pytest.raises(LrRefused, match=r"base_lrs|initial_lr"):
        set_lr(optimizer, restarts, 0.25)
    assert optimizer.param_groups[0]["lr"] < 1e-4  # refused: nothing changed
