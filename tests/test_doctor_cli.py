"""`tuimon doctor RUN_DIR`: the rules again, offline, over a recorded log."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, run_tuimon


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    """A real headless run of the divergence fault (its log holds the alerts as run)."""
    root = tmp_path_factory.mktemp("doctor")
    config = REPO / "configs" / "faults" / "divergence.yaml"
    done = run_tuimon(config, "--headless", "--quiet", "--run-dir", "run", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "run"


def doctor(*args, cwd=None):
    return run_tuimon("doctor", *args, cwd=cwd, timeout=120)


def test_report_names_the_fault_with_its_evidence(diverged_run):
    done = doctor(diverged_run)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[0].startswith("tuimon doctor: fault-divergence")
        and "600 steps, completed" in lines[0]
    )
    [divergence] = [line for line in lines if "divergence at step" in line]
    assert divergence.lstrip().startswith("ERROR") and "above its best" in divergence
    assert "try 0.05" in done.stdout  # the suggestion names the LR to use
    # lr_too_high, divergence, and dead_relu: the blow-up killed the units for good.
    assert lines[-1].startswith("3 alerts: 1 error, 2 warnings, 0 info (3 in the log as run)")


def test_json_lines_match_what_the_run_said(diverged_run):
    done = doctor(diverged_run, "--json")
    said = [json.loads(line) for line in done.stdout.splitlines()]
    recorded = [
        json.loads(line) for line in (diverged_run / "events.jsonl").read_text().splitlines()
    ]
    as_run = [(e["rule"], e["step"]) for e in recorded if e["type"] == "alert"]
    again = [(e["rule"], e["step"]) for e in said if e["type"] == "alert"]
    assert again == as_run  # offline and live: the same doctor, the same events


def test_thresholds_can_be_tuned_and_rules_turned_off(diverged_run):
    quiet = doctor(
        diverged_run,
        "--rule",
        "divergence.enabled=false",
        "--rule",
        "lr_too_high.high=10",
        "--json",
    )
    rules = {json.loads(line)["rule"] for line in quiet.stdout.splitlines()}
    assert "divergence" not in rules and "lr_too_high" not in rules
    strict = doctor(diverged_run, "--fail-on", "error")
    assert strict.returncode == 1
    relaxed = doctor(diverged_run, "--rule", "divergence.enabled=false", "--fail-on", "error")
    assert relaxed.returncode == 0


def test_bad_arguments_exit_2(diverged_run, tmp_path):
    typo = doctor(diverged_run, "--rule", "divergence.rati=3")
    assert typo.returncode == 2
    assert "unknown threshold of divergence (did you mean ratio?)" in typo.stderr
    unknown = doctor(diverged_run, "--rule", "divergnce.ratio=3")
    assert unknown.returncode == 2 and "did you mean divergence?" in unknown.stderr
    missing = doctor(tmp_path)
    assert missing.returncode == 2 and "no events.jsonl here" in missing.stderr
