"""The doctor's gradient, activation and data rules on real small training loops, written
the way tutorials write them (F.relu, log_softmax + nll_loss, DataLoader, validation
between epochs, a GAN with two optimizers): each fault is named, and each healthy version
stays silent while the machine is busy (the `cpu_burner` fixture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.run.event_log import read_events

# -- shared pieces --------------------------------------------------------------------------


def task(samples: int = 2048, features: int = 64, classes: int = 4, seed: int = 0):
    """A learnable classification task: labels from a random linear map of the inputs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=generator)
    w = torch.randn(features, classes, generator=generator)
    return x, (x @ w).argmax(dim=1)


class FunctionalNet(nn.Module):
    """An MLP with F.relu, as in most tutorials: no ReLU module for a hook to see."""

    def __init__(self, features: int = 64, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.log_softmax(self.fc3(x), dim=1)


def events(run_dir: Path) -> list[dict[str, Any]]:
    return list(read_events(run_dir / "events.jsonl"))


def alerts(evs: list[dict[str, Any]], rule: str | None = None) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == "alert" and (rule is None or e["rule"] == rule)]


def said(evs: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(a["rule"], a["step"], a["message"]) for a in alerts(evs)]


def probes(evs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["type"] == "probe" and e["probe"] == name]


def options(**probe_settings: int) -> RunOptions:
    settings = RunOptions().settings.model_copy(deep=True)
    for key, value in probe_settings.items():
        setattr(settings.probes, key, value)
    return RunOptions(settings=settings)


def train_classifier(
    model: nn.Module,
    run_dir: Path,
    steps: int,
    *,
    lr: float = 0.05,
    batch_size: int = 32,
    burst_at: int | None = None,
    run_options: RunOptions | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """SGD with momentum on the task; `burst_at`: one step at LR ×1000 (a bad warm-up)."""
    torch.manual_seed(seed)
    x, y = task(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    mon = Monitor.configured(
        model, opt, run_dir=run_dir, quiet=True, options=run_options or options()
    )
    with mon:
        for step in range(1, steps + 1):
            for group in opt.param_groups:
                group["lr"] = lr * 1000 if step == burst_at else lr
            index = torch.randint(0, len(x), (batch_size,))
            inputs, targets = x[index], y[index]
            opt.zero_grad()
            outputs = model(inputs)
            loss = F.nll_loss(outputs, targets)
            loss.backward()
            opt.step()
            mon.step(loss, inputs=inputs, targets=targets, outputs=outputs)
    return events(run_dir)


# -- dead_relu: dead units behind F.relu ----------------------------------------------------


def test_dead_units_behind_functional_relu_are_named(tmp_path):
    torch.manual_seed(0)
    model = FunctionalNet()
    nn.init.constant_(model.fc1.bias, -5.0)  # every unit starts (and stays) below zero
    nn.init.constant_(model.fc2.bias, -5.0)
    evs = train_classifier(model, tmp_path / "run", 60)
    [alert] = alerts(evs, "dead_relu")
    assert alert["severity"] == "warning"
    assert alert["step"] <= 20
    assert "100% of the units of fc2 are dead" in alert["message"]
    assert "gradient is exactly zero" in alert["message"]
    # The logits layer is never judged: it feeds no activation.
    assert all("fc3" not in probe["layers"] for probe in probes(evs, "dead_units"))


def test_a_layer_after_a_dead_one_is_not_called_dead(tmp_path):
    torch.manual_seed(0)
    model = FunctionalNet()
    nn.init.constant_(model.fc1.bias, -5.0)  # only the first layer is dead
    nn.init.constant_(model.fc2.bias, 0.1)
    evs = train_classifier(model, tmp_path / "run", 30)
    last = probes(evs, "dead_units")[-1]["layers"]
    # fc2's weight gets no gradient (its input is all zero) but its bias does: its units
    # are alive, and the doctor names fc1.
    assert last["fc1"] == 1.0 and last["fc2"] == 0.0
    [alert] = alerts(evs, "dead_relu")
    assert "of fc1 are dead" in alert["message"]


def test_frozen_layers_and_embeddings_are_not_judged(tmp_path):
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5000, 16)  # most rows unused by a batch: zero gradient
            self.frozen = nn.Linear(16, 16)
            self.frozen.requires_grad_(False)
            self.hidden = nn.Linear(16, 32)
            self.out = nn.Linear(32, 4)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = self.embed(tokens).mean(dim=1)
            h = F.relu(self.hidden(torch.tanh(self.frozen(h))))
            return F.log_softmax(self.out(h), dim=1)

    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    tokens = torch.randint(0, 5000, (512, 6))
    labels = tokens[:, 0] % 4
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        for _ in range(25):
            index = torch.randint(0, 512, (16,))
            opt.zero_grad()
            outputs = model(tokens[index])
            loss = F.nll_loss(outputs, labels[index])
            loss.backward()
            opt.step()
            mon.step(loss, inputs=tokens[index], targets=labels[index], outputs=outputs)
    found = probes(events(tmp_path / "run"), "dead_units")
    assert found and all(set(p["layers"]) == {"hidden"} for p in found)


def test_healthy_functional_relu_nets_stay_silent_under_load(tmp_path, cpu_burner):
    evs = train_classifier(
        FunctionalNet(), tmp_path / "run", 150, run_options=options(activations_every=5)
    )
    assert probes(evs, "dead_units"), "the probe must have looked"
    assert said(evs) == []
    # Batch size 1 (plus dropout): a healthy unit is silent for many single samples, a dead
    # one for all of them; only units silent on several probes in a row count.

    class Dropped(FunctionalNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
            x = F.dropout(F.relu(self.fc2(x)), 0.5, self.training)
            return F.log_softmax(self.fc3(x), dim=1)

    evs = train_classifier(
        Dropped(),
        tmp_path / "batch1",
        150,
        lr=0.01,
        batch_size=1,
        run_options=options(activations_every=2),
    )
    assert len(probes(evs, "dead_units")) > 50
    assert alerts(evs, "dead_relu") == []


def test_a_network_killed_by_an_lr_burst_is_dead_relu(tmp_path):
    # Trains well for 100 steps, then one step at LR x1000 kills every unit: the loss sits at
    # chance level after that, and no LR fix brings it back.
    evs = train_classifier(
        FunctionalNet(),
        tmp_path / "run",
        220,
        burst_at=100,
        run_options=options(activations_every=10),
    )
    blow_ups = [a for a in alerts(evs) if a["rule"] in ("divergence", "exploding_gradients")]
    assert blow_ups, said(evs)
    [alert] = alerts(evs, "dead_relu")
    assert alert["step"] > 100
    assert alert["severity"] == "warning"  # the reason it does not recover, not an aside
    when = min(a["step"] for a in blow_ups)
    assert f"since the loss blew up at step {when}" in alert["message"]
    assert alert["evidence"]["dead_share"] > 0.9


# -- exploding_gradients across layers ------------------------------------------------------


class DeepTanh(nn.Module):
    """A deep tanh MLP; `gain` scales every layer's initial weights (no normalization)."""

    def __init__(self, depth: int = 12, width: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64 if i == 0 else width, width) for i in range(depth))
        self.out = nn.Linear(width, 4)
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return F.log_softmax(self.out(x), dim=1)


def test_gradients_exploding_across_layers_are_named(tmp_path):
    torch.manual_seed(0)
    evs = train_classifier(
        DeepTanh(gain=10.0), tmp_path / "run", 80, lr=1e-3, run_options=options(layer_norms_every=5)
    )
    [alert] = alerts(evs, "exploding_gradients")
    assert "the first layer (layers.0) gets" in alert["message"]
    assert "the gradient of the last (out)" in alert["message"]
    assert alert["evidence"]["first_norm"] > 70 * alert["evidence"]["last_norm"]


def test_healthy_nets_have_no_exploding_gradients_across_layers(tmp_path, cpu_burner):
    images = torch.randn(256, 1, 8, 8)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long() * 3
    tokens = torch.randint(0, 20_000, (512, 6))

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.stem(x))
            x = F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
            return F.log_softmax(self.fc(x.mean(dim=(2, 3))), dim=1)

    class Bag(nn.Module):  # a huge-vocabulary embedding first: tiny per-row gradients
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20_000, 16)
            self.fc = nn.Linear(16, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return F.log_softmax(self.fc(self.embed(t).mean(dim=1)), dim=1)

    cnn = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 64, 4),
        nn.LogSoftmax(dim=1),
    )
    nets = {
        "mlp": (FunctionalNet(), *task(512)),
        "cnn_bn": (cnn, images, labels),
        "residual": (Residual(), images, labels),
        "embedding": (Bag(), tokens, tokens[:, 0] % 4),
    }
    for name, (model, x, y) in nets.items():
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        run_options = options(layer_norms_every=2)
        with Monitor.configured(
            model, opt, run_dir=tmp_path / name, quiet=True, options=run_options
        ) as mon:
            for _ in range(40):
                index = torch.randint(0, len(x), (32,))
                opt.zero_grad()
                outputs = model(x[index])
                loss = F.nll_loss(outputs, y[index])
                loss.backward()
                opt.step()
                mon.step(loss, inputs=x[index], targets=y[index], outputs=outputs)
        evs = events(tmp_path / name)
        assert sum("layer_grad_norms" in e for e in evs if e["type"] == "step") >= 15
        assert alerts(evs, "exploding_gradients") == [], (name, said(evs))
        assert alerts(evs, "vanishing_gradients") == [], (name, said(evs))
