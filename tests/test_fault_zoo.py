"""The fault zoo: real training runs with one classic bug each, and healthy runs.

Every config in configs/faults/ must be named by its rule, as an error or warning, by the
step its header promises; every config in configs/healthy/ (and the shipped MLP job) must
get no alert at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuimon.config import load_config
from tuimon.run.log_reader import read_events
from tuimon.training.trainer import Trainer

from conftest import REPO, run_tuimon

FAULTS = sorted((REPO / "configs" / "faults").glob("*.yaml"))
HEALTHY = sorted((REPO / "configs" / "healthy").glob("*.yaml"))
# Healthy runs of millisecond steps; the CNN ones would take minutes on a loaded machine.
FAST_STEPPING = ("small_batch", "regression")


def train(path: Path, tmp_path: Path, overrides: list[str] | None = None) -> list[dict]:
    trainer = Trainer(load_config(path, overrides or []))
    trainer.setup()
    trainer.run(tmp_path / "run", quiet=True)
    return list(read_events(tmp_path / "run" / "events.jsonl"))


# The converged healthy run's weights at this step are what the fine-tune starts from.
PRETRAINED_STEP = 400


@pytest.fixture(scope="module")
def converged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    """The converged healthy run, trained once for the module: its events, and its
    checkpoint at PRETRAINED_STEP (weights the fine-tune starts from, as a run of
    PRETRAINED_STEP steps would leave them: the doctor reads no checkpoint event)."""
    run_dir = tmp_path_factory.mktemp("converged")
    events = train(
        REPO / "configs" / "healthy" / "converged.yaml",
        run_dir,
        [f"train.checkpoint_every={PRETRAINED_STEP}"],
    )
    [checkpoint] = [
        e["path"] for e in events if e["type"] == "checkpoint" and e["step"] == PRETRAINED_STEP
    ]
    return events, Path(checkpoint)


def test_the_zoo_has_a_fault_for_every_rule_that_runs_on_a_cpu():
    from tuimon.doctor.rule_ids import RULE_IDS

    # gpu_memory_pressure needs a GPU: it is tested on recorded-style samples instead. The
    # rank rules need a torchrun job: tests/test_distributed_monitor.py runs one.
    job_rules = {"straggler", "stalled_rank", "rank_nan"}
    assert {p.stem for p in FAULTS} == set(RULE_IDS) - {"gpu_memory_pressure"} - job_rules
    assert len(HEALTHY) >= 6


@pytest.mark.parametrize("path", FAULTS, ids=lambda p: p.stem)
def test_each_fault_is_named_by_its_rule(path, tmp_path):
    expected = path.stem
    by_step = int(re.search(r"by step (\d+)", path.read_text()).group(1))
    # The rules read only what came before (none knows the run's length), so every event
    # up to `by_step` is as in the full run; one step more keeps the closing validation
    # (at the last step) from judging inside the window.
    events = train(path, tmp_path, [f"train.max_steps={by_step + 1}"])
    alerts = [e for e in events if e["type"] == "alert"]
    named = [a for a in alerts if a["rule"] == expected]
    assert named, f"{expected} never fired; alerts: {[(a['rule'], a['step']) for a in alerts]}"
    first = named[0]
    assert first["step"] <= by_step, (expected, first["step"], by_step)
    assert first["severity"] in ("warning", "error")
    assert first["message"] and first["suggestion"]
    assert events[-1]["type"] == "end"


@pytest.mark.parametrize("path", [*HEALTHY, REPO / "configs" / "mlp.yaml"], ids=lambda p: p.stem)
def test_healthy_runs_raise_nothing(path, tmp_path, request):
    """Silent, and the runs whose steps take a millisecond (where a busy machine's stalls
    look like data waits: CI's machine is shared) are judged with the CPU loaded."""
    if path.stem in FAST_STEPPING:
        request.getfixturevalue("cpu_burner")
    overrides = []
    if path.stem == "finetune":
        # Fine-tune from weights trained by the converged healthy run.
        _, checkpoint = request.getfixturevalue("converged_run")
        overrides.append(f"train.init_from={checkpoint}")
    if path.stem == "mlp":
        overrides.append("train.max_steps=1000")
    if path.stem == "converged":
        events, _ = request.getfixturevalue("converged_run")
    else:
        events = train(path, tmp_path, overrides)
    alerts = [(a["rule"], a["step"], a["message"]) for a in events if a["type"] == "alert"]
    assert alerts == []
    assert events[-1]["status"] == "completed"


def test_autofix_restores_and_lowers_the_lr(tmp_path):
    # It diverges by step 40; 300 steps leave over 250 after the fix to get back on track.
    events = train(
        REPO / "configs" / "faults" / "divergence.yaml",
        tmp_path,
        ["monitor.autofix=true", "train.max_steps=300"],
    )
    fixes = [e for e in events if e["type"] == "control" and e["source"] == "autofix"]
    assert len(fixes) == 1
    [fix] = fixes
    assert fix["command"] == "recover" and fix["restored_step"] == 1
    assert fix["old"] == pytest.approx(0.5) and fix["new"] == pytest.approx(0.05)
    steps = [e for e in events if e["type"] == "step"]
    after = [e for e in steps if e["step"] > fix["step"]]
    assert all(e["lr"] == pytest.approx(0.05) for e in after)
    # Back on track: the run ends far below where it diverged.
    assert after[-1]["loss"] < 0.1 and events[-1]["status"] == "completed"


def test_autofix_gives_up_after_its_limit(tmp_path):
    events = train(
        REPO / "configs" / "faults" / "nan_loss.yaml",
        tmp_path,
        # An LR this absurd must be allowed explicitly (monitor.lr_max) to be tried at all.
        [
            "monitor.autofix=true",
            "monitor.autofix_max=1",
            "optimizer.lr=5000",
            "monitor.lr_max=1e4",
        ],
    )
    fixes = [e for e in events if e["type"] == "control" and e["source"] == "autofix"]
    assert len(fixes) == 1 and fixes[0]["new"] == pytest.approx(500)
    notes = [e["text"] for e in events if e["type"] == "message"]
    assert any("autofix: gave up" in text for text in notes)


def test_rule_overrides_from_the_config(tmp_path):
    path = REPO / "configs" / "faults" / "stall.yaml"
    # Enabled, stall names this run by step 350 (test_each_fault_is_named_by_its_rule).
    silent = train(
        path, tmp_path / "off", ["monitor.rules.stall.enabled=false", "train.max_steps=351"]
    )
    assert not [e for e in silent if e["type"] == "alert" and e["rule"] == "stall"]
    sooner = train(
        path,
        tmp_path / "sooner",
        [
            "monitor.rules.stall.warmup=100",
            "monitor.rules.stall.window=100",
            "train.max_steps=300",
        ],
    )
    [first, *_] = [e for e in sooner if e["type"] == "alert" and e["rule"] == "stall"]
    assert first["step"] < 300 and "over the last 100 steps" in first["message"]


def test_an_unknown_threshold_is_a_config_error(tmp_path):
    from tuimon.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_config(REPO / "configs" / "mlp.yaml", ["monitor.rules.stall.windw=5"])
    assert (
        "monitor.rules.stall.windw: unknown threshold of stall (did you mean window?)"
        in (caught.value.problems[0])
    )


def test_the_autofix_flag_of_the_cli(tmp_path):
    config = REPO / "configs" / "faults" / "divergence.yaml"
    # Diverged by step 40: 200 steps leave the fix ample time to arrive however busy the
    # machine (the doctor judges on the log's thread, behind the training loop).
    done = run_tuimon(
        config,
        "--headless",
        "--autofix",
        "--run-dir",
        "run",
        "--set",
        "train.max_steps=200",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "recover at step" in done.stdout and "(from autofix)" in done.stdout
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    assert events[0]["config"]["monitor"]["autofix"] is True
