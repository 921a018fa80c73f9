"""Damaged event logs (issue 8, item 13): every reader skips and counts what it cannot use,
never crashes, never hangs, and keeps the good events around the damage.

Each case is a sound log of a short run with damage written into its middle (or before
its start, for damaged start events): invalid UTF-8, deep nesting, huge numbers, wrong
types in every field the readers use, over-long lines, NUL bytes, torn lines. Each goes
through `load_run_state` (what replay and attach show) and a real `tuimon doctor`.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from tuimon.doctor.report import review
from tuimon.run.log_reader import read_events
from tuimon.run.run_state import TEXT_LIMIT, RunState, load_run_state

from conftest import run_tuimon

STEPS = 30  # steps of the sound run; the damage goes after step DAMAGE_AFTER
DAMAGE_AFTER = 15
LAST_WORDS = "the last good message"


def sound_events(steps: int = STEPS) -> list[dict]:
    events: list[dict] = [
        {
            "type": "start",
            "name": "sound",
            "time": 1000.0,
            "total_steps": steps,
            "steps_per_epoch": 10,
            "data": {"num_classes": 10, "task": "classification"},
            "settings": {"smoothing": 0.9},
        }
    ]
    for step in range(1, steps + 1):
        events.append(
            {
                "type": "step",
                "step": step,
                "epoch": (step - 1) // 10,
                "time": 1000.0 + step,
                "loss": 2.3 / step,
                "lr": 0.1,
                "grad_norm": 1.0,
                "samples": 32,
                "step_time": 0.01,
                "data_time": 0.001,
                "layer_grad_norms": {"fc1": 0.5, "fc2": 0.25},
            }
        )
    events.append({"type": "message", "level": "info", "text": LAST_WORDS, "step": steps})
    events.append({"type": "end", "status": "completed", "step": steps, "elapsed": 30.0})
    for seq, event in enumerate(events, start=1):
        event["seq"] = seq
    return events


def lines_of(events: list[dict]) -> list[bytes]:
    return [json.dumps(e).encode() + b"\n" for e in events]


def obj(**fields) -> bytes:
    """One line holding these fields (json's NaN tokens for non-finite floats)."""
    return json.dumps(fields).encode() + b"\n"


@dataclass
class Damage:
    lines: list[bytes]
    skipped: int  # lines the reader cannot read as an event
    rejected: int = 0  # events the run state cannot use (a step that is not a step)
    before_start: bool = False  # written before the start event instead of mid-run


HUGE = 10**400  # parses (json takes up to 4300 digits), too large for a float
MB = 1 << 20

DAMAGES = {
    "invalid utf-8": Damage([b'\xff\xfe{"type":"step","step":16}\n'], 1),
    "invalid utf-8 in a string": Damage([b'{"type":"message","text":"\xc3\x28"}\n'], 1),
    "lone surrogate escape": Damage([b'{"type":"message","text":"\\ud800"}\n'], 1),
    "nested 10000 deep": Damage([b"[" * 10_000 + b"]" * 10_000 + b"\n"], 1),
    "nested 400000 deep (crashes orjson)": Damage([b"[" * 400_000 + b"]" * 400_000 + b"\n"], 1),
    "message nested 600 deep": Damage(
        [b'{"type":"message","text":' + b"[" * 600 + b"]" * 600 + b"}\n"], 1
    ),
    "5000-digit int": Damage([b'{"type":"step","step":' + b"9" * 5000 + b"}\n"], 1),
    "400-digit step": Damage([obj(type="step", step=HUGE, loss=1.0)], 0, rejected=1),
    "400-digit loss, time, samples": Damage(
        [obj(type="step", step=DAMAGE_AFTER, loss=HUGE, time=HUGE, samples=HUGE)], 0
    ),
    "step 1e308": Damage([obj(type="step", step=1e308, loss=1.0)], 0, rejected=1),
    "step as text": Damage([obj(type="step", step="x", loss=1.0)], 0, rejected=1),
    "step null": Damage([obj(type="step", step=None, loss=1.0)], 0, rejected=1),
    "step as list and dict": Damage(
        [obj(type="step", step=[1], loss=1.0), obj(type="step", step={"a": 1})], 0, rejected=2
    ),
    "negative step": Damage([obj(type="step", step=-5, loss=1.0)], 0, rejected=1),
    "NaN and infinite step": Damage(
        [obj(type="step", step=math.nan), obj(type="step", step=-math.inf)], 0, rejected=2
    ),
    "step true": Damage([obj(type="step", step=True, loss=1.0)], 0, rejected=1),
    "step fields of wrong types": Damage(
        [
            obj(
                type="step",
                step=DAMAGE_AFTER,
                loss="x",
                lr={"a": 1},
                grad_norm=[1],
                update_ratio="y",
                epoch=[2],
                time="noon",
                samples="many",
                step_time=None,
                data_time={},
                layer_grad_norms=[1, 2],
                layer_update_ratios={"fc1": "x", "fc2": [1]},
                lrs="abc",
            )
        ],
        0,
    ),
    "100000 LR groups": Damage([obj(type="step", step=DAMAGE_AFTER, lrs=[0.1] * 100_000)], 0),
    "system fields of wrong types": Damage(
        [
            obj(type="system", host=[1, 2], gpus={"0": 1}),
            obj(type="system", host="x", gpus=[{"index": "x", "util": "y"}, "gpu", None]),
            obj(type="system", host={"cpu_percent": HUGE}, gpus=[{"index": HUGE}]),
        ],
        0,
    ),
    "metrics of wrong types and 500 keys": Damage(
        [
            obj(type="metrics", step="x", val_loss="low", val_acc=[1]),
            obj(type="metrics", step=DAMAGE_AFTER, **{f"m{i}": float(i) for i in range(500)}),
            obj(type="metrics", step=DAMAGE_AFTER, big=HUGE),
        ],
        0,
    ),
    "damaged start events": Damage(
        [
            obj(type="start", settings="x", name="n" * 10_000, total_steps="x", time="x"),
            obj(type="start", steps_per_epoch=HUGE, data=[1], loss="ce", config={"monitor": 5}),
        ],
        0,
        before_start=True,
    ),
    "message of 10 MB": Damage([obj(type="message", text="x" * (10 * MB))], 1),
    "message of 500 KB": Damage([obj(type="message", level="info", text="y" * 500_000)], 0),
    "message, alert, control, checkpoint of wrong types": Damage(
        [
            obj(type="message", text={"a": [1, 2]}, level=5, stop_ignored=True),
            obj(type="alert", rule=5, message={"x": 1}, severity=[], step="x"),
            obj(type="alert_cleared", rule=None, step=[1]),
            obj(type="control", command=["stop"], new=["x"], old={}),
            obj(type="checkpoint", path=5, step="x"),
            obj(type="probe", probe="batch", inputs=[1], targets={"counts": "x"}),
            obj(type="probe", probe="activations", layers={"a": "x", "b": [None]}),
        ],
        0,
    ),
    "end of wrong types mid-run": Damage([obj(type="end", status=5, error=[1], elapsed="x")], 0),
    "escape sequences": Damage(
        [obj(type="message", level="warning", text="\x1b]0;pwned\x07\x1b[2J title")], 0
    ),
    "NUL bytes": Damage([b"\x00" * 100 + b"\n"], 1),
    "NUL inside a string": Damage([b'{"type":"message","text":"a\x00b"}\n'], 1),
    "line truncated mid-file": Damage([b'{"type":"step","step":16,"lo\n'], 1),
    "JSON array line": Damage([b"[1, 2, 3]\n"], 1),
    "JSON scalars": Damage([b"42\n", b'"text"\n', b"null\n"], 3),
    "duplicate seq": Damage(
        [obj(type="message", text="dup", seq=3), obj(type="message", text="dup", seq=3)], 0
    ),
    "type missing or not text": Damage([obj(step=16), obj(type=5), obj(type=None)], 0, rejected=3),
    "unknown type": Damage([obj(type="from_the_future", step=16)], 0),
    "blank lines": Damage([b"\n", b"   \n", b"\t\r\n"], 0),
    "over-long line of 3 MB": Damage(
        [b'{"type":"message","text":"' + b"z" * (3 * MB) + b'"}\n'], 1
    ),
}


def write_damaged_log(run_dir: Path, damage: Damage) -> Path:
    lines = lines_of(sound_events())
    at = 0 if damage.before_start else 1 + DAMAGE_AFTER  # after the start and 15 steps
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "events.jsonl"
    path.write_bytes(b"".join(lines[:at] + damage.lines + lines[at:]))
    return path


@pytest.fixture(params=list(DAMAGES), ids=list(DAMAGES))
def damaged(request, tmp_path):
    damage = DAMAGES[request.param]
    return tmp_path / "run", damage, write_damaged_log(tmp_path / "run", damage)


def test_run_state_skips_and_counts_damage_and_keeps_the_good_events(damaged):
    _, damage, path = damaged
    state = load_run_state(path)
    assert state.skipped_lines == damage.skipped
    assert state.rejected == damage.rejected
    # The good events around the damage are all there.
    assert state.start["name"] == "sound" and state.status == "completed"
    assert state.step == STEPS and state.series["loss"].total >= STEPS
    assert state.messages[-1]["text"] == LAST_WORDS
    # Whatever the damage, what the state holds is bounded and of the types views use.
    assert all(len(m["text"]) <= TEXT_LIMIT + 100 for m in state.messages)
    assert all(isinstance(m["text"], str) for m in state.messages)
    assert len(state.series) <= 64 + 64 + 5
    assert all(isinstance(v, float) for v in state.layer_grad_norms.values())
    assert isinstance(state.step, int) and isinstance(state.name, str)
    state.rates(), state.eta(), state.elapsed(live=False)
    json.dumps(state.snapshot())  # what a client receives
    if damage.skipped or damage.rejected:
        assert state.damage_note() is not None
    # The same events applied live give the same state (the bulk path is not a second truth).
    live = RunState()
    live.apply_many(list(read_events(path)))
    assert live.step == state.step and live.rejected == state.rejected


def test_doctor_reports_damage_without_a_traceback(damaged):
    run_dir, damage, _ = damaged
    done = run_tuimon("doctor", run_dir, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "\x1b" not in done.stdout  # no escape sequence reaches the terminal
    first = done.stdout.splitlines()[0]
    found = re.fullmatch(r"tuimon doctor: sound \(.*\): (\d+) steps, completed", first)
    assert found and int(found[1]) >= STEPS, first  # the good events around the damage
    if damage.skipped:
        noun = "line" if damage.skipped == 1 else "lines"
        assert f"{damage.skipped} damaged {noun} skipped" in done.stdout
    else:
        assert "damaged" not in done.stdout


def test_an_empty_log_and_an_all_damaged_log_are_said_so_by_replay_and_doctor(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.jsonl").write_bytes(b"")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "events.jsonl").write_bytes(b"\xff\n[1]\n{\n")
    done = run_tuimon("replay", empty)
    assert done.returncode == 1 and "no events to show: the file is empty" in done.stderr
    done = run_tuimon("replay", garbage)
    assert done.returncode == 1
    assert "no events to show: 3 damaged lines skipped (lines 1, 2, 3)" in done.stderr
    assert "Traceback" not in done.stderr
    done = run_tuimon("doctor", garbage)
    assert done.returncode == 0 and "3 damaged lines skipped" in done.stdout
    assert "0 steps" in done.stdout


def test_a_torn_last_line_is_not_damage(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(lines_of(sound_events())) + b'{"type":"step","st')
    reader = read_events(path)
    assert len(list(reader)) == STEPS + 3 and reader.skipped == 0 and reader.torn


def test_doctor_piped_into_head_exits_quietly(tmp_path):
    """`tuimon doctor RUN | head -1`: no BrokenPipeError, whatever the report's size."""
    import subprocess

    from conftest import worker_env

    run_dir = tmp_path / "run"
    # Many alerts make a report larger than a pipe's buffer: NaN losses that come and go.
    events = sound_events(steps=4000)
    for event in events:
        if event["type"] == "step" and event["step"] % 200 < 20:
            event["loss"] = math.nan
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(b"".join(lines_of(events)))
    command = (
        f"{sys.executable} -m tuimon doctor {run_dir} --json | head -c 1; exit ${{PIPESTATUS[0]}}"
    )
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, env=worker_env(), timeout=120
    )
    assert done.stderr == "" and done.returncode in (0, 141)


def test_doctor_streams_the_log_in_bounded_memory(tmp_path):
    """Item 14: the review keeps what the report needs, not the log (which the old
    `list(read_events(...))` held whole: many times the file's size)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = run_dir / "events.jsonl"
    with path.open("wb") as file:
        for line in lines_of(sound_events(steps=20_000)):
            file.write(line)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        _, summary = review(run_dir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["steps"] == 20_000 and summary["status"] == "completed"
    assert peak < size / 4, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB log"


def test_doctor_prints_no_escape_sequence_from_the_log(tmp_path):
    """Item 8 for the doctor: a run name and names the rules quote come from the log."""
    events = sound_events()
    events[0]["name"] = "\x1b]0;pwned\x07\x1b[2Jrun"
    events[0]["optimizer"] = {"class": "\x1b[31mSGD"}
    for event in events:
        if event["type"] == "step" and event["step"] > 20:
            event["loss"] = math.nan  # an alert that quotes the optimizer's name
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_bytes(b"".join(lines_of(events)))
    done = run_tuimon("doctor", run_dir)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "pwned" in done.stdout.splitlines()[0] and "nan_loss" in done.stdout


@pytest.mark.parametrize(
    "case",
    [
        "step 1e308",
        "message of 10 MB",
        "step fields of wrong types",
        "system fields of wrong types",
        "100000 LR groups",
        "damaged start events",
        "message, alert, control, checkpoint of wrong types",
    ],
)
async def test_replay_app_draws_a_damaged_log(case, tmp_path):
    """The replay app on a damaged log draws the good run (step 1e308 once crashed it
    with a Textual traceback; a 10 MB message kept it blank for 39 s)."""
    from tuimon.ui.app import TuimonApp

    from conftest import until

    run_dir = tmp_path / "run"
    write_damaged_log(run_dir, DAMAGES[case])
    app = TuimonApp(run_dir, replay=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: app.connection_status == "replay", timeout=60)
        assert app.state.step == STEPS and app.state.name == "sound"
        app.refresh_panels(everything=True)
        await pilot.pause()
    assert app.return_code in (None, 0)


def test_host_is_a_name_in_a_start_and_readings_in_a_system_sample():
    from tuimon.run.field_types import typed_event

    start = {"type": "start", "host": "gpu-3"}
    system = {"type": "system", "host": {"cpu_percent": 12.0}}
    assert typed_event(start) == start
    assert typed_event(system) == system
    assert "host" not in typed_event({"type": "start", "host": {"cpu_percent": 1}})
    assert "host" not in typed_event({"type": "system", "host": "gpu-3"})
