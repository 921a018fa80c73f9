"""The event log: ordered, flushed promptly, tolerant of a torn last line and bad values."""

from __future__ import annotations

import json
import threading
import time

from tuimon.run.event_codec import encode_event
from tuimon.run.event_log import EventLog
from tuimon.run.log_reader import read_events


def test_events_are_numbered_written_and_fanned_out(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    seen = []
    log.subscribe(seen.append)
    for i in range(100):
        log.emit({"type": "step", "step": i + 1})
    log.close()
    events = list(read_events(tmp_path / "events.jsonl"))
    assert [e["seq"] for e in events] == list(range(1, 101))
    assert [e["step"] for e in events] == list(range(1, 101))
    assert seen == events
    assert all(isinstance(e["time"], float) for e in events)


def test_written_within_a_second_without_close(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", flush_interval=0.2)
    written = threading.Event()
    log.subscribe(lambda event: written.set())  # called after the write and flush
    log.emit({"type": "step", "step": 1})
    assert written.wait(timeout=1.0)
    # Another reader (the UI, `tail -f`) sees it on disk now.
    assert [e["step"] for e in read_events(tmp_path / "events.jsonl")] == [1]
    log.close()


def test_subscribe_returns_the_last_seq_already_on_disk(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    done = threading.Event()
    log.subscribe(lambda e: e["step"] == 5 and done.set())
    for i in range(5):
        log.emit({"type": "step", "step": i + 1})
    assert done.wait(timeout=5)
    later = []
    seq = log.subscribe(later.append)
    log.emit({"type": "step", "step": 6})
    log.close()
    on_disk = [e["seq"] for e in read_events(tmp_path / "events.jsonl")]
    assert seq == 5 and on_disk[:seq] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in later] == [6]


def test_non_finite_values_and_unserializable_events(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.emit({"type": "step", "loss": float("nan"), "grad_norm": float("inf")})
    log.emit({"type": "weird", "value": object(), "circular": None})
    bad: dict = {"type": "bad"}
    bad["self"] = bad
    log.emit(bad)
    log.emit({"type": "after"})
    log.close()
    events = list(read_events(tmp_path / "events.jsonl"))
    assert events[0]["loss"] != events[0]["loss"] and events[0]["grad_norm"] == float("inf")
    assert events[1]["value"].startswith("<object")  # written as its str()
    assert events[2]["type"] == "log_error" and events[2]["seq"] == 3
    assert events[3]["type"] == "after"


def test_a_failing_listener_does_not_stop_the_log(tmp_path, capsys):
    log = EventLog(tmp_path / "events.jsonl")

    def broken(event):
        raise RuntimeError("listener bug")

    log.subscribe(broken)
    log.emit({"type": "a"})
    log.emit({"type": "b"})
    log.close()
    assert [e["type"] for e in read_events(tmp_path / "events.jsonl")] == ["a", "b"]
    assert "listener bug" in capsys.readouterr().err


def test_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"type": "start"}) + "\n" + '{"type": "st')
    assert [e["type"] for e in read_events(path)] == ["start"]


def test_emit_does_not_wait_for_a_slow_listener(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    release = threading.Event()
    log.subscribe(lambda e: release.wait(5))
    started = time.perf_counter()
    for i in range(1000):
        log.emit({"type": "step", "step": i})
    elapsed = time.perf_counter() - started
    release.set()
    log.close()
    assert elapsed < 0.5
    assert len(list(read_events(tmp_path / "events.jsonl"))) == 1000


def test_flush_puts_what_listeners_emit_before_what_comes_next(tmp_path):
    """The doctor answers steps on the writer thread; a flush() before `end` puts its
    alerts before `end`, and alerts the last batch causes after close() are kept too."""
    log = EventLog(tmp_path / "events.jsonl")

    def doctor(event: dict) -> None:
        if event["type"] == "step":
            log.emit({"type": "alert", "step": event["step"]})

    log.subscribe(doctor)
    for step in range(1, 6):
        log.emit({"type": "step", "step": step})
    assert log.flush()
    log.emit({"type": "end"})
    log.emit({"type": "step", "step": 6})  # its alert is emitted while the log closes
    log.close()
    kinds = [(e["type"], e.get("step")) for e in read_events(tmp_path / "events.jsonl")]
    assert kinds[-3:] == [("end", None), ("step", 6), ("alert", 6)]
    assert kinds.index(("end", None)) > kinds.index(("alert", 5))
    assert [e["seq"] for e in read_events(tmp_path / "events.jsonl")] == list(range(1, 14))


def test_lines_are_the_codecs_whatever_the_values(tmp_path):
    """The writer's fast path writes exactly what event_codec.encode_event does: orjson's
    UTF-8 for plain events, json's NaN/Infinity tokens, big ints, and a "null" in a text."""
    events = [
        {"type": "start", "name": "réseau-β", "argv": ["train.py", "--lr", "0.1"]},
        {"type": "step", "step": 1, "loss": 0.25, "samples": None},
        {"type": "step", "step": 2, "loss": float("nan"), "layers": {"fc": float("-inf")}},
        {"type": "message", "text": "null pointer? no: null is fine", "level": "info"},
        {"type": "metrics", "step": 3, "huge": 2**70, "when": object()},
    ]
    log = EventLog(tmp_path / "events.jsonl")
    for event in events:
        log.emit(event)
    log.close()
    assert (tmp_path / "events.jsonl").read_bytes() == b"".join(
        encode_event(event) + b"\n" for event in events
    )
    assert "réseau-β".encode() in (tmp_path / "events.jsonl").read_bytes()
    back = list(read_events(tmp_path / "events.jsonl"))
    assert back[2]["loss"] != back[2]["loss"] and back[2]["layers"]["fc"] == float("-inf")
    assert back[4]["huge"] == 2**70 and back[1]["samples"] is None
