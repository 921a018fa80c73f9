"""The event log's writer batches: steps wait for its timer (or a flush), so a fast
training loop hands it the GIL once per interval, not once per batch of steps (issue 8,
item 15); a single event (a command's outcome, an alert) wakes it at once."""

from __future__ import annotations

import threading

from tuimon.run.event_log import LISTENER_SLICE, EventLog
from tuimon.run.log_reader import read_events


def test_events_emitted_between_wakes_are_one_write_and_listener_slices(tmp_path):
    # A timer that never fires within the test: only flush() wakes the writer.
    log = EventLog(tmp_path / "events.jsonl", flush_interval=3600)
    writes = []
    real_write = log._file.write
    log._file.write = lambda data: writes.append(bytes(data)) or real_write(data)  # type: ignore[method-assign]
    batches: list[list[dict]] = []
    singles: list[dict] = []
    log.subscribe(batches.append, batches=True)
    log.subscribe(singles.append)
    for step in range(1, 201):  # as the Monitor logs steps: in batches, here of one
        log.emit_many([{"type": "step", "step": step}])
    assert log.flush()
    assert len(writes) == 1  # one write() for all 200, not one per wake-up of the writer
    assert [len(b) for b in batches] == [LISTENER_SLICE] * 3 + [200 - 3 * LISTENER_SLICE]
    assert [e for b in batches for e in b] == singles
    assert [e["step"] for e in singles] == list(range(1, 201))
    log.close()


def test_emit_many_numbers_in_order_and_keeps_given_times(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", flush_interval=3600)
    log.emit({"type": "message", "text": "before"})
    last = log.emit_many([{"type": "step", "step": 1, "time": 5.0}, {"type": "step", "step": 2}])
    assert last == 3
    assert log.emit_many([]) == 0
    log.emit({"type": "message", "text": "after"})
    log.close()
    events = list(read_events(tmp_path / "events.jsonl"))
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e.get("step") for e in events] == [None, 1, 2, None]
    assert events[1]["time"] == 5.0
    assert isinstance(events[2]["time"], float)


def test_close_wakes_a_sleeping_writer_and_writes_what_listeners_emit_last(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", flush_interval=3600)
    answered = threading.Event()

    def answer(events: list[dict]) -> None:  # like the doctor: an alert for a step
        for event in events:
            if event["type"] == "step":
                log.emit({"type": "alert", "step": event["step"]})
                answered.set()

    log.subscribe(answer, batches=True)
    log.emit_many([{"type": "step", "step": 1}, {"type": "step", "step": 2}])
    log.close()  # returns: the writer did not sleep out its hour
    assert answered.is_set()
    kinds = [(e["type"], e["step"]) for e in read_events(tmp_path / "events.jsonl")]
    assert kinds == [("step", 1), ("step", 2), ("alert", 1), ("alert", 2)]


def test_a_single_event_wakes_the_writer_before_its_timer(tmp_path):
    log = EventLog(tmp_path / "events.jsonl", flush_interval=3600)
    seen = threading.Event()
    log.subscribe(lambda event: seen.set())
    log.emit({"type": "control", "command": "set-lr"})  # a client waits for this one
    assert seen.wait(timeout=30)
    log.close()


def test_steps_emitted_with_wake_reach_the_listeners_before_the_timer(tmp_path):
    # What a run with autofix asks: the doctor sees a blow-up while good snapshots remain.
    log = EventLog(tmp_path / "events.jsonl", flush_interval=3600)
    seen = threading.Event()
    log.subscribe(lambda events: seen.set(), batches=True)
    log.emit_many([{"type": "step", "step": 1, "loss": float("nan")}], wake=True)
    assert seen.wait(timeout=30)
    log.close()
