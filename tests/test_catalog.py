"""The run catalog: finding runs under roots, and summarizing each from the head and tail of
its log, followed incrementally, with real files (and, for `died`, a real process that is
gone). The runs screen and `tuimon ls` show what these summaries say."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tuimon.catalog.catalog import RunCatalog
from tuimon.catalog.log_tail import read_tail
from tuimon.catalog.roots import ROOTS_ENV, default_roots, find_run_dirs
from tuimon.catalog.run_summary import CATALOG_STATUSES, DIED, UNKNOWN, RunSummary
from tuimon.control.commands import PAUSE, RESUME, STOP
from tuimon.run.event_codec import encode_event
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    COMPLETED,
    CONTROL,
    END,
    ERROR,
    FAILED,
    INFO,
    MESSAGE,
    PAUSED,
    RUN_STATUSES,
    RUNNING,
    START,
    STARTING,
    STEP,
    STOPPING,
    SYSTEM,
    WARNING,
)
from tuimon.run.replay_cache import write_state_cache
from tuimon.run.run_dir import EVENTS_FILE, RANKS_DIR, STATE_FILE
from tuimon.run.run_state import RunState

HERE = socket.gethostname()


# -- writing logs the way the event log writes them ------------------------------------------


def start(name: str = "r", pid: int | None = None, host: str = HERE, **extra: Any) -> dict:
    """A start event of a worker that lives: this test process (started before it)."""
    return {
        "type": START,
        "name": name,
        "pid": os.getpid() if pid is None else pid,
        "host": host,
        "total_steps": 1000,
        "time": time.time(),
        **extra,
    }


def step(n: int, loss: float = 1.0) -> dict:
    return {"type": STEP, "step": n, "loss": loss, "lr": 0.1, "time": time.time()}


def probe(n: int) -> dict:
    inputs = {"count": 100352, "mean": -0.02, "std": 1.0, "min": -4.0, "max": 3.9}
    return {"type": "probe", "probe": "batch", "step": n, "inputs": inputs, "time": time.time()}


def alert(rule: str, severity: str, n: int = 1, message: str = "") -> dict:
    text = message or f"{rule} at step {n}"
    return {"type": ALERT, "rule": rule, "severity": severity, "message": text, "step": n}


def control(command: str, new: str) -> dict:
    return {"type": CONTROL, "command": command, "old": RUNNING, "new": new, "step": 1}


def write(run_dir: Path, events: list[dict], mode: str = "wb") -> int:
    """Events as lines of the run's log (numbered by `seq`); the bytes written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / EVENTS_FILE
    data = b"".join(encode_event(e) + b"\n" for e in events)
    with log.open(mode) as file:
        file.write(data)
    return len(data)


def steps(first: int, last: int, loss_at: Any = lambda n: 1.0) -> list[dict]:
    """Step events as a run writes them, a batch probe every 20 steps."""
    events = []
    for n in range(first, last + 1):
        if n % 20 == 0:
            events.append(probe(n))
        events.append(step(n, loss_at(n)))
    return events


def gone_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def one(root: Path, name: str) -> RunSummary:
    catalog = RunCatalog([root])
    catalog.refresh()
    summary = catalog.summary(root / name)
    assert summary is not None
    return summary


# -- discovery ---------------------------------------------------------------------------------


def test_runs_directly_under_roots_are_found_and_a_job_s_ranks_are_not(tmp_path):
    root = tmp_path / "runs"
    write(root / "a", [start("a")])
    write(root / "b", [start("b")])
    (root / "not-a-run").mkdir()
    (root / "c" / "deeper").mkdir(parents=True)
    write(root / "c" / "deeper" / "x", [start("x")])  # two levels down: not a run of root
    write(root / "job", [start("job")])
    write(root / "job" / RANKS_DIR / "1", [start("job", rank=1)])
    alone = tmp_path / "alone"
    write(alone, [start("alone")])  # a root that is itself a run
    (root / "file-events").mkdir()
    (root / "file-events" / EVENTS_FILE).mkdir()  # not a regular file

    found = find_run_dirs([root, alone, tmp_path / "missing", root])
    assert found == [root / "a", root / "b", root / "job", alone]
    # Pointed at the job's ranks, or at a rank itself, it still finds no run of its own.
    assert find_run_dirs([root / "job" / RANKS_DIR, root / "job" / RANKS_DIR / "1"]) == []


def test_an_unreadable_root_is_skipped(tmp_path):
    # A root that cannot be listed (a symlink loop: ELOOP, which even root cannot read)
    # costs only itself.
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    write(tmp_path / "open" / "b", [start("b")])
    assert find_run_dirs([loop, tmp_path / "open"]) == [tmp_path / "open" / "b"]


def test_default_roots_are_runs_and_the_environment_s_list(monkeypatch, tmp_path):
    monkeypatch.setenv(ROOTS_ENV, os.pathsep.join([str(tmp_path / "x"), "", "runs", "~/r"]))
    assert default_roots() == [Path("runs"), tmp_path / "x", Path("~/r").expanduser()]
    monkeypatch.delenv(ROOTS_ENV)
    assert default_roots() == [Path("runs")]


def test_new_runs_appear_and_deleted_ones_vanish_newest_start_first(tmp_path):
    write(tmp_path / "old", [start("old", time=1000.0)])
    catalog = RunCatalog([tmp_path])
    assert [s.name for s in catalog.refresh()] == ["old"]
    write(tmp_path / "new", [start("new", time=2000.0)])
    assert [s.name for s in catalog.refresh()] == ["new", "old"]
    (tmp_path / "old" / EVENTS_FILE).unlink()
    assert [s.name for s in catalog.refresh()] == ["new"]
    assert catalog.summary(tmp_path / "old") is None


# -- reading only what is needed ---------------------------------------------------------------


def test_a_long_log_is_summarized_from_its_head_and_tail_not_read_whole(tmp_path):
    run = tmp_path / "long"
    total = 30_000
    size = write(run, [start("long"), *steps(1, total, lambda n: 2.0 - n / total)])
    assert size > 2_000_000

    catalog = RunCatalog([tmp_path])
    [summary] = catalog.refresh()
    assert summary.step == total and summary.loss == pytest.approx(2.0 - 1.0)
    assert summary.loss_trend is not None and summary.loss_trend < 0  # falling
    assert summary.status == RUNNING and summary.name == "long"
    assert catalog.bytes_read < size / 20  # the head and the tail, never the whole log

    read = catalog.bytes_read
    assert catalog.refresh()[0].step == total
    assert catalog.bytes_read == read  # nothing new: nothing read


def test_following_reads_only_the_bytes_appended(tmp_path):
    run = tmp_path / "run"
    write(run, [start("run"), *steps(1, 500)])
    catalog = RunCatalog([tmp_path])
    assert catalog.refresh()[0].step == 500
    read = catalog.bytes_read

    added = write(run, steps(501, 510, lambda n: 0.5), mode="ab")
    [summary] = catalog.refresh()
    assert summary.step == 510 and summary.loss == 0.5
    assert catalog.bytes_read - read == added

    # A torn last line (the worker mid-write) is not read as an event, nor skipped past.
    line = encode_event(step(511, 0.25)) + b"\n"
    with (run / EVENTS_FILE).open("ab") as file:
        file.write(line[:20])
    [summary] = catalog.refresh()
    assert summary.step == 510 and summary.skipped == 0
    with (run / EVENTS_FILE).open("ab") as file:
        file.write(line[20:])
    [summary] = catalog.refresh()
    assert summary.step == 511 and summary.loss == 0.25
    assert catalog.bytes_read - read == added + len(line)


def test_a_tail_never_starts_or_ends_inside_a_line(tmp_path):
    run = tmp_path / "run"
    write(run, [start("run"), *steps(1, 3000)])
    with (run / EVENTS_FILE).open("ab") as file:
        file.write(b'{"type":"step","st')  # torn
    tail = read_tail(run / EVENTS_FILE, steps=50)
    assert tail.start > 0 and tail.skipped == 0
    assert [e["step"] for e in tail.events if e["type"] == STEP] == list(range(2951, 3001))
    data = (run / EVENTS_FILE).read_bytes()
    assert data[tail.start - 1 : tail.start] == b"\n" and data[tail.end - 1 : tail.end] == b"\n"
    assert tail.end == len(data) - len(b'{"type":"step","st')


def test_a_log_that_was_replaced_is_read_anew(tmp_path):
    run = tmp_path / "run"
    write(run, [start("first"), *steps(1, 100)])
    catalog = RunCatalog([tmp_path])
    assert catalog.refresh()[0].step == 100
    write(run, [start("second"), *steps(1, 7)])  # truncated and rewritten
    [summary] = catalog.refresh()
    assert (summary.name, summary.step) == ("second", 7)


def test_a_damaged_log_gives_a_summary_and_counts_its_damage(tmp_path):
    run = tmp_path / "run"
    write(run, [start("run"), *steps(1, 30)])
    garbage = [
        b"not json at all",
        b'{"type":"step","step":"x","loss":1}',
        b'{"type":"step","step":31,"loss":[1]}',
        b'{"type":"step","step":32,"loss":' + b"9" * 400 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type":"alert","rule":7,"severity":"error"}',
        b'{"type":"system","gpus":"many"}',
        b'{"type":"end","status":"exploded","time":"soon"}',
        b"\xff\xfe\x00",
        b'{"type":"step","st',  # torn
    ]
    with (run / EVENTS_FILE).open("ab") as file:
        file.write(b"\n".join(garbage))
    [summary] = RunCatalog([tmp_path]).refresh()
    assert summary.step == 32
    assert summary.loss is None or math.isnan(summary.loss)  # no loss, or an unreadable one
    assert summary.skipped >= 3
    assert summary.status == UNKNOWN  # an end whose status is no status
    json.dumps(summary.to_json(), allow_nan=False)  # still valid JSON for `ls --json`


def test_an_empty_or_start_less_log_is_starting_then_unknown(tmp_path):
    write(tmp_path / "new", [])
    [summary] = RunCatalog([tmp_path]).refresh()
    assert summary.status == STARTING and summary.name == "new" and summary.step is None
    log = tmp_path / "new" / EVENTS_FILE
    os.utime(log, (time.time() - 3600, time.time() - 3600))
    [summary] = RunCatalog([tmp_path]).refresh()
    assert summary.status == UNKNOWN


# -- statuses ---------------------------------------------------------------------------------


def test_status_follows_control_events_and_the_end(tmp_path):
    run = tmp_path / "run"
    write(run, [start("run"), *steps(1, 5)])
    catalog = RunCatalog([tmp_path])
    assert catalog.refresh()[0].status == RUNNING
    write(run, [control(PAUSE, PAUSED)], mode="ab")
    assert catalog.refresh()[0].status == PAUSED
    write(run, [control(RESUME, RUNNING), *steps(6, 8)], mode="ab")
    assert catalog.refresh()[0].status == RUNNING
    write(run, [control(STOP, STOPPING)], mode="ab")
    assert catalog.refresh()[0].status == STOPPING
    # A loop that polls no stop flag runs on: the log says so, and it is running again.
    write(run, [{"type": MESSAGE, "text": "ignored", "stop_ignored": True}], mode="ab")
    assert catalog.refresh()[0].status == RUNNING
    write(run, [{"type": END, "status": FAILED, "step": 8, "time": time.time()}], mode="ab")
    [summary] = catalog.refresh()
    assert summary.status == FAILED and summary.ended is not None
    assert summary.duration is not None and summary.duration >= 0
    assert set(CATALOG_STATUSES) == {*RUN_STATUSES, DIED, UNKNOWN}


def test_a_run_whose_worker_is_gone_died_and_one_on_another_host_keeps_its_status(tmp_path):
    write(tmp_path / "dead", [start("dead", pid=gone_pid()), *steps(1, 5)])
    write(tmp_path / "far", [start("far", pid=gone_pid(), host="another-host"), *steps(1, 5)])
    write(tmp_path / "done", [start("done", pid=gone_pid()), {"type": END, "status": COMPLETED}])
    catalog = RunCatalog([tmp_path])
    states = {s.name: s.status for s in catalog.refresh()}
    assert states == {"dead": DIED, "far": RUNNING, "done": COMPLETED}
    dead = catalog.summary(tmp_path / "dead")
    assert dead is not None and not dead.live and dead.duration is not None


# -- alerts, loss trend, GPUs -----------------------------------------------------------------


def test_the_worst_open_alert_is_the_most_severe_then_the_newest(tmp_path):
    run = tmp_path / "run"
    events = [
        start("run"),
        alert("stall", WARNING, 1),
        alert("nan_loss", ERROR, 2),
        alert("lr_too_low", INFO, 3),
        alert("divergence", ERROR, 4),
        alert("oscillation", WARNING, 5),
    ]
    write(run, events)
    catalog = RunCatalog([tmp_path])
    [summary] = catalog.refresh()
    assert summary.alert is not None and summary.alert["rule"] == "divergence"
    assert summary.alert["severity"] == ERROR and summary.alerts_open == 5
    write(run, [{"type": ALERT_CLEARED, "rule": "divergence", "step": 6}], mode="ab")
    [summary] = catalog.refresh()
    assert summary.alert["rule"] == "nan_loss" and summary.alerts_open == 4
    write(run, [{"type": ALERT_CLEARED, "rule": "nan_loss", "step": 7}], mode="ab")
    assert catalog.refresh()[0].alert["rule"] == "oscillation"


def test_a_finished_run_s_early_alert_comes_from_its_state_json(tmp_path):
    run = tmp_path / "run"
    head = [start("run"), alert("lr_too_high", WARNING, 1), alert("stall", ERROR, 2)]
    cleared = {"type": ALERT_CLEARED, "rule": "stall", "step": 3}
    body = steps(1, 6000)
    end = {"type": END, "status": COMPLETED, "step": 6000, "time": time.time()}
    events = [*head, cleared, *body, end]
    for seq, event in enumerate(events, start=1):
        event["seq"] = seq
    write(run, events)
    # Without the cache, the tail (the last steps) holds no alert.
    assert one(tmp_path, "run").alert is None
    state = RunState()
    state.apply_many(events)
    assert write_state_cache(run, state, run / EVENTS_FILE)
    [summary] = RunCatalog([tmp_path]).refresh()
    assert summary.alert is not None and summary.alert["rule"] == "lr_too_high"
    assert summary.alerts_open == 1  # stall was cleared
    # A cache that does not stand for this log (it grew past a line's end) is not used.
    with (run / EVENTS_FILE).open("r+b") as file:
        file.truncate((run / EVENTS_FILE).stat().st_size - 5)
    assert one(tmp_path, "run").alert is None


def test_a_crafted_state_json_is_ignored(tmp_path):
    run = tmp_path / "run"
    events = [start("run"), *steps(1, 3000), {"type": END, "status": COMPLETED}]
    size = write(run, events)
    crafted = [
        b"\x80\x04pickle",
        b'{"format":"tuimon-state","cache_version":1,"log_bytes":%d,"snapshot":{"alerts":' % size
        + b"[" * 50_000,
        b'{"format":"tuimon-state","cache_version":1,"log_bytes":%d,"log_seq":1,'
        b'"snapshot":{"alerts":[{"rule":"x","severity":"error"},3,"y"],"messages":[]}}' % size,
    ]
    expected = [None, None, "x"]  # the last is well-formed: its one valid alert counts
    for data, rule in zip(crafted, expected, strict=True):
        (run / STATE_FILE).write_bytes(data)
        summary = one(tmp_path, "run")
        assert (summary.alert or {}).get("rule") == rule
    (run / STATE_FILE).unlink()
    (run / STATE_FILE).symlink_to(run / EVENTS_FILE)  # never followed
    assert one(tmp_path, "run").alert is None


def test_loss_trend_needs_enough_steps_and_says_which_way(tmp_path):
    write(tmp_path / "few", [start("few"), *steps(1, 3)])
    write(tmp_path / "up", [start("up"), *steps(1, 100, lambda n: 1.0 + n / 100)])
    write(tmp_path / "flat", [start("flat"), *steps(1, 100, lambda n: 2.0)])
    catalog = RunCatalog([tmp_path])
    catalog.refresh()
    trends = {name: catalog.summary(tmp_path / name).loss_trend for name in ("few", "up", "flat")}
    assert trends["few"] is None and trends["up"] > 0.1 and trends["flat"] == 0


def test_gpus_and_memory_come_from_the_latest_system_sample(tmp_path):
    def system(used: dict[int, int | None]) -> dict:
        gpus = [{"index": i, "mem_used": 1 << 30, "process_mem": m} for i, m in used.items()]
        return {"type": SYSTEM, "gpus": gpus, "time": time.time()}

    run = tmp_path / "run"
    write(run, [start("run"), system({0: 5 << 30, 1: 0}), *steps(1, 3)])
    catalog = RunCatalog([tmp_path])
    [summary] = catalog.refresh()
    assert (summary.gpus, summary.gpu_mem) == ([0], 5 << 30)
    write(run, [system({0: 2 << 30, 1: None, 2: 3 << 30, 3: 0})], mode="ab")
    [summary] = catalog.refresh()
    assert (summary.gpus, summary.gpu_mem) == ([0, 2], 5 << 30)
    assert catalog.latest_system() is not None
    assert summary.to_json()["gpus"] == [0, 2]
    write(run, [{"type": END, "status": COMPLETED, "time": time.time()}], mode="ab")
    [summary] = catalog.refresh()
    assert (summary.gpus, summary.gpu_mem) == ([], None)  # ended: it holds none now
    assert catalog.latest_system() is None  # no live run samples the machine


def test_a_distributed_job_says_its_world_size_and_json_is_strict(tmp_path):
    job = tmp_path / "job"
    write(job, [start("job", distributed={"world_size": 4, "nodes": 1}), step(1, math.nan)])
    write(job / RANKS_DIR / "1", [start("job", rank=1)])
    [summary] = RunCatalog([tmp_path]).refresh()
    assert summary.world_size == 4 and summary.run_dir == job
    data = summary.to_json()
    assert data["loss"] is None  # NaN: null in JSON
    assert json.loads(json.dumps(data, allow_nan=False))["run_dir"] == str(job)


def test_the_catalog_and_ls_import_no_torch_textual_pydantic_or_numpy():
    # The runs screen imports the catalog (the UI never imports torch or pydantic), and
    # `tuimon ls` should start fast: numpy only comes with a finished run's state.json.
    code = (
        "import sys\n"
        "import tuimon.catalog.catalog, tuimon.catalog.machine_gpus, tuimon.catalog.ls_command\n"
        "heavy = ('torch', 'textual', 'pydantic', 'numpy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(('tuimon.monitor', 'tuimon.training', 'tuimon.ui'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_catalog_writes_nothing(tmp_path):
    def tree() -> dict[str, tuple[int, int]]:
        return {
            str(path): (path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in sorted(tmp_path.rglob("*"))
        }

    write(tmp_path / "live", [start("live"), *steps(1, 50)])
    write(tmp_path / "dead", [start("dead", pid=gone_pid()), *steps(1, 50)])
    events = [start("done"), *steps(1, 3000), {"type": END, "status": COMPLETED}]
    for seq, event in enumerate(events, start=1):
        event["seq"] = seq
    write(tmp_path / "done", events)
    state = RunState()
    state.apply_many(events)
    assert write_state_cache(tmp_path / "done", state, tmp_path / "done" / EVENTS_FILE)
    before = tree()
    catalog = RunCatalog([tmp_path])
    assert len(catalog.complete_alerts()) == 3
    catalog.refresh()
    assert tree() == before
