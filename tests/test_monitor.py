"""`tuimon.Monitor` inside a plain PyTorch loop, in this process."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import tuimon
from tuimon.control.client import ControlClient
from tuimon.monitor.monitor import Monitor, RunOptions
from tuimon.run.log_reader import read_events

from conftest import worker_env


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def batches(count, size=8):
    generator = torch.Generator().manual_seed(1)
    for _ in range(count):
        yield (
            torch.randn(size, 1, 8, 8, generator=generator),
            torch.randint(0, 3, (size,), generator=generator),
        )


def events_of(mon):
    return list(read_events(mon.run_dir / "events.jsonl"))


def test_the_two_line_integration_records_exact_gradient_norms(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected_global, expected_layers = [], []
    with tuimon.Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        for x, y in batches(25):
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
            expected_global.append(torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))
            expected_layers.append(
                {
                    layer: torch.sqrt(
                        sum(g.pow(2).sum() for n, g in grads.items() if n.startswith(layer + "."))
                    )
                    for layer in ("0", "3")
                }
            )
            opt.step()
            mon.step(loss, inputs=x, targets=y, outputs=out)
    steps = [e for e in events_of(mon) if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 26))
    for event, total in zip(steps, expected_global, strict=True):
        assert event["grad_norm"] == pytest.approx(float(total), rel=1e-5)
        assert event["samples"] == 8 and event["lr"] == 0.05
    layered = [(e, expected_layers[e["step"] - 1]) for e in steps if "layer_grad_norms" in e]
    assert [e["step"] for e, _ in layered] == [1, 20]
    for event, layers in layered:
        assert set(event["layer_grad_norms"]) == {"0", "3"}
        for name, value in layers.items():
            assert event["layer_grad_norms"][name] == pytest.approx(float(value), rel=1e-5)


def test_grad_clip_is_applied_after_measuring(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen_by_optimizer = []

    mon = Monitor.configured(
        model, opt, run_dir=tmp_path / "run", quiet=True, options=RunOptions(grad_clip=0.01)
    )
    # Registered after the Monitor's hook, so it sees what optimizer.step() will use.
    opt.register_step_pre_hook(
        lambda o, a, k: seen_by_optimizer.append(
            torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        )
    )
    with mon:
        for x, y in batches(5):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
    logged = [e["grad_norm"] for e in events_of(mon) if e["type"] == "step"]
    assert all(value > 0.05 for value in logged)  # the norm before clipping is logged
    assert [float(v) for v in seen_by_optimizer] == pytest.approx([0.01] * 5, rel=1e-4)


def test_log_records_metrics_after_the_steps_before_it(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        for x, y in batches(3):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss.item())  # a float loss works too
        mon.log(val_loss=torch.tensor(0.75), val_acc=0.5, note="ok")
        with pytest.raises(ValueError, match="'step' is a reserved name"):
            mon.log(step=3)
    events = events_of(mon)
    metrics = [e for e in events if e["type"] == "metrics"]
    assert metrics == [
        {**metrics[0], "val_loss": 0.75, "val_acc": 0.5, "note": "ok", "step": 3, "epoch": 0}
    ]
    assert [e["type"] for e in events if e["type"] in ("step", "metrics")] == [
        "step",
        "step",
        "step",
        "metrics",
    ]


def test_steps_without_an_optimizer_step_and_foreign_params(tmp_path):
    model = tiny_model()
    stray = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([*model.parameters(), stray], lr=0.1)
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        x, y = next(batches(1))
        mon.step(torch.tensor(1.0))  # nothing stepped: no gradient norm to report
        loss = nn.functional.cross_entropy(model(x), y) + stray.sum()
        loss.backward()
        opt.step()
        mon.step(loss)
    first, second = [e for e in events_of(mon) if e["type"] == "step"]
    assert "grad_norm" not in first and first["lr"] == 0.1
    assert second["layer_grad_norms"]["(not in model)"] == pytest.approx(2**0.5)


def test_param_groups_are_all_recorded(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1},
            {"params": model[3].parameters(), "lr": 0.01},
        ]
    )
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        x, y = next(batches(1))
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        mon.step(torch.tensor(1.0), inputs={"image": x})
    [step] = [e for e in events_of(mon) if e["type"] == "step"]
    assert step["lrs"] == [0.1, 0.01] and step["lr"] == 0.1 and step["samples"] == 8


def test_commands_reach_a_custom_loop(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # stop="flag": this loop polls should_stop (the default raises StopTraining instead).
    with Monitor(model, opt, run_dir=tmp_path / "run", quiet=True, stop="flag") as mon:
        with ControlClient(mon.run_dir) as client:
            client.request("scale-lr", factor=0.5)
            client.request("stop")
        steps = 0
        for x, y in batches(100):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            steps += 1
            if mon.should_stop:
                break
        with pytest.raises(RuntimeError, match="closed"):
            mon.close()
            mon.step(loss)
    assert steps == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.05)
    events = events_of(mon)
    assert events[-1]["status"] == "stopped"
    assert [(e["command"], e["new"]) for e in events if e["type"] == "control"] == [
        ("scale-lr", pytest.approx(0.05)),
        ("stop", "stopping"),
    ]


def test_a_crash_inside_the_with_block_is_logged_and_raised(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(ZeroDivisionError),
        Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon,
    ):
        mon.step(torch.tensor(1.0))
        1 / 0  # noqa: B018
    end = events_of(mon)[-1]
    assert end["status"] == "failed" and "ZeroDivisionError" in end["error"]


def test_ctrl_c_inside_the_with_block_ends_stopped(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(KeyboardInterrupt),
        Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon,
    ):
        raise KeyboardInterrupt
    end = events_of(mon)[-1]
    assert (end["status"], end["reason"]) == ("stopped", "interrupted")


SCRIPT = """
import torch, tuimon
model = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
mon = tuimon.Monitor(model, opt)
mon.step(torch.tensor(1.0))
raise ValueError("script bug")
"""


def test_a_script_that_never_closes_its_monitor_still_ends_the_log(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=worker_env(),
        timeout=120,
    )
    assert done.returncode == 1 and "ValueError: script bug" in done.stderr
    [run_dir] = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("train-")  # named after the script
    events = list(read_events(run_dir / "events.jsonl"))
    assert events[-1]["status"] == "failed" and "script bug" in events[-1]["error"]
    assert "[train] run" in done.stdout  # not quiet: it printed its start line


def test_run_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TUIMON_RUN_DIR", str(tmp_path / "given"))
    model = tiny_model()
    with Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), quiet=True) as mon:
        pass
    assert mon.run_dir == (tmp_path / "given").resolve()
    assert events_of(mon)[-1]["status"] == "completed"


def test_quiet_prints_nothing(tmp_path, capsys):
    model = tiny_model()
    with Monitor(
        model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=tmp_path / "q", quiet=True
    ):
        pass
    assert capsys.readouterr().out == ""


def test_wrong_arguments_are_refused(tmp_path):
    model = tiny_model()
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer"):
        Monitor(model, "sgd", run_dir=tmp_path / "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"nn\.Module"):
        Monitor(lambda x: x, torch.optim.SGD(model.parameters(), lr=0.1))  # type: ignore


def test_update_to_weight_ratio_is_measured_on_probe_steps(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    settings = RunOptions().settings.model_copy(deep=True)
    settings.probes.update_ratio_every = 3
    probed = {1, 2, 3, 5, 6}  # the early steps 1, 2, 3, 5, then every third
    expected = {}
    with Monitor.configured(
        model, opt, run_dir=tmp_path / "run", quiet=True, options=RunOptions(settings=settings)
    ) as mon:
        for step, (x, y) in enumerate(batches(6), start=1):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            if step in probed:
                after = dict(model.named_parameters())
                delta = {n: (after[n] - before[n]).detach() for n in before}
                expected[step] = {
                    layer: float(
                        torch.sqrt(
                            sum(delta[n].pow(2).sum() for n in delta if n.startswith(layer + "."))
                        )
                        / torch.sqrt(
                            sum(
                                after[n].detach().pow(2).sum()
                                for n in after
                                if n.startswith(layer + ".")
                            )
                        )
                    )
                    for layer in ("0", "3")
                }
            mon.step(loss)
    steps = {e["step"]: e for e in events_of(mon) if e["type"] == "step"}
    assert [s for s, e in steps.items() if "update_ratio" in e] == sorted(probed)
    assert sorted(expected) == sorted(probed)
    for step, layers in expected.items():
        for layer, ratio in layers.items():
            assert steps[step]["layer_update_ratios"][layer] == pytest.approx(ratio, rel=1e-5)
        # SGD without momentum: the update is exactly lr x gradient.
        assert steps[step]["update_ratio"] > 0


def test_probes_set_to_zero_are_off(tmp_path):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    settings = RunOptions().settings.model_copy(deep=True)
    for probe in ("update_ratio_every", "batch_every", "activations_every", "stale_grad_every"):
        setattr(settings.probes, probe, 0)
    with Monitor.configured(
        model, opt, run_dir=tmp_path / "run", quiet=True, options=RunOptions(settings=settings)
    ) as mon:
        for x, y in batches(25):
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            mon.step(loss, inputs=x, targets=y, outputs=out)
    events = events_of(mon)
    steps = [e for e in events if e["type"] == "step"]
    assert len(steps) == 25 and all("grad_norm" in e for e in steps)
    assert not any("update_ratio" in e for e in steps)
    probes = {e["probe"] for e in events if e["type"] == "probe"}
    assert probes <= {"optimizer"}  # the one-off check at start is not a periodic probe
    assert events[-1]["type"] == "end" and events[-1]["status"] == "completed"
