"""A run from start to end through the CLI: the event log, failures, resume, headless output."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tuimon.cli import main
from tuimon.run.log_reader import read_events

from conftest import ENDLESS_CONFIG, REPO, run_tuimon, worker_env


@pytest.fixture(autouse=True)
def one_thread_workers(monkeypatch):
    """Processes started here train on one thread (OMP_NUM_THREADS=1): on CI's two cores a
    second thread mostly spins beside the test and the processes it starts. Nothing here
    is about torch's thread count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


SHORT = ENDLESS_CONFIG.replace("max_steps: 100000000", "max_steps: 40")


def test_event_log_of_a_completed_run(write_config, tmp_path):
    done = run_tuimon(str(write_config(SHORT)), "--headless", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "events.jsonl",
        "checkpoints",
        "output.log",
    }
    events = list(read_events(run / "events.jsonl"))
    start, end = events[0], events[-1]
    assert start["type"] == "start" and end["type"] == "end"
    assert start["config"]["train"]["max_steps"] == 40
    assert start["pid"] > 0 and start["versions"]["torch"] == torch.__version__
    assert start["device"]["type"] == "cpu"
    assert start["total_steps"] == 40
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 41))
    for event in steps:
        assert {
            "step",
            "epoch",
            "time",
            "loss",
            "lr",
            "grad_norm",
            "samples",
            "samples_per_s",
            "step_time",
            "data_time",
        } <= event.keys()
        assert event["lr"] == pytest.approx(0.1)
        assert event["grad_norm"] > 0 and event["samples"] == 32
    # 384 training samples / 32 = 12 steps per epoch.
    assert [e["epoch"] for e in steps[:13]] == [0] * 12 + [1]
    assert "layer_grad_norms" in steps[0] and set(steps[0]["layer_grad_norms"]) == {
        "net.1",
        "net.3",
    }
    assert [e for e in events if e["type"] == "metrics" and "val_loss" in e]
    assert [e for e in events if e["type"] == "system"]
    assert end["status"] == "completed" and end["step"] == 40
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The log is in step order: no step event after a later metrics/end event.
    last_step = 0
    for event in events:
        if event["type"] == "step":
            assert event["step"] > last_step
            last_step = event["step"]
        elif "step" in event and event["type"] in ("metrics", "checkpoint", "end"):
            assert event["step"] == last_step


FAILING = ENDLESS_CONFIG.replace(
    "  name: mlp\n  hidden: [32]\n", "  name: faulty_models:raises_at\n  step: 5\n"
)


def test_a_crash_in_training_code_ends_failed_with_its_traceback(write_config, tmp_path):
    done = run_tuimon(str(write_config(FAILING)), "--headless", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 1
    assert "RuntimeError: boom at step 5" in done.stderr  # the traceback, for the user
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    end = events[-1]
    assert end["type"] == "end" and end["status"] == "failed"
    assert "Traceback (most recent call last)" in end["error"]
    assert "faulty_models.py" in end["error"] and "boom at step 5" in end["error"]
    # Nothing before the crash was lost: steps 1-4 are in the log.
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3, 4]
    assert "boom at step 5" in (tmp_path / "run" / "output.log").read_text()


RESUMABLE = (
    ENDLESS_CONFIG.replace("max_steps: 100000000", "max_steps: 30\n  checkpoint_every: 15")
    .replace("  hidden: [32]\n", "  hidden: [32]\n  dropout: 0.2\n")
    .replace("  val_split: 0.25\n", "  val_split: 0.25\n  augment: {random_crop: 1, hflip: true}\n")
    .replace("train:\n", "scheduler:\n  name: CosineAnnealingLR\n  interval: step\ntrain:\n")
)


def test_resume_continues_at_the_same_step_lr_and_loss(write_config, tmp_path):
    config = write_config(RESUMABLE)
    first = run_tuimon(str(config), "--headless", "--run-dir", "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000015.pt"
    assert checkpoint.exists()
    second = run_tuimon(
        str(config),
        "--headless",
        "--run-dir",
        "b",
        "--set",
        f"train.resume={checkpoint}",
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr
    original = {
        e["step"]: e for e in read_events(tmp_path / "a" / "events.jsonl") if e["type"] == "step"
    }
    resumed_events = list(read_events(tmp_path / "b" / "events.jsonl"))
    resumed = [e for e in resumed_events if e["type"] == "step"]
    assert resumed_events[0]["start_step"] == 15
    assert resumed_events[0]["resumed_from"] == str(checkpoint)
    assert [e["step"] for e in resumed] == list(range(16, 31))
    for event in resumed:
        twin = original[event["step"]]
        assert event["lr"] == twin["lr"]
        assert event["loss"] == twin["loss"]  # same batches, augmentations and dropout masks
        assert event["epoch"] == twin["epoch"]
    # And the checkpointed weights give the same loss on a fixed batch as at the time.
    state = torch.load(checkpoint, weights_only=False)
    final = torch.load(tmp_path / "b" / "checkpoints" / "step-00000030.pt", weights_only=False)
    reference = torch.load(tmp_path / "a" / "checkpoints" / "step-00000030.pt", weights_only=False)
    assert state["step"] == 15
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key


def test_resume_from_a_missing_checkpoint_is_a_usage_error(
    write_config, tmp_path, monkeypatch, capsys
):
    """Through the CLI's entry point in this process (the command line itself is
    test_bad_usage_exits_2's): one torch import fewer."""
    monkeypatch.chdir(tmp_path)
    code = main(
        [str(write_config(SHORT)), "--headless", "--set", f"train.resume={tmp_path / 'nope.pt'}"]
    )
    stderr = capsys.readouterr().err
    assert code == 2
    assert "train.resume: no checkpoint at" in stderr
    assert "Traceback" not in stderr


def test_headless_vgg_config_runs_offline(tmp_path):
    """The README's main job, cut to 3 steps: CIFAR-10 is absent offline -> synthetic."""
    done = run_tuimon(
        str(REPO / "configs" / "vgg.yaml"),
        "--headless",
        "--run-dir",
        "run",
        "--set",
        "train.max_steps=3",
        "--set",
        "data.download=false",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.batch_size=8",
        "--set",
        "data.val_split=0.0002",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "CIFAR10 is not in data/" in done.stdout
    assert "synthetic data of the same shape (3x32x32, 10 classes" in done.stdout
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    start = events[0]
    assert start["model"]["class"] == "VGG" and start["data"]["source"] == "synthetic"
    assert events[-1]["status"] == "completed"


def test_headless_progress_line_and_no_textual(write_config, tmp_path):
    config = write_config(SHORT.replace("print_every: 0.5", "print_every: 0.01"))
    script = (
        "import sys; from tuimon.cli import main; code = main(sys.argv[1:]); "
        "assert 'textual' not in sys.modules, 'headless imported textual'; sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(config), "--headless", "--run-dir", "run"],
        capture_output=True,
        text=True,
        env=worker_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "ETA" in line]
    assert lines, done.stdout
    line = lines[-1]
    for part in (
        "[endless]",
        "epoch ",
        "step ",
        "/40",
        "loss ",
        "smoothed ",
        "lr ",
        "grad ",
        "samples/s",
        "ETA ",
    ):
        assert part in line, (part, line)
    assert "completed at step 40" in done.stdout


def test_bad_usage_exits_2(tmp_path):
    done = run_tuimon("--no-such-flag", cwd=tmp_path)
    assert done.returncode == 2
    missing = run_tuimon(str(tmp_path / "missing.yaml"), "--headless", cwd=tmp_path)
    assert missing.returncode == 2
    assert "config file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
