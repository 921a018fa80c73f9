"""The doctor's gradient, activation and data rules on real small training loops, written
the way tutorials write them (F.relu, log_softmax + nll_loss, DataLoader, validation
between epochs, a GAN with two optimizers): each fault is named, and each healthy version
stays silent while the machine is busy (the `cpu_burner` fixture)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuimon.config.schema import RuleOverride
from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.run.log_reader import read_events

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


# -- dataloader_bottleneck -----------------------------------------------------------------


class SlowDecoding(torch.utils.data.Dataset):
    """Samples that take real blocking time to load (a file read, a slow decoder)."""

    def __init__(self, delay: float) -> None:
        self.x, self.y = task(256)
        self.delay = delay

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        return self.x[index], self.y[index]


def loader_options() -> RunOptions:
    run_options = options()
    # Short windows, so that a few seconds of training give two of them.
    override = RuleOverride(warmup=2, window=20)
    run_options.settings.rules = {"dataloader_bottleneck": override}
    return run_options


def train_epochs(run_dir: Path, delay: float, epochs: int, pause: float) -> list[dict[str, Any]]:
    """The tutorial loop: DataLoader, train, validate, and `pause` s elsewhere per epoch."""
    torch.manual_seed(0)
    model = FunctionalNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = torch.utils.data.DataLoader(SlowDecoding(delay), batch_size=4, shuffle=True)
    val = torch.utils.data.DataLoader(SlowDecoding(0.0), batch_size=64)
    mon = Monitor.configured(model, opt, run_dir=run_dir, quiet=True, options=loader_options())
    with mon:
        for _ in range(epochs):
            model.train()
            for step, (x, y) in enumerate(train):
                opt.zero_grad()
                outputs = model(x)
                loss = F.nll_loss(outputs, y)
                loss.backward()
                opt.step()
                mon.step(loss, inputs=x, targets=y, outputs=outputs)
                if step == 20:
                    break
            model.eval()
            with torch.no_grad():
                val_loss = sum(F.nll_loss(model(x), y).item() for x, y in val)
            mon.log(val_loss=val_loss / len(val))
            time.sleep(pause)  # saving, plotting, anything outside the loop
    return events(run_dir)


def test_a_loader_that_blocks_on_every_sample_is_named(tmp_path):
    evs = train_epochs(tmp_path / "run", delay=0.02, epochs=3, pause=0.0)
    steps = [(e["step"], e.get("data_time"), e["step_time"]) for e in evs if e["type"] == "step"]
    found = alerts(evs, "dataloader_bottleneck")
    assert len(found) == 1, (said(evs), steps[:25])
    [alert] = found
    assert "the step waits for data" in alert["message"]
    assert alert["evidence"]["share"] > 0.5
    assert alert["evidence"]["data_ms"] >= 10


def test_time_between_epochs_is_not_data_wait(tmp_path, cpu_burner):
    evs = train_epochs(tmp_path / "run", delay=0.0, epochs=3, pause=1.0)
    steps = [e for e in evs if e["type"] == "step"]
    assert len(steps) == 63
    assert max(e["step_time"] for e in steps) >= 1.0  # the pause is in some step's time
    assert alerts(evs, "dataloader_bottleneck") == [], said(evs)


# -- missing_zero_grad on a GAN ---------------------------------------------------------------


def train_gan(tmp_path: Path, zero_d: bool = True, steps: int = 40) -> tuple[list, list]:
    """The DCGAN loop of pytorch/examples on tiny MLPs: D on real and detached fake, then
    G through D (which leaves gradients in D that D zeroes before its own next step)."""
    torch.manual_seed(0)
    netG = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh())
    netD = nn.Sequential(nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1), nn.Sigmoid())
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = torch.randn(512, 16) * 0.5 + 1.0
    monD = Monitor(netD, optimizerD, run_dir=tmp_path / "D", quiet=True)
    monG = Monitor(netG, optimizerG, run_dir=tmp_path / "G", quiet=True)
    with monD, monG:
        for _ in range(steps):
            real = data[torch.randint(0, 512, (32,))]
            real_label = torch.ones(32, 1)
            fake_label = torch.zeros(32, 1)
            if zero_d:
                netD.zero_grad()
            errD_real = criterion(netD(real), real_label)
            errD_real.backward()
            fake = netG(torch.randn(32, 8))
            errD_fake = criterion(netD(fake.detach()), fake_label)
            errD_fake.backward()
            optimizerD.step()
            netG.zero_grad()
            errG = criterion(netD(fake), real_label)
            errG.backward()
            optimizerG.step()
            monD.step(errD_real + errD_fake)
            monG.step(errG)
    return events(tmp_path / "D"), events(tmp_path / "G")


def test_a_gan_discriminator_is_not_missing_zero_grad(tmp_path, cpu_burner):
    d_events, g_events = train_gan(tmp_path)
    assert probes(d_events, "stale_grad") and probes(g_events, "stale_grad")
    assert alerts(d_events, "missing_zero_grad") == [], said(d_events)
    assert alerts(g_events, "missing_zero_grad") == [], said(g_events)


def test_a_gan_without_netD_zero_grad_is_missing_zero_grad(tmp_path):
    d_events, g_events = train_gan(tmp_path, zero_d=False)
    [alert] = alerts(d_events, "missing_zero_grad")
    assert alert["step"] <= 5
    assert alerts(g_events, "missing_zero_grad") == []


def train_accumulating(tmp_path: Path, zero_after_step: bool) -> list[dict[str, Any]]:
    """Gradient accumulation over 4 micro-batches; zeroed after each optimizer step, or not."""
    torch.manual_seed(0)
    x, y = task(512)
    model = FunctionalNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        for step in range(1, 81):
            index = torch.randint(0, len(x), (16,))
            loss = F.nll_loss(model(x[index]), y[index]) / 4
            loss.backward()
            if step % 4 == 0:
                opt.step()
                if zero_after_step:
                    opt.zero_grad()
                mon.step(loss)
    return events(tmp_path / "run")


def test_accumulation_is_judged_at_the_optimizer_step(tmp_path):
    assert alerts(train_accumulating(tmp_path / "ok", True), "missing_zero_grad") == []
    assert len(alerts(train_accumulating(tmp_path / "bad", False), "missing_zero_grad")) == 1
