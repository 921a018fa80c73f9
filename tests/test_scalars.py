"""Every scalar of a run under one name (run/scalars.py), and its history followed as the
log grows (run/scalar_history.py): what metrics, compare and export read."""

from __future__ import annotations

import math
from pathlib import Path

import orjson

from tuimon.run.scalar_history import MAX_SERIES, ScalarHistory
from tuimon.run.scalars import metric_scalars, step_scalars


def _write(log: Path, *events: dict, mode: str = "ab") -> None:
    with log.open(mode) as file:
        for event in events:
            file.write(orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def test_a_step_event_becomes_flat_scalars() -> None:
    event = {
        "type": "step",
        "step": 7,
        "epoch": 1,
        "time": 1.0,
        "seq": 9,
        "loss": 0.5,
        "lr": 0.1,
        "lrs": [0.1, 0.01, 0.001],
        "grad_norm": math.inf,
        "samples": 32,
        "layer_grad_norms": {"fc1": 0.3, "fc2": "n/a"},
        "my_extra": 3,
        "flag": True,
        "note": "text",
    }
    assert step_scalars(event) == {
        "loss": 0.5,
        "lr": 0.1,
        "lr/1": 0.01,
        "lr/2": 0.001,
        "grad_norm": math.inf,
        "samples": 32.0,
        "layer_grad_norms/fc1": 0.3,
        "my_extra": 3.0,
    }


def test_a_metric_named_like_a_step_field_is_kept_apart() -> None:
    event = {"type": "metrics", "step": 3, "time": 2.0, "seq": 4, "val_loss": 0.7, "loss": 9.0}
    assert metric_scalars(event) == {"val_loss": 0.7, "metrics/loss": 9.0}


def test_history_follows_the_log_reading_only_what_is_new(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    _write(log, {"type": "start", "time": 100.0, "seq": 1, "name": "r"}, mode="wb")
    _write(
        log,
        *(
            {"type": "step", "step": s, "epoch": 0, "time": 100.0 + s, "loss": 1 / s}
            for s in range(1, 11)
        ),
    )
    history = ScalarHistory(tmp_path)
    assert history.update()
    assert history.names() == ["loss"]
    read_to = history.offset
    assert read_to == log.stat().st_size
    assert not history.update()  # nothing new: nothing read
    # A metric at step 10, a torn line being written, then its end.
    _write(log, {"type": "metrics", "step": 10, "time": 111.0, "bleu": 31.5})
    with log.open("ab") as file:
        file.write(b'{"type":"step","step":11,"loss":0.0')
    assert history.update()
    assert history.names() == ["loss", "bleu"]
    bleu = history.series("bleu")
    assert bleu is not None and bleu.latest == 31.5
    assert list(bleu.column("step")) == [10.0] and list(bleu.column("time")) == [11.0]
    assert history.offset < log.stat().st_size  # not inside the torn line
    with log.open("ab") as file:
        file.write(b'5,"time":111.5}\n{"type":"end","status":"completed"}\n')
    assert history.update()
    loss = history.series("loss")
    assert loss is not None and loss.total == 11 and loss.latest == 0.05
    assert history.status == "completed"


def test_a_damaged_or_hostile_log_is_bounded(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"garbage\n")
    _write(log, {"type": "metrics", "step": 1, **{f"m{i}": i for i in range(MAX_SERIES + 50)}})
    _write(log, {"type": "step", "step": 2, "rank": 1, "loss": 5.0})  # another rank's
    history = ScalarHistory(tmp_path)
    history.update()
    assert history.skipped == 1
    assert len(history.names()) == MAX_SERIES
    assert history.series("loss") is None
