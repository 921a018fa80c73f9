"""`state.json`: the worker's state of a finished run, so a replay need not re-read the log
(issue 8, item 14), and never a way to make a replay wrong, crash or hang."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import torch
from torch import nn

import tuimon
from tuimon.run import replay_cache
from tuimon.run.event_codec import decode_line, encode_event
from tuimon.run.replay_cache import load_cached_state, load_replay_state, write_state_cache
from tuimon.run.run_dir import open_run_dir
from tuimon.run.run_state import RunState, load_run_state
from tuimon.ui import connection
from tuimon.ui.app import TuimonApp
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import until


def finished_run(tmp_path: Path) -> Path:
    """A real run of a tiny model: steps, metrics (one NaN), a note; its run directory."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    with tuimon.Monitor(model, opt, run_dir=tmp_path / "run", quiet=True) as mon:
        for step in range(1, 61):
            x = torch.randn(8, 4, generator=generator)
            y = torch.randint(0, 3, (8,), generator=generator)
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            mon.step(loss, inputs=x, targets=y, outputs=out)
            if step % 20 == 0:
                mon.log(val_loss=math.nan if step == 40 else 1.0 / step, val_acc=0.5)
        mon.note("halfway there")
    return tmp_path / "run"


def same(a: Any, b: Any, where: str = "") -> None:
    """Equal JSON-like values, NaN equal to NaN (and tuples to lists)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            same(a[key], b[key], f"{where}/{key}")
        return
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
        return
    assert type(a) is type(b) and a == b, (where, a, b)


def log_snapshot(run: Path) -> dict[str, Any]:
    return load_run_state(run / "events.jsonl").snapshot()


def cached_snapshot(run: Path) -> dict[str, Any]:
    state = load_cached_state(run)
    assert state is not None, "the cache was not used"
    return state.snapshot()


def test_a_finished_run_writes_a_private_cache_that_gives_what_its_log_gives(tmp_path):
    run = finished_run(tmp_path)
    cache = run / "state.json"
    assert cache.is_file() and cache.stat().st_mode & 0o777 == 0o600
    document = decode_line(cache.read_bytes())
    assert document["log_bytes"] == (run / "events.jsonl").stat().st_size
    last = (run / "events.jsonl").read_bytes().splitlines()[-1]
    assert document["log_seq"] == orjson.loads(last)["seq"]
    from_log = load_run_state(run / "events.jsonl")
    cached = load_cached_state(run)
    assert cached is not None
    same(cached.snapshot(), from_log.snapshot())
    assert cached.counts == from_log.counts
    assert math.isnan(cached.series["metrics/val_loss"].column("last")[1])
    assert cached.end is not None and cached.end["status"] == "completed"
    # A run directory holding it is still a run directory of tuimon's.
    assert open_run_dir(run) == run.resolve()


def test_a_long_run_with_non_finite_values_round_trips_exactly(tmp_path):
    """Past 2 x capacity steps the buckets merge; NaN and ±Inf (which orjson would write
    as null) keep their identity through the cache."""
    live = RunState()
    with (tmp_path / "events.jsonl").open("wb") as log:
        start = {"type": "start", "seq": 1, "time": 1.0, "name": "long", "total_steps": 6000}
        for event in [start] + [
            {
                "type": "step",
                "seq": step + 1,
                "time": 1.0 + step,
                "step": step,
                "loss": [math.inf, -math.inf, math.nan][step % 3] if step % 101 == 0 else 1 / step,
                "grad_norm": math.nan if step % 7 == 0 else float(step),
                "lr": 0.1,
            }
            for step in range(1, 6001)
        ]:
            log.write(encode_event(event) + b"\n")
            live.apply(event)
    assert write_state_cache(tmp_path, live, tmp_path / "events.jsonl")
    cached = cached_snapshot(tmp_path)
    same(cached, live.snapshot())
    same(cached, log_snapshot(tmp_path))
    assert cached["series"]["loss"]["span"] > 1 and cached["series"]["loss"]["non_finite"] == 59


def test_events_written_after_the_cache_are_applied_on_top(tmp_path):
    run = finished_run(tmp_path)
    log = run / "events.jsonl"
    seq = orjson.loads(log.read_bytes().splitlines()[-1])["seq"]
    more = [
        {"type": "step", "step": 61 + i, "loss": 0.25, "lr": 0.01, "time": 2e9 + i}
        for i in range(5)
    ] + [{"type": "message", "level": "warning", "text": "appended", "time": 2e9 + 9}]
    with log.open("ab") as file:
        for i, event in enumerate(more, start=1):
            file.write(encode_event({**event, "seq": seq + i}) + b"\n")
        file.write(b"not json\n")
    cached = cached_snapshot(run)
    same(cached, log_snapshot(run))
    assert cached["last_step"]["step"] == 65 and cached["messages"][-1]["text"] == "appended"
    assert cached["skipped_lines"] == 1
    lines = len(log.read_bytes().splitlines())
    assert cached["skipped_line_numbers"] == [lines]  # numbered from the log's start


def edit_cache(run: Path, **fields: Any) -> None:
    document = decode_line((run / "state.json").read_bytes())
    document.update(fields)
    (run / "state.json").write_bytes(encode_event(document))


def test_a_cache_that_does_not_stand_for_the_log_is_ignored(tmp_path):
    run = finished_run(tmp_path)
    log = run / "events.jsonl"
    size = log.stat().st_size
    expected = log_snapshot(run)
    bad_caches = {
        "beyond the log": lambda: edit_cache(run, log_bytes=size + 100),
        "mid-line": lambda: edit_cache(run, log_bytes=size - 5),
        "another event": lambda: edit_cache(run, log_seq=3),
        "another version": lambda: edit_cache(run, cache_version=99),
    }
    original = (run / "state.json").read_bytes()
    edit_cache(run)  # decoded and encoded again, unchanged: still used
    same(cached_snapshot(run), expected)
    for name, spoil in bad_caches.items():
        spoil()
        assert load_cached_state(run) is None, name
        same(load_replay_state(run).snapshot(), expected, name)
        (run / "state.json").write_bytes(original)
    # A truncated log (the run's last lines lost): the cache is ahead of it.
    log.write_bytes(log.read_bytes()[: size // 2].rsplit(b"\n", 1)[0] + b"\n")
    assert load_cached_state(run) is None
    same(load_replay_state(run).snapshot(), log_snapshot(run))


def test_a_damaged_or_crafted_cache_never_breaks_a_replay(tmp_path, monkeypatch):
    run = finished_run(tmp_path)
    expected = log_snapshot(run)
    cache = run / "state.json"
    original = cache.read_bytes()
    document = decode_line(original)
    snapshot = document["snapshot"]
    series = snapshot["series"]["loss"]
    crafted = [
        b"",
        b"\x00garbage\xff",
        original[: len(original) // 2],
        b"[" * 200_000 + b"]" * 200_000,  # orjson would crash the process on this
        b'{"format": "tuimon-state", "cache_version": 1}',
        b"\x80\x04\x95pickle",
        encode_event({**document, "snapshot": {**snapshot, "capacity": 10**12}}),
        encode_event({**document, "snapshot": {**snapshot, "start": {"total_steps": "abc"}}}),
        encode_event({**document, "snapshot": {**snapshot, "status": "exploded"}}),
        encode_event({**document, "snapshot": {**snapshot, "recent": [[1, 2]]}}),
        encode_event({**document, "counts": {"step": -1}}),
        encode_event(
            {
                **document,
                "snapshot": {
                    **snapshot,
                    "series": {"loss": {**series, "step": "not base64!", "span": 3}},
                },
            }
        ),
        encode_event({**document, "snapshot": {**snapshot, "messages": [{"text": "x" * 10**6}]}}),
    ]
    for number, content in enumerate(crafted):
        cache.write_bytes(content)
        assert load_cached_state(run) is None, number
        same(load_replay_state(run).snapshot(), expected, str(number))
    # A FIFO would block a reader for ever; a file over the size bound is not read.
    cache.unlink()
    os.mkfifo(cache)
    assert load_cached_state(run) is None
    cache.unlink()
    cache.write_bytes(original)
    assert load_cached_state(run) is not None
    monkeypatch.setattr(replay_cache, "MAX_CACHE_BYTES", len(original) - 1)
    assert load_cached_state(run) is None


def test_a_symlinked_cache_is_not_followed(tmp_path):
    run = finished_run(tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    os.replace(run / "state.json", elsewhere)
    (run / "state.json").symlink_to(elsewhere)
    assert load_cached_state(run) is None
    same(load_replay_state(run).snapshot(), log_snapshot(run))


async def test_a_replay_draws_the_cached_state(tmp_path, monkeypatch):
    run = finished_run(tmp_path)
    # A cache that tells itself apart from the log: the run's name in it is changed.
    state = load_run_state(run / "events.jsonl")
    state.start = {**(state.start or {}), "name": "drawn-from-the-cache"}
    assert write_state_cache(run, state, run / "events.jsonl")
    # The replay's state is read while the app ticks: its refresh timer waits for it.
    release = threading.Event()
    reading = connection.load_replay_state

    def slow_read(run_dir: Path):
        release.wait(30)
        return reading(run_dir)

    monkeypatch.setattr(connection, "load_replay_state", slow_read)
    app = TuimonApp(run, replay=True, fps=20)
    async with app.run_test(size=(160, 40)) as pilot:
        bar = app.query_one(StatusBar)
        await until(pilot, lambda: app.ticks_skipped >= 3)
        release.set()
        await until(pilot, lambda: "drawn-from-the-cache" in "".join(bar.plain_lines()))
        assert app.state.end is not None and app.state.step == 60


async def test_attaching_to_a_finished_run_draws_the_cached_state(tmp_path):
    run = finished_run(tmp_path)
    state = load_run_state(run / "events.jsonl")
    state.start = {**(state.start or {}), "name": "attached-from-the-cache"}
    assert write_state_cache(run, state, run / "events.jsonl")
    app = TuimonApp(run, fps=20)  # `tuimon attach`: no socket, the log has `end`
    async with app.run_test(size=(160, 40)) as pilot:
        bar = app.query_one(StatusBar)
        await until(pilot, lambda: "attached-from-the-cache" in "".join(bar.plain_lines()))
        assert app.connection_status == "ended" and app.state.step == 60
