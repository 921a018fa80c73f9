"""The distributed job's rules (straggler, stalled_rank, rank_nan) on synthetic `ranks`
series through the real Doctor: each names the rank and host, stays quiet on healthy and
balanced jobs, and clears when the rank is back. Every time comes from the events (their
step times, ages), never from the clock, so the rules judge the same on a loaded CPU."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from tuimon.doctor.engine import Doctor
from tuimon.doctor.registry import ALL_RULES, RULES
from tuimon.doctor.report import format_report, review
from tuimon.doctor.rule_ids import RULE_IDS
from tuimon.run.event_codec import encode_event

from conftest import run_tuimon

# -- building `ranks` series ----------------------------------------------------------------


def start(rank_timeout: float | None = None, world_size: int = 4) -> dict[str, Any]:
    settings = {} if rank_timeout is None else {"rank_timeout": rank_timeout}
    return {
        "type": "start",
        "rank": 0,
        "settings": settings,
        "optimizer": {"class": "SGD"},
        "distributed": {"world_size": world_size, "nodes": 1, "sync_every": 4},
    }


def rank(r: int, step: int = 100, **fields: Any) -> dict[str, Any]:
    """One rank's summary as rank 0's collector writes it: healthy unless told otherwise."""
    summary = {
        "rank": r,
        "local_rank": r % 8,
        "node": r // 8,
        "host": f"node{r // 8}",
        "pid": 1000 + r,
        "device": f"cuda:{r % 8}",
        "step": step,
        "status": "running",
        "step_time": 0.2,
        "data_time": 0.01,
        "samples_per_s": 160.0,
        "memory": 2**30,
        "nonfinite_step": None,
        "age": 0.4,
        "step_age": 0.3,
        "alive": True,
    }
    summary.update(fields)
    return summary


def ranks_event(step: int, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "ranks", "rank": 0, "step": step, "world_size": len(ranks), "ranks": ranks}


def series(count: int, world: int, first: int = 20, **per_rank: Any) -> list[dict[str, Any]]:
    """`count` ranks events, one per 10 steps; per_rank[r] is a dict of fields for rank r,
    or a function (event index) -> dict."""
    events = []
    for i in range(count):
        step = first + 10 * i
        ranks = []
        for r in range(world):
            fields = per_rank.get(f"r{r}", {})
            fields = fields(i) if callable(fields) else fields
            ranks.append(rank(r, step, **fields))
        events.append(ranks_event(step, ranks))
    return events


def run(events: list[dict[str, Any]], overrides: dict[str, Any] | None = None):
    return Doctor(overrides).run(events)


def alerts(said, rule: str) -> list[dict[str, Any]]:
    return [e for e in said if e["type"] == "alert" and e["rule"] == rule]


def cleared(said, rule: str) -> list[dict[str, Any]]:
    return [e for e in said if e["type"] == "alert_cleared" and e["rule"] == rule]


def the_alert(said, rule: str) -> dict[str, Any]:
    found = alerts(said, rule)
    assert len(found) == 1, f"expected one {rule} alert, got {[a['message'] for a in found]}"
    return found[0]


def quiet(said, rule: str) -> None:
    assert alerts(said, rule) == [], [a["message"] for a in alerts(said, rule)]


def test_the_rank_rules_are_registered_in_order():
    assert {"straggler", "stalled_rank", "rank_nan"} <= set(RULE_IDS) == set(RULES)
    order = [rule.id for rule in ALL_RULES]
    assert order.index("stalled_rank") < order.index("nan_loss")
    assert order.index("rank_nan") == order.index("nan_loss") + 1
    assert order.index("straggler") == order.index("dataloader_bottleneck") - 1
    assert RULES["straggler"].defaults["ratio"] == 2.0
    assert RULES["straggler"].defaults["window"] == 5
    assert RULES["straggler"].defaults["checks"] == 3
    assert RULES["stalled_rank"].defaults["timeout"] == 30.0
    assert RULES["stalled_rank"].severity == RULES["rank_nan"].severity == "error"
    assert RULES["straggler"].severity == "warning"


# -- straggler -----------------------------------------------------------------------------------


def test_a_rank_with_a_slow_loader_is_named_after_three_reports():
    # DDP: every rank's step takes as long (the all-reduce), rank 2 waits 120 ms for data.
    slow = {"data_time": 0.12}
    events = [start(), *series(10, 4, r2=slow)]
    said = run(events)
    alert = the_alert(said, "straggler")
    assert alert["severity"] == "warning"
    assert alert["step"] == events[3]["step"]  # the third report in a row (checks)
    assert alert["message"].startswith("rank 2 (host node0, pid 1002) is a straggler")
    assert "120 ms" in alert["message"] and "12.0x" in alert["message"]
    assert "10 ms for its data" in alert["message"]
    assert "num_workers" in alert["suggestion"] and "host node0" in alert["suggestion"]
    assert alert["evidence"]["rank"] == 2 and alert["evidence"]["metric"] == "data_time"
    assert alert["evidence"]["others_median"] == 0.01
    assert "action" not in alert  # no command makes a node faster


def test_a_rank_with_slow_steps_is_named_in_a_job_not_in_lockstep():
    events = [start(world_size=8), *series(6, 8, r5={"step_time": 0.45, "host": "gpu-b"})]
    alert = the_alert(run(events), "straggler")
    assert alert["message"].startswith("rank 5 (host gpu-b, pid 1005) is a straggler")
    assert "steps take 450 ms, 2.2x the other ranks' median of 200 ms" in alert["message"]
    assert "nvidia-smi" in alert["suggestion"] and alert["evidence"]["metric"] == "step_time"


def test_a_few_slow_reports_are_not_yet_a_straggler():
    # Slow in 2 reports of every 5 (a busy host now and then): never in most of its last 5.
    events = [start(), *series(30, 4, r1=lambda i: {"data_time": 0.12} if i % 5 >= 3 else {})]
    quiet(run(events), "straggler")
    # The thresholds are the rule's: a window of one report and two in a row make it one.
    assert alerts(run(events, {"straggler": {"window": 1, "checks": 2}}), "straggler")


def test_a_rank_that_turns_slow_is_named_once_its_recent_reports_are():
    events = [start(), *series(20, 4, r3=lambda i: {"data_time": 0.12} if i >= 8 else {})]
    alert = the_alert(run(events), "straggler")
    # Slow from report 8: its median of 5 is slow from report 10, three in a row at 12.
    assert alert["step"] == events[1 + 12]["step"] and alert["evidence"]["rank"] == 3


def test_the_straggler_clears_when_the_rank_catches_up():
    events = [start(), *series(16, 2, r1=lambda i: {"data_time": 0.12} if i < 6 else {})]
    said = run(events)
    alert = the_alert(said, "straggler")
    [end] = cleared(said, "straggler")
    # Balanced from report 6: its median of 5 is back at report 8, the second such (clear_after).
    assert end["step"] == events[1 + 9]["step"] and end["step"] > alert["step"]


def jittery(world: int, seed: int, step: float, data: float, wait: float) -> dict[str, Any]:
    """Every rank's times with report-to-report noise of these relative sizes (Gaussian),
    each rank's independent of the others'; `wait`: the mean data wait in seconds."""
    rng = random.Random(seed)

    def noise(_: int) -> dict[str, Any]:
        return {
            "step_time": 0.2 * max(0.2, 1 + step * rng.gauss(0, 1)),
            "data_time": wait * max(0.05, 1 + data * rng.gauss(0, 1)),
        }

    return {f"r{r}": noise for r in range(world)}


def test_quiet_on_balanced_jobs_of_2_and_8_ranks_even_with_jitter():
    for world in (2, 8):
        quiet(run([start(world_size=world), *series(60, world)]), "straggler")
        for seed in range(4):
            # Steps ±20 % (ranks not in lockstep) and short waits ±50 %; then long waits
            # (40 % of the step) ±20 %: each report is a mean over a few steps.
            for noise in ((0.2, 0.5, 0.01), (0.0, 0.2, 0.08)):
                events = [
                    start(world_size=world),
                    *series(200, world, **jittery(world, seed, *noise)),
                ]
                quiet(run(events), "straggler")


def test_quiet_with_one_rank():
    events = [start(world_size=1), *series(10, 1, r0={"data_time": 0.19, "step_time": 9.0})]
    said = run(events)
    for rule in ("straggler", "stalled_rank", "rank_nan"):
        quiet(said, rule)


def test_quiet_when_every_rank_is_equally_slow():
    slow = {"data_time": 0.15, "step_time": 0.2}
    events = [start(), *series(20, 4, **{f"r{r}": slow for r in range(4)})]
    quiet(run(events), "straggler")


def test_quiet_on_a_gap_too_small_to_matter():
    # 8x the others' wait, but 7 ms of a 200 ms step: not worth naming (share 0.1).
    fast = {"data_time": 0.001}
    events = [start(), *series(10, 4, r0=fast, r1=fast, r2=fast, r3={"data_time": 0.008})]
    quiet(run(events), "straggler")
    assert alerts(run(events, {"straggler": {"share": 0.02}}), "straggler")


def test_warmup_reports_and_paused_ranks_are_not_judged():
    # Its first steps (workers starting) are slow: not judged.
    early = [start()]
    for step in (2, 4, 6, 8, 10):
        early.append(ranks_event(step, [rank(0, step), rank(1, step, data_time=0.5)]))
    quiet(run(early), "straggler")
    paused = [start(), *series(6, 2, r1={"data_time": 0.5, "status": "paused"})]
    quiet(run(paused), "straggler")


# -- stalled_rank --------------------------------------------------------------------------------


def test_a_dead_rank_is_named_with_its_host_pid_and_step():
    events = [
        start(),
        *series(3, 4),
        ranks_event(60, [rank(0, 60), rank(1, 40, alive=False), rank(2, 60), rank(3, 60)]),
    ]
    alert = the_alert(run(events), "stalled_rank")
    assert alert["severity"] == "error" and alert["step"] == 60
    assert alert["message"] == "rank 1 (host node0, pid 1001) died at step 40: its process is gone"
    assert "what it printed on host node0" in alert["suggestion"]
    assert alert["evidence"]["rank"] == 1 and alert["evidence"]["alive"] is False


def test_a_silent_rank_is_named_past_the_timeout_only():
    def silent(age: float) -> list[dict[str, Any]]:
        return [
            start(),
            *series(3, 2),
            ranks_event(80, [rank(0, 80), rank(1, 40, age=age, step_age=age, alive=None)]),
        ]

    quiet(run(silent(29.0)), "stalled_rank")
    alert = the_alert(run(silent(45.0)), "stalled_rank")
    assert alert["message"] == (
        "rank 1 (host node0, pid 1001) has not reported for 45 s (last step 40): hung or dead"
    )
    assert "py-spy dump --pid 1001" in alert["suggestion"]


def test_quiet_while_every_rank_reports():
    rng = random.Random(1)

    def ages(_: int) -> dict[str, Any]:
        return {"age": rng.uniform(0, 5), "step_age": rng.uniform(0, 5)}

    events = [start(world_size=8), *series(100, 8, **{f"r{r}": ages for r in range(8)})]
    quiet(run(events), "stalled_rank")


def test_a_stalled_rank_clears_when_it_reports_again():
    events = [
        start(),
        *series(2, 2),
        ranks_event(60, [rank(0, 60), rank(1, 40, age=40.0, step_age=40.0)]),
        ranks_event(70, [rank(0, 70), rank(1, 40, age=50.0, step_age=50.0)]),
        ranks_event(80, [rank(0, 80), rank(1, 41, age=0.3, step_age=0.2)]),
    ]
    said = run(events)
    alert = the_alert(said, "stalled_rank")
    [end] = cleared(said, "stalled_rank")
    assert alert["step"] == 60 and end["step"] == 80


def test_the_jobs_rank_timeout_and_the_rules_own_threshold():
    events = [
        start(rank_timeout=10.0),
        ranks_event(60, [rank(0, 60), rank(1, 40, age=15.0, step_age=15.0)]),
    ]
    assert "15 s" in the_alert(run(events), "stalled_rank")["message"]
    # A threshold set for the rule itself wins over the job's monitor.rank_timeout.
    quiet(run(events, {"stalled_rank": {"timeout": 60}}), "stalled_rank")


def test_ranks_that_ended_well_are_not_stalled_but_a_failed_one_is():
    done = [
        start(),
        ranks_event(
            100,
            [
                rank(0, 100, status="stopping"),
                rank(1, 100, status="completed", alive=False, age=60.0, step_age=60.0),
                rank(2, 100, status="stopped", alive=False),
            ],
        ),
    ]
    quiet(run(done), "stalled_rank")
    error = (
        "Traceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out of memory\n"
    )
    failed = [
        start(),
        ranks_event(50, [rank(0, 50), rank(1, 47, status="failed", alive=False, error=error)]),
    ]
    alert = the_alert(run(failed), "stalled_rank")
    assert alert["message"] == (
        "rank 1 (host node0, pid 1001) failed at step 47: "
        "torch.OutOfMemoryError: CUDA out of memory"
    )


def test_the_rank_that_died_is_named_before_the_ones_that_failed_because_of_it():
    # A SIGKILLed rank: rank 0's all-reduce fails at once (connection reset by peer).
    reset = "Traceback (most recent call last):\nRuntimeError: Connection reset by peer"
    events = [
        start(),
        ranks_event(
            112,
            [
                rank(0, 112, status="failed", error=reset),
                rank(1, 100, alive=False, age=0.1),
            ],
        ),
    ]
    alert = the_alert(run(events), "stalled_rank")
    assert alert["message"] == (
        "rank 1 (host node0, pid 1001) died at step 100: its process is gone; also rank 0 (failed)"
    )
    assert alert["evidence"]["rank"] == 1 and alert["evidence"]["stalled"] == [1, 0]


def test_a_rank_whose_step_stopped_while_the_others_train_is_stuck():
    stuck = [
        start(),
        ranks_event(90, [rank(0, 90, step_age=0.2), rank(1, 12, age=0.4, step_age=41.0)]),
    ]
    alert = the_alert(run(stuck), "stalled_rank")
    assert alert["message"].startswith("rank 1 (host node0, pid 1001) is stuck at step 12")
    # Paused: no rank steps, and none is stuck.
    paused = [
        start(),
        ranks_event(
            90,
            [
                rank(0, 90, status="paused", step_age=60.0),
                rank(1, 90, status="paused", step_age=60.0),
            ],
        ),
    ]
    quiet(run(paused), "stalled_rank")


# -- rank_nan ------------------------------------------------------------------------------------


def test_nan_on_a_rank_is_an_error_naming_it():
    events = [
        start(),
        *series(3, 4),
        ranks_event(58, [rank(0, 58), rank(1, 58), rank(2, 58, nonfinite_step=57), rank(3, 58)]),
    ]
    said = run(events)
    alert = the_alert(said, "rank_nan")
    assert alert["severity"] == "error"
    assert alert["message"] == "NaN/inf loss on rank 2 (host node0) at step 57"
    assert "rank 2's data shard" in alert["suggestion"]
    assert alert["action"]["cmd"] == "recover" and alert["action"]["before_step"] == 57
    quiet(said, "nan_loss")  # rank 0 is fine: its own rule says nothing


def test_rank_zeros_own_nan_is_left_to_nan_loss():
    events = [start(), ranks_event(58, [rank(0, 58, nonfinite_step=57), rank(1, 58)])]
    quiet(run(events), "rank_nan")


def test_rank_nan_clears_once_the_rank_is_past_it():
    events = [start()]
    for step in range(58, 120, 5):
        events.append(ranks_event(step, [rank(0, step), rank(1, step, nonfinite_step=57)]))
    said = run(events)
    alert = the_alert(said, "rank_nan")
    [end] = cleared(said, "rank_nan")
    assert alert["step"] == 58 and end["step"] == 78  # 20 steps past its NaN (window)


def test_damaged_ranks_events_are_read_without_failing():
    doctor = Doctor()
    doctor.observe(start())
    for broken in (
        {"type": "ranks"},
        {"type": "ranks", "ranks": "x"},
        {"type": "ranks", "ranks": [None, 3, {"rank": "a"}, {"rank": -1}]},
        {
            "type": "ranks",
            "step": 5,
            "ranks": [
                {"rank": 0, "step": "x", "age": "old", "step_time": [1]},
                {"rank": 1, "step": 99, "nonfinite_step": "n", "age": None, "alive": "no"},
            ],
        },
    ):
        assert doctor.observe(broken) == []


# -- `tuimon doctor` on a job's directory ---------------------------------------------------------


def write_log(path: Path, events: list[dict[str, Any]]) -> None:
    """A log as the event log writes it (the real codec), with a seq on every event."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [encode_event({**event, "seq": seq}) for seq, event in enumerate(events, 1)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def job_dir(root: Path) -> Path:
    """A 3-rank job: rank 1 took NaN losses and failed, rank 2 was killed (no end), and
    rank 0 reported rank 2 dead; rank 1's log has a damaged line."""
    run = root / "job"
    steps = [
        {"type": "step", "rank": 0, "step": n, "loss": 1.0 / n, "lr": 0.1, "step_time": 0.2}
        for n in range(1, 61)
    ]
    reports = [
        ranks_event(
            step,
            [
                rank(0, step),
                rank(1, step, nonfinite_step=57 if step >= 57 else None),
                rank(2, min(step, 40), alive=step < 50, host="node1"),
            ],
        )
        for step in range(20, 61, 5)
    ]
    start_event = {
        **start(world_size=3),
        "name": "ddp-job",
        "host": "node0",
        "pid": 1000,
        "distributed": {
            "world_size": 3,
            "nodes": 2,
            "ranks": [rank(r) for r in range(3)],
        },
    }
    events = [start_event, *sorted(steps + reports, key=lambda e: (e["step"], e["type"]))]
    events.append({"type": "end", "rank": 0, "status": "failed", "step": 60, "error": "x"})
    write_log(run / "events.jsonl", events)
    error = "Traceback (most recent call last):\n  File t.py\nRuntimeError: loss is nan\n"
    one = [
        {"type": "start", "rank": 1, "host": "node0", "pid": 1001},
        *[
            {"type": "step", "rank": 1, "step": n, "loss": math.nan if n >= 56 else 1.0 / n}
            for n in range(1, 59)
        ],
        {"type": "end", "rank": 1, "status": "failed", "step": 58, "error": error},
    ]
    write_log(run / "ranks" / "1" / "events.jsonl", one)
    with (run / "ranks" / "1" / "events.jsonl").open("ab") as file:
        file.write(b'{"type": "step", "ste\n')
    two = [
        {"type": "start", "rank": 2, "host": "node1", "pid": 1002},
        *[{"type": "step", "rank": 2, "step": n, "loss": 1.0 / n} for n in range(1, 41)],
    ]
    write_log(run / "ranks" / "2" / "events.jsonl", two)
    return run


def test_tuimon_doctor_on_a_job_shows_every_rank_and_the_rank_rules(tmp_path):
    run = job_dir(tmp_path)
    done = run_tuimon("doctor", run, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tuimon doctor: ddp-job") and "60 steps, failed" in lines[0]
    at = lines.index("  ranks: 3")
    assert lines[at + 1] == "    rank 0: host node0, pid 1000, step 60, failed: x"
    assert lines[at + 2] == (
        "    rank 1: host node0, pid 1001, step 58, failed: RuntimeError: loss is nan"
    )
    assert lines[at + 3] == "      NaN/inf loss at 3 steps (steps 56 to 58)"
    assert lines[at + 4] == "    rank 2: host node1, pid 1002, step 40, died (no end)"
    assert "  note: rank 1's log (ranks/1/events.jsonl): 1 damaged line skipped (line 61)" in lines
    # The rules ran over the job log's `ranks` events.
    [dead] = [line for line in lines if " stalled_rank at step " in line]
    assert dead.lstrip().startswith("ERROR") and "rank 2 (host node1, pid 1002) died" in dead
    [nan] = [line for line in lines if " rank_nan at step " in line]
    assert "NaN/inf loss on rank 1 (host node0) at step 57" in nan
    assert lines[-1].startswith("2 alerts: 2 errors, 0 warnings")


def test_a_rank_known_only_from_rank_zeros_reports_is_listed_as_such(tmp_path):
    run = job_dir(tmp_path)
    for name in ("1", "2"):
        for path in (run / "ranks" / name).iterdir():
            path.unlink()
        (run / "ranks" / name).rmdir()
    said, summary = review(run)
    text = format_report(run, said, summary)
    assert (
        "    rank 2: host node1, pid 1002, step 40, died (no end) "
        "(as rank 0 last heard; its log is not here)" in text.splitlines()
    )


def test_a_run_of_one_process_has_no_rank_section(tmp_path):
    run = tmp_path / "single"
    write_log(
        run / "events.jsonl",
        [
            {"type": "start", "name": "one"},
            *[{"type": "step", "step": n, "loss": 1.0} for n in (1, 2)],
        ],
    )
    said, summary = review(run)
    assert "ranks" not in summary and "rank" not in format_report(run, said, summary)
