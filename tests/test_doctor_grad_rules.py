"""The gradient, activation and data rules changed for real scripts, on synthetic series:
the data-wait floor and median, gradients exploding across layers, dead units read from
zero gradient rows (and not while the loss still falls)."""

from __future__ import annotations

import math
from typing import Any

from test_doctor_rules import flat, quiet, run, start, steps, the_alert, with_probes

# -- dataloader_bottleneck: a floor, and the typical step -------------------------------------


def test_a_wait_well_under_a_millisecond_is_never_a_bottleneck():
    # The CI flake: 0.4 ms of a 0.8 ms step "waiting for data" on a busy machine.
    said = run([start(), *steps(flat(2.0, 600), step_time=0.0008, data_time=0.0004)])
    quiet(said, "dataloader_bottleneck")
    said = run([start(), *steps(flat(2.0, 600), step_time=0.008, data_time=0.006)])
    assert the_alert(said, "dataloader_bottleneck")["step"] == 220  # 6 ms: over the floor


def test_a_pause_once_per_epoch_is_not_data_wait():
    # One second outside the loop every 50 steps (validation, saving) before the first
    # forward: 97% of the time by the mean, an outlier for the median.
    data_time = lambda n: 1.0 if n % 50 == 1 else 0.001  # noqa: E731
    step_time = lambda n: 1.01 if n % 50 == 1 else 0.02  # noqa: E731
    said = run([start(), *steps(flat(2.0, 600), step_time=step_time, data_time=data_time)])
    quiet(said, "dataloader_bottleneck")


def test_a_loader_that_makes_every_step_wait_is_found():
    said = run([start(), *steps(flat(2.0, 400), step_time=0.1, data_time=0.092)])
    alert = the_alert(said, "dataloader_bottleneck")
    assert "92% of the time" in alert["message"]


# -- exploding_gradients across layers ---------------------------------------------------------


def layer_norms(first: float, last: float = 1.0) -> dict[str, float]:
    return {"layers.0": first, "layers.1": math.sqrt(first * last), "out": last}


def test_a_first_layer_over_70x_the_last_is_exploding_gradients():
    said = run([start(), *steps(flat(2.0, 40), layer_grad_norms=layer_norms(71.0))])
    alert = the_alert(said, "exploding_gradients")
    assert alert["step"] == 3  # three looks in a row
    assert (
        "the first layer (layers.0) gets 71× the gradient of the last (out)" in (alert["message"])
    )


def test_a_first_layer_under_70x_the_last_is_fine():
    said = run([start(), *steps(flat(2.0, 40), layer_grad_norms=layer_norms(69.0))])
    quiet(said, "exploding_gradients")


# -- dead_relu from zero gradient rows ---------------------------------------------------------


def dead_units(share: float, first: int = 10) -> Any:
    def probe(n: int) -> dict[str, Any] | None:
        if n % 10 or n < first:
            return None
        layers = {"fc1": share, "fc2": 0.0}
        return {"type": "probe", "probe": "dead_units", "step": n, "layers": layers}

    return probe


def test_dead_units_on_a_stuck_net_are_dead_relu():
    said = run([start(), *with_probes(flat(2.3, 200), dead_units(0.8))])
    alert = the_alert(said, "dead_relu")
    assert alert["evidence"]["layer"] == "fc1" and alert["evidence"]["probe"] == "dead_units"
    assert "80% of the units of fc1 are dead" in alert["message"]


def test_dead_units_while_the_loss_still_falls_fast_are_fine():
    falling = [2.3 * 0.99**n for n in range(200)]  # 1% a step: learning well
    said = run([start(), *with_probes(falling, dead_units(0.8, first=30))])
    quiet(said, "dead_relu")
