"""A reader that follows a growing log goes on from `end_offset`: never inside a torn last
line, past damaged and over-long lines, so each event is read exactly once."""

from __future__ import annotations

from pathlib import Path

from tuimon.run.log_reader import LogReader
from tuimon.ui.run_colors import PALETTE, run_color, run_colors


def test_end_offset_stops_before_a_torn_line_and_goes_on_from_there(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"type":"a"}\nnot json\n' + b"x" * 50 + b'\n{"type":"b"}\n{"type":"c"')
    reader = LogReader(log, max_line=20)
    assert [e["type"] for e in reader] == ["a", "b"]
    assert reader.torn and reader.skipped == 2
    assert log.read_bytes()[reader.end_offset :] == b'{"type":"c"'
    with log.open("ab") as file:
        file.write(b',"seq":3}\n{"type":"d"}\n')
    follow = LogReader(log, offset=reader.end_offset)
    assert [e["type"] for e in follow] == ["c", "d"]
    assert follow.end_offset == log.stat().st_size and not follow.torn


def test_end_offset_of_a_log_ending_in_an_overlong_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    log.write_bytes(b'{"type":"a"}\n' + b"y" * 100)
    reader = LogReader(log, max_line=20)
    assert [e["type"] for e in reader] == ["a"]
    assert reader.torn and reader.end_offset == len(b'{"type":"a"}\n')


def test_a_run_keeps_its_colour_and_runs_shown_together_never_share_one() -> None:
    assert run_color("runs/vgg-20261203-101500") == run_color("/elsewhere/vgg-20261203-101500")
    names = [f"run-{i}" for i in range(len(PALETTE))]
    assert sorted(run_colors(names)) == sorted(PALETTE)  # all distinct while there is room
    assert run_colors(names)[0] == run_color(names[0])  # the first keeps its own
