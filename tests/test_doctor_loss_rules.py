"""The loss-side and LR rules on synthetic event series: the LR warm-up, a numerical NaN
versus a blow-up, lr_too_low without a gradient, the loss/input pairing read from the
batch probe, an optimizer that never steps, and label smoothing's floor."""

from __future__ import annotations

import math
from typing import Any

from test_doctor_rules import (
    alerts,
    batch_probe,
    flat,
    one_episode,
    quiet,
    run,
    start,
    steps,
    the_alert,
    with_probes,
)

# -- lr_too_high: a warm-up in steps and in loss evidence ------------------------------------


def test_lr_too_high_says_nothing_in_the_first_ten_steps():
    # Adadelta's first steps on pytorch/examples' MNIST: ratio 0.16 and the loss up 15%.
    losses = [2.3, 2.65, 2.5, 2.4, 2.3, 2.2, 2.1, 2.0, 1.9, 1.8, *flat(1.7, 30)]
    ratio = lambda n: 0.16 if n < 10 else 0.05  # noqa: E731
    said = run([start(), *steps(losses, update_ratio=ratio)])
    quiet(said, "lr_too_high")


def test_lr_too_high_judges_a_climbing_loss_at_once_after_the_warm_up():
    losses = [2.3, 2.2, 2.0, 1.5, 0.8, 2.4, 5.6, 4.4, 29.8, 54.7, *flat(50.0, 20)]
    said = run([start(), *steps(losses, update_ratio=lambda n: 0.7 if n == 10 else 0.05)])
    assert the_alert(said, "lr_too_high")["step"] == 10
    # The same big step while the loss falls: nothing.
    falling = [2.3 * 0.9**n for n in range(30)]
    said = run([start(), *steps(falling, update_ratio=lambda n: 0.7 if n == 10 else 0.05)])
    quiet(said, "lr_too_high")


def test_lr_too_high_warmup_override():
    losses = [2.3, 2.65, *flat(2.65, 28)]
    said = run([start(), *steps(losses, update_ratio=0.16)], {"lr_too_high": {"warmup": 1}})
    assert the_alert(said, "lr_too_high")["step"] == 2  # the old behaviour, on request


# -- nan_loss: a numerical fault versus a blow-up ---------------------------------------------


def test_nan_loss_at_step_one_is_a_numerical_fault_without_an_action():
    said = run([start(), *steps([math.nan, math.nan, 2.3])])
    alert = the_alert(said, "nan_loss")
    assert alert["step"] == 1
    assert "numerical fault" in alert["message"] and "first step" in alert["message"]
    assert "log of 0" in alert["suggestion"] and "division by zero" in alert["suggestion"]
    assert "action" not in alert


def test_nan_loss_in_one_step_with_steady_gradients_is_a_numerical_fault():
    said = run([start(), *steps([*flat(1.5, 29), math.inf], grad_norm=lambda n: 1.0 + n / 10)])
    alert = the_alert(said, "nan_loss")
    assert "in one step from 1.5 at step 29" in alert["message"]
    assert "numerical fault" in alert["message"]
    assert "action" not in alert


def test_nan_loss_after_gradients_grew_tenfold_is_a_blow_up():
    # 10x growth is still "steady"; just past it is a blow-up with restore + LR x0.1.
    for peak, numerical in ((10.0, True), (10.5, False)):
        grads = lambda n, peak=peak: peak if n == 29 else 1.0  # noqa: E731
        said = run([start(), *steps([*flat(1.5, 29), math.nan], grad_norm=grads)])
        alert = the_alert(said, "nan_loss")
        assert ("numerical fault" in alert["message"]) is numerical
        assert ("action" in alert) is not numerical


def test_nan_loss_after_a_recover_is_not_called_numerical():
    # The rule starts afresh after a restore; the run had finite losses, so a NaN then is
    # not "at the very first step".
    recover = {"type": "control", "step": 31, "command": "recover", "lr_factor": 0.1}
    events = [start(), *steps([*flat(1.5, 30), math.nan])]
    events += [recover, *steps([math.nan], first=32)]
    found = alerts(run(events), "nan_loss")
    assert len(found) == 2
    assert "numerical fault" not in found[1]["message"] and "action" in found[1]


# -- lr_too_low: not without a gradient ------------------------------------------------------


def test_lr_too_low_quiet_when_the_gradient_fell_to_a_sliver():
    ratios = lambda n: 1e-3 if n <= 10 else 1e-6  # noqa: E731
    grads = lambda n: 1.0 if n <= 10 else 0.009  # noqa: E731
    series = steps(flat(2.0, 40), update_ratio=ratios, grad_norm=grads)
    quiet(run([start(), *series]), "lr_too_low")
    grads = lambda n: 1.0 if n <= 10 else 0.011  # noqa: E731
    series = steps(flat(2.0, 40), update_ratio=ratios, grad_norm=grads)
    assert the_alert(run([start(), *series]), "lr_too_low")["step"] == 13


def test_lr_too_low_waits_for_a_warm_up_schedule_to_finish_rising():
    # LinearLR from 1e-4 of the LR over 60 steps: the first updates are tiny on purpose.
    lrs = lambda n: 0.1 * min(1.0, n / 60)  # noqa: E731
    ratios = lambda n: 1e-6 * min(1.0, n / 60) if n < 60 else 1e-6  # noqa: E731
    said = run([start(), *steps(flat(2.0, 80), lr=lrs, update_ratio=ratios)])
    assert the_alert(said, "lr_too_low")["step"] == 63  # three looks (61-63) once the LR holds
    ratios_ok = lambda n: 1e-6 * min(1.0, n / 60) if n < 60 else 1e-3  # noqa: E731
    quiet(run([start(), *steps(flat(2.0, 80), lr=lrs, update_ratio=ratios_ok)]), "lr_too_low")


def test_lr_too_low_quiet_when_most_layers_do_not_move():
    still = {"fc1": 0.0, "fc2": 0.0, "fc3": 3e-6}
    moving = {"fc1": 1e-6, "fc2": 2e-6, "fc3": 3e-6}
    series = steps(flat(2.0, 40), update_ratio=1e-6, layer_update_ratios=still)
    quiet(run([start(), *series]), "lr_too_low")
    series = steps(flat(2.0, 40), update_ratio=1e-6, layer_update_ratios=moving)
    assert the_alert(run([start(), *series]), "lr_too_low")["step"] == 3


# -- the loss and what it is given --------------------------------------------------------------


def loss_probe(
    n: int,
    value: float,
    candidates: dict[str, float],
    low: float = -4.0,
    high: float = 5.0,
    logsumexp: float = 2.5,
) -> dict[str, Any]:
    event = batch_probe(n)
    matches = [k for k, v in candidates.items() if abs(v - value) <= 1e-4 * abs(value)]
    event["loss"] = {
        "value": value,
        "candidates": candidates,
        "matches": matches,
        "outputs_min": low,
        "outputs_max": high,
        "logsumexp_error": logsumexp,
    }
    return event


def test_loss_input_mismatch_fires_on_nll_of_raw_logits():
    probe = lambda n: loss_probe(n, -3.0, {"cross_entropy": 2.4, "nll_loss": -3.0})  # noqa: E731
    said = run([start(), *with_probes(flat(-3.0, 10), probe)])
    alert = the_alert(said, "loss_input_mismatch")
    assert alert["step"] == 2 and alert["severity"] == "error"
    assert "NLLLoss of the model's raw logits" in alert["message"]
    assert "negative (-3)" in alert["message"]
    assert "log_softmax" in alert["suggestion"]


def test_loss_input_mismatch_quiet_on_log_softmax_nll_and_other_losses():
    # log_softmax outputs: NLL and CE agree, and each row's logsumexp is 0.
    log_probs = lambda n: loss_probe(  # noqa: E731
        n, 2.0, {"cross_entropy": 2.0, "nll_loss": 2.0}, -5.0, -0.1, 1e-7
    )
    quiet(run([start(), *with_probes(flat(2.0, 10), log_probs)]), "loss_input_mismatch")
    # CE on logits, or a loss that is neither (label smoothing, a WGAN critic).
    for value in (2.4, 1.9):
        probe = lambda n, v=value: loss_probe(n, v, {"cross_entropy": 2.4, "nll_loss": -3.0})  # noqa: E731
        quiet(run([start(), *with_probes(flat(value, 10), probe)]), "loss_input_mismatch")


def test_loss_input_mismatch_clears_when_log_softmax_comes_back():
    wrong = {"cross_entropy": 2.4, "nll_loss": -3.0}
    probe = lambda n: (  # noqa: E731
        loss_probe(n, -3.0, wrong)
        if n < 5
        else loss_probe(n, 2.0, {"cross_entropy": 2.0, "nll_loss": 2.0}, -5.0, -0.1, 1e-7)
    )
    alert, end = one_episode(
        run([start(), *with_probes(flat(2.0, 20), probe)]), "loss_input_mismatch"
    )
    assert (alert["step"], end["step"]) == (2, 7)


BINARY = ("binary_cross_entropy_with_logits", "binary_cross_entropy")


def binary_probe(n: int, value: float, logits: float, probs: float, low: float, high: float):
    event = loss_probe(n, value, dict(zip(BINARY, (logits, probs), strict=True)), low, high)
    event["outputs"] = None  # a (B, 1) output has no class rows
    return event


def test_softmax_before_loss_names_sigmoid_before_bce_with_logits():
    probe = lambda n: binary_probe(n, 0.69, 0.69, 0.5, 0.2, 0.9)  # noqa: E731
    said = run([start(num_classes=None), *with_probes(flat(0.69, 10), probe)])
    alert = the_alert(said, "softmax_before_loss")
    assert alert["step"] == 2
    assert "sigmoid" in alert["message"] and "BCEWithLogitsLoss" in alert["message"]


def test_softmax_before_loss_quiet_on_sigmoid_bce_and_on_logits():
    sigmoid_bce = lambda n: binary_probe(n, 0.5, 0.69, 0.5, 0.2, 0.9)  # noqa: E731
    logits = lambda n: binary_probe(n, 0.6, 0.6, 0.9, -2.0, 3.0)  # noqa: E731
    for probe in (sigmoid_bce, logits):
        said = run([start(num_classes=None), *with_probes(flat(0.6, 10), probe)])
        quiet(said, "softmax_before_loss")


# -- optimizer_not_stepping -------------------------------------------------------------------


def test_optimizer_not_stepping_fires_after_twenty_skipped_steps():
    said = run([start(), *steps(flat(2.3, 40), optimizer_steps=0)])
    alert = the_alert(said, "optimizer_not_stepping")
    assert alert["step"] == 20 and alert["severity"] == "error"
    assert "since step 1" in alert["message"]
    assert "GradScaler" in alert["suggestion"]
    said = run([start(), *steps(flat(2.3, 19), optimizer_steps=0)])
    quiet(said, "optimizer_not_stepping")


def test_optimizer_not_stepping_quiet_on_occasional_skips_and_old_logs():
    skips = lambda n: 0 if n % 10 == 0 or n < 5 else 1  # noqa: E731
    quiet(run([start(), *steps(flat(2.3, 200), optimizer_steps=skips)]), "optimizer_not_stepping")
    quiet(run([start(), *steps(flat(2.3, 200))]), "optimizer_not_stepping")


def test_optimizer_not_stepping_clears_on_a_real_step_and_suppresses_chance_level():
    stepping = lambda n: 0 if n < 300 else 1  # noqa: E731
    said = run([start(), *steps(flat(math.log(10), 320), optimizer_steps=stepping)])
    alert, end = one_episode(said, "optimizer_not_stepping")
    assert (alert["step"], end["step"]) == (20, 300)
    # It was the cause: chance_level waits until the optimizer steps again.
    assert all(a["step"] >= 300 for a in alerts(said, "chance_level"))
    said = run(
        [start(), *steps(flat(math.log(10), 320), optimizer_steps=stepping)],
        {"optimizer_not_stepping": {"enabled": False}},
    )
    assert alerts(said, "chance_level")[0]["step"] < 300


# -- label smoothing's floor ------------------------------------------------------------------


def smoothed_start(epsilon: float, where: str) -> dict[str, Any]:
    event = start()
    if where == "start":
        event["loss"] = {"name": "CrossEntropyLoss", "label_smoothing": epsilon}
    else:
        event["config"]["loss"]["label_smoothing"] = epsilon
    return event


def floor(epsilon: float, classes: int = 10) -> float:
    right, wrong = 1 - epsilon + epsilon / classes, epsilon / classes
    return -right * math.log(right) - (classes - 1) * wrong * math.log(wrong)


def test_a_loss_at_the_label_smoothing_floor_is_converged_not_stalled():
    settled = [*[2.3 - i * 0.006 for i in range(100)], *flat(floor(0.5) + 0.03, 400)]
    for where in ("start", "config"):
        said = run([smoothed_start(0.5, where), *steps(settled)])
        assert [a["rule"] for a in said if a["type"] == "alert"] == []
    # Unknown smoothing: the same curve reads as a stall far above 0.
    said = run([start(), *steps(settled)])
    assert alerts(said, "stall")


def test_label_smoothing_floor_value_and_a_real_stall_above_it():
    from tuimon.doctor.context import RunContext

    ctx = RunContext()
    ctx.update(smoothed_start(0.5, "start"))
    assert math.isclose(ctx.loss_floor, 1.6770, abs_tol=1e-3)
    # Far above the floor (2.2 of a 1.68..2.30 range) it still is a stall.
    said = run([smoothed_start(0.5, "start"), *steps(flat(2.2, 500))])
    assert alerts(said, "stall")
