"""A run's state from its events, and the snapshot a worker hands to clients that attach."""

from __future__ import annotations

import json
import math

import pytest

from tuimon.run.run_state import RunState, load_run_state


def events(steps=50, start_time=1000.0):
    seq = iter(range(1, 10_000))
    out = [
        {
            "type": "start",
            "seq": next(seq),
            "time": start_time,
            "name": "demo",
            "total_steps": 100,
            "steps_per_epoch": 20,
            "settings": {"smoothing": 0.5},
        }
    ]
    for step in range(1, steps + 1):
        out.append(
            {
                "type": "step",
                "seq": next(seq),
                "time": start_time + step,
                "step": step,
                "epoch": (step - 1) // 20,
                "loss": 1.0 / step,
                "lr": 0.1,
                "grad_norm": 2.0,
                "step_time": 1.0,
                "data_time": 0.25,
                "samples": 32,
            }
        )
        if step % 10 == 0:
            out.append(
                {
                    "type": "metrics",
                    "seq": next(seq),
                    "time": start_time + step,
                    "step": step,
                    "val_loss": 0.5,
                    "val_acc": 0.8,
                }
            )
        if step % 7 == 0:
            out.append(
                {
                    "type": "system",
                    "seq": next(seq),
                    "time": start_time + step,
                    "host": {"cpu_percent": 50.0},
                    "gpus": [{"index": 0, "util": 90, "mem_used": 4, "mem_total": 8}],
                }
            )
    out.append(
        {
            "type": "control",
            "seq": next(seq),
            "time": start_time + steps,
            "command": "pause",
            "old": "running",
            "new": "paused",
            "step": steps,
        }
    )
    return out


def test_state_from_events():
    state = RunState()
    state.apply_many(events())
    assert state.name == "demo" and state.status == "paused" and state.step == 50
    assert state.series["loss"].total == 50 and state.series["lr/0"].latest == 0.1
    assert state.series["metrics/val_loss"].total == 5
    assert state.series["loss"].column("time")[-1] == 50.0  # elapsed since start
    assert state.series["loss"].column("epoch")[-1] == 2.5  # fractional: 50 / 20
    rates = state.rates()
    assert rates["samples_per_s"] == 32 and rates["data_wait_share"] == 0.25
    assert state.eta() == pytest.approx(50.0)
    assert list(state.gpu_history[0]["mem"]) == [50.0] * 7
    # Smoothing follows the run's own setting: 0.5, debiased.
    assert state.series["loss_ema"].latest == pytest.approx(
        _debiased([1.0 / s for s in range(1, 51)], 0.5)
    )


def _debiased(values, weight):
    biased = 0.0
    for value in values:
        biased = weight * biased + (1 - weight) * value
    return biased / (1 - weight ** len(values))


def test_snapshot_round_trips_through_json_and_skips_what_it_holds():
    all_events = events(60)
    state = RunState()
    state.apply_many(all_events[:40])
    wire = json.loads(json.dumps(state.snapshot()))
    again = RunState.from_snapshot(wire)
    assert again.seq == state.seq and again.step == state.step
    # Live events arrive from an earlier seq than the snapshot's: the overlap is skipped.
    again.apply_many(all_events[30:])
    reference = RunState()
    reference.apply_many(all_events)
    assert again.series["loss"].total == reference.series["loss"].total == 60
    for name in ("loss", "loss_ema", "grad_norm", "lr/0"):
        assert again.series[name].column("hi").tolist() == pytest.approx(
            reference.series[name].column("hi").tolist()
        )
    assert again.status == reference.status == "paused"


def test_end_failed_and_non_finite_loss():
    state = RunState()
    state.apply_many(
        [
            *events(5),
            {"type": "step", "seq": 100, "step": 6, "loss": math.nan, "time": 1006},
            {"type": "end", "seq": 101, "status": "failed", "error": "Traceback...", "elapsed": 6},
        ]
    )
    assert state.status == "failed" and state.end["error"] == "Traceback..."
    assert state.series["loss"].non_finite == 1
    assert state.eta() is None and state.elapsed() == 6


def test_load_from_a_log_file(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events(30)))
    state = load_run_state(path)
    assert state.step == 30 and state.series["loss"].total == 30


def test_counts_keep_growing_when_the_kept_items_are_capped():
    from tuimon.run.run_state import MAX_ITEMS

    state = RunState()
    state.apply_many(events(steps=2))
    extra = [
        {"type": "alert", "rule": "stall", "step": i, "message": f"alert {i}"}
        for i in range(MAX_ITEMS + 5)
    ]
    state.apply_many(extra)
    assert len(state.alerts) == MAX_ITEMS
    assert state.counts["alert"] == MAX_ITEMS + 5
    assert state.counts["step"] == 2
    state.apply({"type": "alert", "rule": "nan_loss", "step": 9999, "message": "newest"})
    assert state.counts["alert"] == MAX_ITEMS + 6
    restored = RunState.from_snapshot(json.loads(json.dumps(state.snapshot())))
    assert restored.counts["alert"] == MAX_ITEMS  # what it holds: history is not news


def test_points_folded_in_bulk_make_the_buckets_appends_make():
    """load_run_state folds a log's step points into the series with numpy: the buckets
    must be exactly those of one `append` per point, merges, NaNs and infinities included."""
    import random

    import numpy as np

    from tuimon.run.step_columns import SeriesColumns
    from tuimon.series.bucketed import BucketSeries

    rng = random.Random(8)
    for _ in range(40):
        capacity, count = rng.choice([2, 3, 4, 16]), rng.randint(0, 700)
        one_by_one, bulk, columns = BucketSeries(capacity), None, SeriesColumns()
        for i in range(count):
            value = rng.choice([rng.random(), rng.random(), -rng.random(), math.nan, math.inf])
            one_by_one.append(i, i / 10, i / 7, value)
            columns.add(i, i / 10, i / 7, value)
            if rng.random() < 0.03:  # folds at arbitrary points, partial buckets included
                bulk = columns.fold_into(bulk, capacity)
        bulk = columns.fold_into(bulk, capacity)
        expected, got = one_by_one.to_dict(), bulk.to_dict()
        for key, value in expected.items():
            assert np.array_equal(np.asarray(value), np.asarray(got[key]), equal_nan=True), key


def test_a_log_loads_into_the_state_its_events_make_one_by_one(tmp_path):
    """The bulk path of load_run_state and apply_many (what a live client does) agree on
    everything a snapshot holds, over a run long enough for the buckets to merge."""
    log = events(steps=7000)
    for event in log:
        step = event.get("step", 0)
        if event["type"] != "step":
            continue
        if step % 7 == 0:
            event["loss"] = math.nan
        if step % 3 == 0:
            del event["grad_norm"]
        if step % 50 == 0:
            event["update_ratio"] = 1e-3
            event["layer_grad_norms"] = {"fc": float(step)}
        if step > 4000:
            event["lrs"] = [0.1, 0.01, 0.001]
    log.insert(100, {"type": "metrics", "step": 99, "val_loss": 1.5})
    log.insert(200, {"type": "system", "host": {"cpu_percent": 50.0}, "gpus": []})
    log.insert(300, {"type": "message", "text": "hello", "stop_ignored": True})
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in log))
    loaded = load_run_state(path, fold_every=1000)
    live = RunState()
    live.apply_many(log)
    assert loaded.series["loss"].span > 1  # merged at least once
    expected, got = live.snapshot(), loaded.snapshot()
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
