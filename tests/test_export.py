"""`tuimon export`: a run's scalars as CSV and as TensorBoard event files, streamed.

Real runs (a config's, through the CLI; a script's Monitor logging its own metrics), read
back with the csv module and with TensorBoard's own event reader, and compared with the
log read here independently (json, one line at a time).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pty
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tuimon.cli import main
from tuimon.export.crc32c import crc32c_many, masked
from tuimon.export.export_command import export_command
from tuimon.export.step_rows import WINDOW_STEPS
from tuimon.run.event_codec import encode_event
from tuimon.run.events import METRICS, START, STEP

REPO = Path(__file__).resolve().parent.parent
# A metric name a script chose: a terminal title sequence, a comma, quotes, a newline.
HOSTILE = 'evil\x1b]0;pwned\x07, "quoted"\nname'
ROW_COLUMNS = ["step", "epoch", "time", "elapsed"]


# -- runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real config run through the CLI: 40 steps, validation every 10 (val_loss, val_acc)."""
    run_dir = tmp_path_factory.mktemp("config") / "mlp-run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuimon",
            "configs/mlp.yaml",
            "--headless",
            "--quiet",
            "--run-dir",
            str(run_dir),
            "--set",
            "train.max_steps=40",
            "--set",
            "train.val_every=10",
            "--set",
            "data.synthetic.num_samples=2000",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A script's own loop and metrics: `bleu` before the first step (a step no step event
    has), every 10 steps, NaN and the infinities, a metric named like a step field (`loss`),
    and a hostile name."""
    from tuimon import Monitor

    run_dir = tmp_path_factory.mktemp("script") / "script-run"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with Monitor(model, opt, run_dir=run_dir, quiet=True, name="script") as mon:
        mon.log(bleu=0.5)
        for step in range(1, 31):
            x = torch.randn(8, 4)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
            if step % 10 == 0:
                mon.log(bleu=float(step), loss=step / 100)
            if step == 15:
                mon.log(bleu=math.nan, gap=math.inf, floor=-math.inf)
            if step == 20:
                mon.log(**{HOSTILE: 2.5})
    return run_dir


def log_events(run_dir: Path) -> list[dict[str, Any]]:
    """The log read independently of tuimon's reader (json accepts NaN and Infinity)."""
    events = []
    for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def scalars_of(event: dict[str, Any]) -> dict[str, float]:
    """A step's or a metric's scalars: numbers, a step's dict fields as field/key; `loss`
    logged as a metric is `metrics/loss`."""
    kind = event.get("type")
    scalars: dict[str, float] = {}
    for key, value in event.items():
        if key in ("type", "step", "epoch", "time", "seq", "rank", "lrs"):
            continue
        name = "metrics/loss" if kind == METRICS and key == "loss" else key
        if type(value) in (int, float):
            scalars[name] = float(value)
        elif kind == STEP and type(value) is dict:
            for inner, item in value.items():
                if type(item) in (int, float):
                    scalars[f"{key}/{inner}"] = float(item)
    return scalars


def scalar_events(run_dir: Path) -> list[dict[str, Any]]:
    return [e for e in log_events(run_dir) if e.get("type") in (STEP, METRICS)]


def expected_cells(run_dir: Path) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    """Per step: every scalar the log has for it, and the step's time."""
    cells: dict[int, dict[str, float]] = {}
    times: dict[int, float] = {}
    for event in scalar_events(run_dir):
        step = event["step"]
        cells.setdefault(step, {}).update(scalars_of(event))
        if event["type"] == STEP or step not in times:
            times[step] = event["time"]
    return cells, times


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# -- CSV ------------------------------------------------------------------------------------


def test_csv_of_a_real_run_has_every_step_once_and_every_value_of_the_log(
    config_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.csv"
    assert main(["export", str(config_run), "--csv", str(out)]) == 0
    assert "40 rows" in capsys.readouterr().err
    header, rows = read_csv(out)
    assert header[:4] == ROW_COLUMNS
    assert header[4:6] == ["lr", "step_time"]  # first-seen order: the step's own fields
    assert "val_loss" in header and "val_acc" in header
    assert "layer_grad_norms/net.1" in header
    cells, times = expected_cells(config_run)
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(cells) == list(range(1, 41))  # every step, once, in order
    start = next(e for e in log_events(config_run) if e["type"] == START)["time"]
    for row in rows:
        step = int(row["step"])
        expected = cells[step]
        # Every scalar of the log is in its step's row, exactly; nothing else is.
        got = {name: float(row[name]) for name in header[4:] if row[name] != ""}
        assert got.keys() == expected.keys(), step
        assert all(same(got[name], expected[name]) for name in got), step
        assert float(row["time"]) == times[step]
        assert float(row["elapsed"]) == pytest.approx(times[step] - start, abs=1e-6)
    assert {int(r["step"]) for r in rows if r["val_loss"]} == {10, 20, 30, 40}


def test_csv_of_a_script_keeps_its_metrics_their_steps_nan_inf_and_any_name(
    script_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "script.csv"
    assert main(["export", str(script_run), "--csv", str(out)]) == 0
    header, rows = read_csv(out)
    assert HOSTILE in header  # quoted by csv, read back as it was logged
    assert "metrics/loss" in header and "loss" in header
    by_step = {int(row["step"]): row for row in rows}
    assert len(by_step) == len(rows) == 31  # step 0 (bleu alone) and steps 1..30
    assert by_step[0]["bleu"] == "0.5" and by_step[0]["loss"] == ""  # no step event there
    assert [float(by_step[s]["bleu"]) for s in (10, 20, 30)] == [10.0, 20.0, 30.0]
    assert by_step[20]["metrics/loss"] == "0.2" and by_step[20]["loss"] != ""
    assert by_step[15]["bleu"] == "nan" and math.isnan(float(by_step[15]["bleu"]))
    assert by_step[15]["gap"] == "inf" and by_step[15]["floor"] == "-inf"
    assert float(by_step[20][HOSTILE]) == 2.5
    cells, _ = expected_cells(script_run)
    for step, expected in cells.items():
        row = by_step[step]
        assert all(same(float(row[name]), value) for name, value in expected.items())


def test_a_damaged_log_exports_the_rest_and_says_what_it_skipped(
    config_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "damaged"
    run_dir.mkdir()
    lines = (config_run / "events.jsonl").read_bytes().splitlines(keepends=True)
    lines.insert(5, b"\x00\x01 not json\n")
    lines.insert(20, b'{"type": "step", "step": 1\n')  # cut short
    lines.insert(30, b"[1, 2, 3]\n")  # JSON, not an event
    torn = b'{"type":"step","step":41,"loss":0.1'  # a writer killed mid-line
    (run_dir / "events.jsonl").write_bytes(b"".join(lines) + torn)
    out = tmp_path / "damaged.csv"
    assert main(["export", str(run_dir), "--csv", str(out)]) == 0
    err = capsys.readouterr().err
    assert "3 damaged lines skipped" in err
    _, rows = read_csv(out)
    assert [int(row["step"]) for row in rows] == list(range(1, 41))  # not the torn 41


def test_a_late_metric_joins_its_step_and_a_rewind_keeps_both_stretches(
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / "synthetic"
    run_dir.mkdir()
    events: list[dict[str, Any]] = [{"type": START, "time": 100.0, "seq": 1}]
    events += [{"type": STEP, "step": s, "time": 100.0 + s, "loss": 1.0 / s} for s in (1, 2, 3)]
    events += [{"type": STEP, "step": s, "time": 100.0 + s, "loss": 1.0} for s in range(4, 40)]
    events.append({"type": METRICS, "step": 2, "time": 140.0, "late": 7.0})  # 37 steps late
    # A recover: back to step 30, then on to 45.
    events += [{"type": STEP, "step": s, "time": 200.0 + s, "loss": 2.0} for s in range(30, 46)]
    events.append({"type": METRICS, "step": 500, "time": 300.0, "ahead": 1.0})
    write_log(run_dir, events)
    out = tmp_path / "synthetic.csv"
    assert main(["export", str(run_dir), "--csv", str(out)]) == 0
    _, rows = read_csv(out)
    steps = [int(row["step"]) for row in rows]
    assert steps == [*range(1, 40), *range(30, 46), 500]
    assert rows[1]["late"] == "7.0" and rows[1]["loss"] == "0.5"
    assert [row["loss"] for row in rows[39:]][:2] == ["2.0", "2.0"]  # the second stretch
    assert WINDOW_STEPS > 37  # the late metric was within the window


def test_only_the_logs_own_rank_is_exported_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    events: list[dict[str, Any]] = [{"type": START, "time": 1.0, "rank": 0}]
    for s in range(1, 6):
        events.append({"type": STEP, "step": s, "time": 1.0 + s, "loss": 1.0, "rank": 0})
        events.append({"type": STEP, "step": s, "time": 1.0 + s, "loss": 9.0, "rank": 1})
    write_log(run_dir, events)
    out = tmp_path / "job.csv"
    assert main(["export", str(run_dir), "--csv", str(out)]) == 0
    assert "5 events of other ranks than 0 left out" in capsys.readouterr().err
    assert [row["loss"] for row in read_csv(out)[1]] == ["1.0"] * 5
    assert main(["export", str(run_dir), "--csv", str(out), "--rank", "1", "--force"]) == 0
    assert [row["loss"] for row in read_csv(out)[1]] == ["9.0"] * 5


def write_log(run_dir: Path, events: list[dict[str, Any]]) -> None:
    with (run_dir / "events.jsonl").open("wb") as file:
        for seq, event in enumerate(events, start=1):
            file.write(encode_event({"seq": seq, **event}) + b"\n")


# -- TensorBoard ----------------------------------------------------------------------------


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar in the event files of `directory`, read by TensorBoard's own reader:
    tag -> [(step, wall_time, value)]."""
    from tensorboard.backend.event_processing import plugin_event_accumulator as pea
    from tensorboard.util import tensor_util

    accumulator = pea.EventAccumulator(str(directory), size_guidance={pea.TENSORS: 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()[pea.TENSORS]:
        assert accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"
        scalars[tag] = [
            (e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto).item()))
            for e in accumulator.Tensors(tag)
        ]
    return scalars


def float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


@pytest.mark.parametrize("which", ["config", "script"])
def test_tensorboard_reads_back_every_scalar_at_its_step_and_time(
    which: str, config_run: Path, script_run: Path, tmp_path: Path
) -> None:
    run_dir = config_run if which == "config" else script_run
    assert main(["export", str(run_dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    scalars = tensorboard_scalars(tmp_path / "tb" / run_dir.name)
    expected: dict[str, list[tuple[int, float, float]]] = {}
    for event in scalar_events(run_dir):
        for name, value in scalars_of(event).items():
            expected.setdefault(name, []).append((event["step"], event["time"], value))
    assert scalars.keys() == expected.keys()
    for tag, points in expected.items():
        got = scalars[tag]
        assert [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in points], tag
        assert all(same(g, float32(v)) for (_, _, g), (_, _, v) in zip(got, points, strict=True))
    if which == "script":
        assert math.isnan(dict((s, v) for s, _, v in scalars["bleu"])[15])
        assert scalars["gap"][0][2] == math.inf and scalars["floor"][0][2] == -math.inf
        assert scalars["bleu"][0][:1] == (0,) and HOSTILE in scalars


def test_an_earlier_tensorboard_export_is_kept_unless_forced(
    script_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "tb"
    assert main(["export", str(script_run), "--tensorboard", str(target)]) == 0
    files = sorted((target / script_run.name).iterdir())
    assert main(["export", str(script_run), "--tensorboard", str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted((target / script_run.name).iterdir()) == files
    assert main(["export", str(script_run), "--tensorboard", str(target), "--force"]) == 0
    replaced = sorted((target / script_run.name).iterdir())
    assert len(replaced) == 1 and replaced != files  # one export, not two overlaid


def test_checksums_are_tensorboards(tmp_path: Path) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    strings = [os.urandom(n) for n in (0, 1, 7, 8, 100, 1000, 3000)] + [b"123456789"]
    assert crc32c_many([b"123456789"]) == [0xE3069283]  # the CRC-32C check value
    assert [masked(c) for c in crc32c_many(strings)] == [masked_crc32c(s) for s in strings]


def test_without_the_tensorboard_package_the_extra_is_named(
    script_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto", None)
    assert main(["export", str(script_run), "--tensorboard", str(tmp_path / "tb")]) == 2
    assert 'pip install "tuimon[tensorboard]"' in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()


# -- streaming ------------------------------------------------------------------------------


def test_export_streams_a_long_log_in_bounded_memory(tmp_path: Path) -> None:
    """1.2e4 steps of 25 scalars to CSV and TensorBoard at once, under 8 MiB at its peak
    (5 MiB measured: a window of 1024 rows, a batch of records, the file buffers), however
    long the log. Its rows held in memory (as the csv module reads them back) take over
    twice that (21 MiB), and a longer log more: an export that held them would fail."""
    steps = 12_000
    run_dir = tmp_path / "long"
    run_dir.mkdir()
    layers = {f"layer{i}": 0.125 * i for i in range(16)}
    with (run_dir / "events.jsonl").open("wb") as file:
        file.write(encode_event({"type": START, "time": 0.0, "seq": 1}) + b"\n")
        for s in range(1, steps + 1):
            step = {"type": STEP, "step": s, "epoch": s // 1000, "time": s * 0.01, "seq": s}
            step.update(loss=1 / s, lr=1e-3, grad_norm=s % 7 + 0.5, step_time=0.01)
            step.update(data_time=0.001, samples=32, samples_per_s=3200.0 + s)
            step.update(layer_grad_norms=layers, update_ratio=1e-3 / s)
            file.write(encode_event(step) + b"\n")
            if not s % 100:
                metric = {"type": METRICS, "step": s, "time": s * 0.01, "val_loss": 0.1}
                file.write(encode_event(metric) + b"\n")
    out = tmp_path / "long.csv"
    from tuimon.export.tensorboard_export import load_protos

    load_protos()  # imported before measuring: modules are not the export's memory
    tracemalloc.start()
    try:
        code = export_command([str(run_dir), "--csv", str(out), "--tensorboard", str(tmp_path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0
    tracemalloc.start()  # what the rows cost when held: as the csv module reads them
    try:
        with out.open(newline="") as file:
            lines = list(csv.reader(file))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(lines) == steps + 1 and len(lines[0]) == 4 + 25
    assert held > 2 * 8 * 2**20, f"rows held: {held / 2**20:.1f} MiB"
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# -- where outputs go -----------------------------------------------------------------------


def test_an_existing_file_or_a_symlink_is_never_written_through(
    script_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    existing = tmp_path / "existing.csv"
    existing.write_text("mine")
    link = tmp_path / "link.csv"
    link.symlink_to(victim)
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "would-be-created.csv")
    for target in (existing, link, dangling):
        assert main(["export", str(script_run), "--csv", str(target)]) == 2
        assert "exists: --force replaces it" in capsys.readouterr().err
    assert existing.read_text() == "mine" and victim.read_text() == "keep me"
    assert not (tmp_path / "would-be-created.csv").exists()
    # --force replaces the link itself, never what it points at.
    assert main(["export", str(script_run), "--csv", str(link), "--force"]) == 0
    assert not link.is_symlink() and link.read_text().startswith("step,")
    assert victim.read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tuimon-tmp-")]


def test_the_default_csv_is_named_after_the_run_here(
    script_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(script_run), "--csv"]) == 0
    assert (tmp_path / f"{script_run.name}.csv").read_text().startswith("step,epoch,time")


def test_usage_errors_exit_2_and_say_what_is_wrong(
    script_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(script_run)]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--csv"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    out = tmp_path / "no-such-dir" / "x.csv"
    assert main(["export", str(script_run), "--csv", str(out)]) == 2
    assert "no such directory" in capsys.readouterr().err
    log = script_run / "events.jsonl"
    before = log.read_bytes()
    assert main(["export", str(script_run), "--csv", str(log), "--force"]) == 2
    assert "is the run's log" in capsys.readouterr().err
    assert log.read_bytes() == before


# -- the terminal ---------------------------------------------------------------------------


@contextlib.contextmanager
def on_a_terminal(args: list[str], *, stdout_too: bool) -> Iterator[list[bytes]]:
    """Run `tuimon export ARGS` with stderr (and stdout) on a pseudo-terminal: what it
    drew there is yielded when it has exited."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuimon", "export", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave if stdout_too else subprocess.DEVNULL,
        stderr=slave,
        cwd=REPO,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break  # EIO: every writer closed the terminal
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=120) == 0, b"".join(chunks)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    yield chunks


def test_a_csv_on_a_terminal_shows_names_without_their_escape_codes(
    script_run: Path,
) -> None:
    with on_a_terminal([str(script_run), "--csv", "-"], stdout_too=True) as chunks:
        shown = b"".join(chunks)
    assert b"step,epoch,time,elapsed" in shown and b"pwned" in shown
    assert b"\x1b" not in shown and b"\x07" not in shown


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_only_when_asked(
    config_run: Path, tmp_path: Path
) -> None:
    with on_a_terminal(
        [str(config_run), "--csv", str(tmp_path / "a.csv")], stdout_too=False
    ) as chunks:
        drawn = b"".join(chunks).decode()
    assert "█" in drawn and "100%" in drawn and "\x1b" not in drawn
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuimon",
            "export",
            str(config_run),
            "--csv",
            str(tmp_path / "b.csv"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert piped.returncode == 0 and "%" not in piped.stderr  # not a terminal: silent
    asked = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuimon",
            "export",
            str(config_run),
            "--csv",
            str(tmp_path / "c.csv"),
            "--progress",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert asked.returncode == 0 and "100%" in asked.stderr
    assert "\r" not in asked.stderr and "\x1b" not in asked.stderr and "█" not in asked.stderr
