"""The doctor's loss-side and LR rules on real small training loops, written the way
tutorials and pytorch/examples write them: each fault is named for what it is, and the
healthy version of each loop stays silent while the machine is busy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR

from tuimon import Monitor
from tuimon.doctor.rule_ids import RULE_IDS
from tuimon.run.log_reader import read_events
from tuimon.training.synthetic import SyntheticImages

# The rules this file speaks for: healthy loops must get none of them.
LOSS_AND_LR_RULES = (
    "nan_loss",
    "divergence",
    "oscillation",
    "stall",
    "chance_level",
    "lr_too_high",
    "lr_too_low",
    "softmax_before_loss",
    "loss_input_mismatch",
    "optimizer_not_stepping",
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: one intra-op thread, not two fighting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


Step = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def images(
    count: int, size: int, classes: int = 10, seed: int = 0, noise: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable MNIST-like set (1 channel), normalized as torchvision's MNIST recipe."""
    data = SyntheticImages(count, 1, size, classes, noise=noise, seed=seed)
    x = data.images_at(torch.arange(count)).float() / 255
    x = (x - x.mean()) / x.std()
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return x[order], data.labels[order]


def train(
    tmp_path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: Step,
    data: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    batch: int = 64,
    scheduler: Any = None,
    **monitor: Any,
) -> list[dict[str, Any]]:
    """`steps` optimizer steps over `data` (cycled), watched by a Monitor; its events.
    `step(x, y)` runs forward, loss and backward and returns (loss, outputs)."""
    x, y = data
    run_dir = tmp_path / "run"
    with Monitor(model, optimizer, scheduler, run_dir=run_dir, quiet=True, **monitor) as mon:
        for n in range(steps):
            start = (n * batch) % len(x)
            xb, yb = x[start : start + batch], y[start : start + batch]
            optimizer.zero_grad()
            loss, outputs = step(xb, yb)
            optimizer.step()
            mon.step(loss, inputs=xb, targets=yb, outputs=outputs)
    return list(read_events(run_dir / "events.jsonl"))


def alerts(events: list[dict[str, Any]], rules: tuple[str, ...] = LOSS_AND_LR_RULES) -> list:
    return [
        (e["rule"], e["step"], e["message"])
        for e in events
        if e["type"] == "alert" and e["rule"] in rules
    ]


def named(events: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == "alert" and e["rule"] == rule]
    assert found, f"{rule} never fired: {alerts(events, RULE_IDS)}"
    return found[0]


def classify(model: nn.Module, loss_fn: Callable[..., torch.Tensor] = F.cross_entropy) -> Step:
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(x)
        loss = loss_fn(outputs, y)
        loss.backward()
        return loss, outputs

    return step


# -- models as the examples write them --------------------------------------------------------


class MnistNet(nn.Module):
    """pytorch/examples mnist/main.py's Net, narrower convolutions (fc1 keeps its 9216
    inputs: its small initial weights are what Adadelta's first steps are large against)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def mlp(inputs: int, hidden: int = 64, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


# -- LR rules: a warm-up ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_pytorch_examples_mnist_gets_no_lr_alarm(seed, tmp_path, cpu_burner):
    # Adadelta at LR 1 takes steps of ~15% of fc1's small initial weights in its first
    # steps while the loss briefly rises: lr_too_high used to fire at step 2, every seed.
    torch.manual_seed(seed)
    model = MnistNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    data = images(64 * 12, 28, seed=seed)
    events = train(
        tmp_path, model, optimizer, classify(model, F.nll_loss), data, 12, scheduler=scheduler
    )
    early = [e["update_ratio"] for e in events if e["type"] == "step" and e["step"] <= 2]
    assert max(early) > 0.1  # the big first steps are there
    assert alerts(events) == []


def test_pytorch_examples_mnist_is_silent_on_every_rule(tmp_path, cpu_burner):
    # Half of fc1's units die in the first steps (their gradient rows are exactly zero)
    # while the loss falls fast: a healthy run, which dead_relu used to flag at step 20.
    torch.manual_seed(0)
    model = MnistNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    data = images(64 * 12, 28)
    events = train(
        tmp_path,
        model,
        optimizer,
        classify(model, F.nll_loss),
        data,
        60,
        scheduler=scheduler,
        probes={"activations_every": 10},
    )
    dead = [e["layers"]["fc1"] for e in events if e.get("probe") == "dead_units"]
    assert max(dead) > 0.5
    assert alerts(events, RULE_IDS) == []


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.Adam(params, lr=1e-3),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    ],
    ids=["adam", "sgd_momentum"],
)
def test_small_cnn_with_usual_optimizers_gets_no_alarm(make_optimizer, tmp_path, cpu_burner):
    torch.manual_seed(0)
    model = SmallCNN()
    events = train(
        tmp_path, model, make_optimizer(model.parameters()), classify(model), images(1024, 8), 150
    )
    assert alerts(events) == []


# -- nan_loss: a numerical fault is not an LR blow-up -------------------------------------------


class BatchStandardized(nn.Module):
    """Standardizes each pixel by the batch's statistics inside forward; a pixel that is
    the same in every image (MNIST's blank border) has std 0, and 0 / 0 is NaN."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - x.mean(dim=0)) / x.std(dim=0))


def positives_normalized_bce(model: nn.Module) -> Step:
    """A detection-style loss: BCE summed over the positives, divided by their count. A
    batch without any positive divides 0 by 0."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(x).squeeze(1)
        target = y.float()
        each = F.binary_cross_entropy_with_logits(outputs, target, reduction="none")
        loss = (each * target).sum() / target.sum()
        loss.backward()
        return loss, outputs

    return step


def test_division_by_zero_at_the_first_step_is_a_numerical_fault(tmp_path):
    torch.manual_seed(0)
    model = BatchStandardized(mlp(64))
    x, y = images(512, 8)
    x[:, :, 0, :] = 0.0  # a blank top row, as in MNIST
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    events = train(tmp_path, model, optimizer, classify(model), (x, y), 30)
    alert = named(events, "nan_loss")
    assert alert["step"] == 1
    assert "numerical fault" in alert["message"] and "first step" in alert["message"]
    assert "division by zero" in alert["suggestion"]
    assert "action" not in alert  # restoring weights and lowering the LR cannot help


def test_division_by_a_zero_count_mid_run_is_a_numerical_fault(tmp_path):
    torch.manual_seed(0)
    model = mlp(64, classes=1)
    x, y = images(64 * 40, 8, classes=2)
    y = y.clone()
    y[64 * 29 : 64 * 30] = 0  # the 30th batch holds no positive
    events = train(
        tmp_path,
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        positives_normalized_bce(model),
        (x, y),
        40,
    )
    alert = named(events, "nan_loss")
    assert alert["step"] == 30
    assert "in one step" in alert["message"] and "numerical fault" in alert["message"]
    assert "division by zero" in alert["suggestion"]
    assert "action" not in alert


def test_an_lr_blow_up_still_offers_recovery(tmp_path):
    # SGD at LR 50 (configs/faults/nan_loss.yaml in a script): gradients grow first.
    torch.manual_seed(0)
    model = mlp(64)
    events = train(
        tmp_path,
        model,
        torch.optim.SGD(model.parameters(), lr=50.0, momentum=0.9),
        classify(model),
        images(1024, 8),
        30,
    )
    alert = named(events, "nan_loss")
    assert "numerical fault" not in alert["message"]
    action = alert["action"]  # restore + LR x0.1, or LR x0.1 alone without snapshots
    assert action.get("lr_factor", action.get("factor")) == 0.1


# -- lr_too_low: not when there is no gradient to follow ----------------------------------------


def test_a_dead_network_is_not_told_to_raise_the_lr(tmp_path):
    # Every ReLU dead from the start (biases at -10): only the last layer's bias learns,
    # the update ratio is tiny, but a bigger LR would not help.
    torch.manual_seed(0)
    model = mlp(64)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear) and layer.out_features != 10:
                layer.bias.fill_(-10.0)
    events = train(
        tmp_path,
        model,
        torch.optim.SGD(model.parameters(), lr=0.005),
        classify(model),
        images(1024, 8),
        60,
        probes={"update_ratio_every": 10},
    )
    ratios = [e["update_ratio"] for e in events if e["type"] == "step" and "update_ratio" in e]
    assert max(ratios) < 1e-5  # what lr_too_low used to read as "LR too low, try x100"
    assert alerts(events, ("lr_too_low",)) == []


def test_a_really_low_lr_is_still_named(tmp_path, cpu_burner):
    torch.manual_seed(0)
    model = mlp(64)
    events = train(
        tmp_path,
        model,
        torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9),
        classify(model),
        images(1024, 8),
        30,
    )
    assert named(events, "lr_too_low")["step"] <= 20


# -- the loss and what it is given --------------------------------------------------------------


def binary(model: nn.Module, loss_fn: Callable[..., torch.Tensor], sigmoid: bool) -> Step:
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(x).squeeze(1)
        if sigmoid:
            outputs = torch.sigmoid(outputs)
        loss = loss_fn(outputs, y.float())
        loss.backward()
        return loss, outputs

    return step


def logits_to_nll(model: nn.Module) -> Step:
    return classify(model, F.nll_loss)


def test_nll_loss_on_raw_logits_is_named(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    events = train(tmp_path, model, optimizer, logits_to_nll(model), images(1024, 8), 40)
    alert = named(events, "loss_input_mismatch")
    assert alert["step"] <= 3 and alert["severity"] == "error"
    assert "NLLLoss expects log-probabilities" in alert["message"]
    assert "log_softmax" in alert["suggestion"]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert min(losses[:20]) < -10  # what the user sees: a loss below zero, falling fast


def test_bce_with_logits_on_sigmoid_outputs_is_named(tmp_path):
    torch.manual_seed(0)
    model = mlp(64, classes=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    step = binary(model, F.binary_cross_entropy_with_logits, sigmoid=True)
    events = train(tmp_path, model, optimizer, step, images(1024, 8, classes=2), 20)
    alert = named(events, "softmax_before_loss")
    assert alert["step"] <= 3
    assert "sigmoid" in alert["message"] and "BCEWithLogitsLoss" in alert["message"]


def label_smoothed(model: nn.Module) -> Step:
    return classify(model, nn.CrossEntropyLoss(label_smoothing=0.1))


def wgan_critic(model: nn.Module) -> Step:
    """A WGAN critic's loss: no targets, legitimately negative and unbounded."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(x)
        loss = outputs[y == 1].mean() - outputs[y == 0].mean()
        loss.backward()
        for p in model.parameters():
            p.grad.clamp_(-0.01, 0.01)
        return loss, outputs

    return step


def regression(model: nn.Module) -> Step:
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = model(x)
        loss = F.mse_loss(outputs, x.flatten(1).mean(dim=1, keepdim=True))
        loss.backward()
        return loss, outputs

    return step


class WithLogSoftmax(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.body(x), dim=1)


HEALTHY_PAIRINGS = {
    "ce_on_logits": (lambda: SmallCNN(), classify, 10),
    "log_softmax_nll": (lambda: WithLogSoftmax(SmallCNN()), logits_to_nll, 10),
    "sigmoid_bce": (
        lambda: mlp(64, classes=1),
        lambda m: binary(m, F.binary_cross_entropy, True),
        2,
    ),
    "bce_with_logits": (
        lambda: mlp(64, classes=1),
        lambda m: binary(m, F.binary_cross_entropy_with_logits, False),
        2,
    ),
    "mse_regression": (lambda: mlp(64, classes=1), regression, 2),
    "label_smoothing": (lambda: SmallCNN(), label_smoothed, 10),
    "wgan_critic": (lambda: mlp(64, classes=1), wgan_critic, 2),
}


@pytest.mark.parametrize("pairing", sorted(HEALTHY_PAIRINGS))
def test_right_pairings_get_no_loss_alarm(pairing, tmp_path, cpu_burner):
    make_model, make_step, classes = HEALTHY_PAIRINGS[pairing]
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    data = images(1024, 8, classes=classes)
    events = train(tmp_path, model, optimizer, make_step(model), data, 60)
    probes = [e for e in events if e["type"] == "probe" and e["probe"] == "batch"]
    assert probes  # the batch probe looked
    assert alerts(events, ("loss_input_mismatch", "softmax_before_loss", "nan_loss")) == []


# -- optimizer_not_stepping: a GradScaler that skips every step ---------------------------------


def scaled_training(
    tmp_path: Path, model: nn.Module, scaler: torch.amp.GradScaler, penalty: bool, steps: int
) -> list[dict[str, Any]]:
    """An AMP loop (float16 autocast): scaler.scale(loss).backward(), scaler.step(), update().
    With `penalty`, a spread term on pairwise embedding distances through sqrt, whose
    diagonal (a sample's distance to itself) is sqrt(0): NaN gradients on every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = images(1024, 8)
    with Monitor(model, optimizer, run_dir=tmp_path / "run", quiet=True) as mon:
        for n in range(steps):
            start = (n * 64) % len(x)
            xb, yb = x[start : start + 64], y[start : start + 64]
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                outputs = model(xb)
                loss = F.cross_entropy(outputs, yb)
            if penalty:
                diff = outputs.float()[:, None] - outputs.float()[None]
                loss = loss - 0.01 * torch.sqrt((diff**2).sum(dim=-1)).mean()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            mon.step(loss, inputs=xb, targets=yb, outputs=outputs)
    return list(read_events(tmp_path / "run" / "events.jsonl"))


def test_a_scaler_that_skips_every_step_is_named(tmp_path):
    torch.manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    events = scaled_training(tmp_path, mlp(64), scaler, True, 40)
    assert {e["optimizer_steps"] for e in events if e["type"] == "step"} == {0}
    alert = named(events, "optimizer_not_stepping")
    assert alert["step"] == 20 and alert["severity"] == "error"
    assert "GradScaler" in alert["suggestion"] and "bf16" in alert["suggestion"]


def test_a_scaler_that_skips_now_and_then_is_silent(tmp_path, cpu_burner):
    # The scale doubles every 10 good steps until float16 overflows, then backs off:
    # a skipped step now and then is normal GradScaler life.
    torch.manual_seed(0)
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    events = scaled_training(tmp_path, mlp(64), scaler, False, 120)
    skipped = [e["step"] for e in events if e["type"] == "step" and e["optimizer_steps"] == 0]
    assert len(skipped) >= 3  # it did skip
    assert alerts(events) == []


# -- label smoothing: its floor is convergence, not a stall -------------------------------------


def test_a_loss_at_the_label_smoothing_floor_is_converged(tmp_path, cpu_burner):
    # Easy data, CrossEntropyLoss(label_smoothing=0.5): the loss settles near the entropy
    # of the smoothed target (1.68 for 10 classes), 73% of the way up to ln(10). Without
    # the floor, stall read "0.7% better in 200 steps, far from converged" at step 475.
    torch.manual_seed(0)
    model = SmallCNN()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = images(1024, 8, noise=0.1)
    events = train(
        tmp_path, model, optimizer, classify(model, criterion), data, 500, loss_fn=criterion
    )
    losses = [e["loss"] for e in events if e["type"] == "step"]
    assert 1.68 < sum(losses[-50:]) / 50 < 1.75  # at the floor
    assert alerts(events, RULE_IDS) == []


def test_the_loss_candidates_never_raise_on_what_a_model_outputs():
    # BCE's library function rejects values outside [0, 1] (a device-side assert on CUDA);
    # a blown-up model outputs NaN and inf. The probe must measure, not break the step.
    from tuimon.monitor.batch_probe import BatchProbe

    probe = BatchProbe(1)
    x = torch.zeros(8, 4)
    for outputs, targets in (
        (torch.tensor([math.nan, math.inf, -3.0, 7.0] * 2).reshape(8, 1), torch.ones(8)),
        (torch.full((8, 3), math.nan), torch.zeros(8, dtype=torch.long)),
    ):
        loss = outputs.sum()
        row, layout = probe.measure(x, targets, outputs, loss)
        assert row is not None and "loss" in layout
        event = BatchProbe.decode(row.tolist(), layout)
        assert event["loss"]["matches"] == []
