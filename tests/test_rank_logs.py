"""A job's other ranks' logs (`ranks/<N>/events.jsonl`), read into one summary per rank:
streamed, damaged lines skipped, and no symlink followed out of the run directory."""

from __future__ import annotations

import math
import os
import tracemalloc
from pathlib import Path
from typing import Any

from tuimon.run.event_codec import encode_event
from tuimon.run.rank_logs import rank_log_paths, read_rank_log_details, read_rank_logs
from tuimon.run.run_dir import RANKS_DIR


def write_log(path: Path, events: list[dict[str, Any]], damaged: bytes | None = None) -> Path:
    """A rank's log as the event log writes it (the real codec); `damaged` goes after the
    start line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [encode_event(event) for event in events]
    if damaged is not None:
        lines.insert(1, damaged)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def rank_events(
    rank: int,
    steps: int,
    *,
    nan_at: tuple[int, ...] = (),
    end: dict[str, Any] | None = None,
    host: str = "node-b",
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "start",
            "rank": rank,
            "host": host,
            "pid": 4000 + rank,
            "device": {"type": "cuda", "index": rank},
        }
    ]
    for n in range(1, steps + 1):
        loss = math.nan if n in nan_at else 1.0 / n
        events.append(
            {
                "type": "step",
                "rank": rank,
                "step": n,
                "loss": loss,
                "step_time": 0.1,
                "data_time": 0.02,
                "samples_per_s": 320.0,
            }
        )
    if end is not None:
        events.append({"type": "end", "rank": rank, **end})
    return events


def rank_log(run_dir: Path, rank: int | str) -> Path:
    return run_dir / RANKS_DIR / str(rank) / "events.jsonl"


def test_each_rank_is_summed_up_from_its_own_log(tmp_path):
    run = tmp_path / "job"
    write_log(rank_log(run, 1), rank_events(1, 40, end={"status": "completed", "step": 40}))
    traceback = "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA error: bad"
    write_log(
        rank_log(run, 2),
        rank_events(2, 57, nan_at=(30, 57), end={"status": "failed", "error": traceback}),
    )
    write_log(rank_log(run, 3), rank_events(3, 12))  # killed: no end

    one, two, three = read_rank_logs(run)

    assert one["rank"] == 1 and one["host"] == "node-b" and one["pid"] == 4001
    assert one["step"] == 40 and one["status"] == "completed" and one["nonfinite_step"] is None
    assert one["device"] == "cuda:1" and one["step_time"] == 0.1 and one["data_time"] == 0.02
    assert "error" not in one
    assert two["status"] == "failed" and two["step"] == 57 and two["nonfinite_step"] == 57
    assert two["error"].splitlines()[-1] == "RuntimeError: CUDA error: bad"
    assert three["step"] == 12 and three["status"] == "running" and three["pid"] == 4003

    details = {log.rank: log for log in read_rank_log_details(run)}
    assert details[2].nonfinite_steps == 2 and details[2].first_nonfinite_step == 30


def test_a_damaged_line_is_skipped_and_counted(tmp_path):
    run = tmp_path / "job"
    write_log(rank_log(run, 1), rank_events(1, 5), damaged=b'{"type": "step", "step": 3, "lo')
    [summary] = read_rank_logs(run)
    assert summary["step"] == 5 and summary["host"] == "node-b"
    [log] = read_rank_log_details(run)
    assert log.skipped == 1 and log.damage == "1 damaged line skipped (line 2)"


def test_only_rank_numbers_that_hold_a_log_are_ranks(tmp_path):
    run = tmp_path / "job"
    for name in ("1", "10", "x", "03", "+4", "-5"):
        write_log(rank_log(run, name), rank_events(1, 2))
    (run / RANKS_DIR / "7").mkdir()  # no log (yet): no rank
    (run / RANKS_DIR / "8").write_text("")  # a file, not a rank's directory
    assert list(rank_log_paths(run)) == [1, 10]
    assert rank_log_paths(tmp_path / "not-a-job") == {}


def test_no_symlink_is_followed_out_of_the_run(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_log(elsewhere / "events.jsonl", rank_events(9, 3, host="not-this-job"))
    run = tmp_path / "job"
    write_log(rank_log(run, 1), rank_events(1, 4))
    (run / RANKS_DIR / "2").symlink_to(elsewhere, target_is_directory=True)
    (run / RANKS_DIR / "3").mkdir()
    rank_log(run, 3).symlink_to(elsewhere / "events.jsonl")

    assert list(rank_log_paths(run)) == [1]
    assert [s["host"] for s in read_rank_logs(run)] == ["node-b"]

    # The whole ranks/ directory a link: nothing under it is read.
    linked = tmp_path / "linked-job"
    linked.mkdir()
    os.symlink(run / RANKS_DIR, linked / RANKS_DIR)
    assert rank_log_paths(linked) == {} and read_rank_logs(linked) == []


def test_a_long_log_is_streamed_not_held(tmp_path):
    run = tmp_path / "job"
    steps = 30_000
    path = write_log(rank_log(run, 1), rank_events(1, steps, nan_at=(steps // 2,)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        [summary] = read_rank_logs(run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["step"] == steps and summary["nonfinite_step"] == steps // 2
    # Holding the events would take several times the file's size; a stream, a few lines.
    assert peak < size / 4, (peak, size)
