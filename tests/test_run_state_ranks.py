"""A distributed job's ranks in the RunState (the `ranks` event, the start's `distributed`),
their snapshot, replay cache and rank logs; and which ranks are laggards (pure, no Textual)."""

from __future__ import annotations

import json
import math
import random
import statistics

from tuimon.run.field_types import MAX_RANKS, typed_event, typed_rank_summary
from tuimon.run.rank_logs import read_rank_logs
from tuimon.run.replay_cache import load_cached_state, write_state_cache
from tuimon.run.run_state import RunState, load_run_state
from tuimon.ui.rank_laggards import (
    BEHIND,
    DEAD,
    FAILED_RANK,
    NONFINITE,
    SILENT,
    SLOW_DATA,
    SLOW_STEP,
    STUCK,
    LaggardLimits,
    _medians_of_others,
    find_laggards,
    limits_for,
    slowest,
)


def summary(rank, **fields):
    """A healthy rank as rank 0 reports it, with `fields` changed."""
    base = {
        "rank": rank,
        "local_rank": rank % 8,
        "node": rank // 8,
        "host": f"node{rank // 8}",
        "pid": 1000 + rank,
        "device": f"cuda:{rank % 8}",
        "step": 500,
        "status": "running",
        "step_time": 0.1,
        "data_time": 0.01,
        "samples_per_s": 320.0,
        "memory": 2**30,
        "nonfinite_step": None,
        "age": 0.5,
        "step_age": 0.1,
        "alive": True,
    }
    return {**base, **fields}


def identity(rank):
    keep = ("rank", "local_rank", "node", "host", "pid", "device")
    return {k: v for k, v in summary(rank).items() if k in keep}


def job_events(world_size, reports):
    """A job log: start with its ranks, then steps of rank 0 and `reports` (lists of
    summaries), one `ranks` event after every 10 steps."""
    seq = iter(range(1, 1_000_000))
    events = [
        {
            "type": "start",
            "seq": next(seq),
            "time": 1000.0,
            "rank": 0,
            "name": "job",
            "total_steps": 1000,
            "settings": {"rank_timeout": 30.0},
            "distributed": {
                "world_size": world_size,
                "nodes": max(1, world_size // 8),
                "backend": "gloo",
                "run_id": "abc",
                "sync_every": 4,
                "ranks": [identity(r) for r in range(world_size)],
            },
        }
    ]
    step = 0
    for report in reports:
        for _ in range(10):
            step += 1
            events.append(
                {
                    "type": "step",
                    "seq": next(seq),
                    "time": 1000.0 + step,
                    "rank": 0,
                    "step": step,
                    "loss": 1.0 / step,
                    "lr": 0.1,
                    "step_time": 0.1,
                    "samples": 32,
                }
            )
        events.append(
            {
                "type": "ranks",
                "seq": next(seq),
                "time": 1000.0 + step,
                "rank": 0,
                "step": step,
                "world_size": world_size,
                "ranks": report,
            }
        )
    return events


# -- the state ---------------------------------------------------------------------------


def test_the_state_keeps_each_ranks_latest_report_and_the_world_size():
    state = RunState()
    first = [summary(1, step=10), summary(0, step=10)]
    # A later report need not repeat who a rank is: what the start said stays.
    later = [
        {"rank": 0, "step": 20, "status": "running", "age": 0.1},
        {"rank": 1, "step": 19, "status": "paused", "age": 0.2},
    ]
    state.apply_many(job_events(2, [first, later]))
    assert state.world_size == 2
    ranks = state.ranks
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[1]["step"] == 19 and ranks[1]["status"] == "paused"
    assert ranks[1]["host"] == "node0" and ranks[1]["pid"] == 1001  # from the start
    assert ranks[1]["samples_per_s"] == 320.0  # from the first report
    # The job's curves are rank 0's: its 20 steps.
    assert state.series["loss"].total == 20 and state.step == 20


def test_before_any_report_the_start_names_every_rank():
    state = RunState()
    state.apply_many(job_events(4, []))
    assert state.world_size == 4
    assert [(r["rank"], r["host"], r["device"]) for r in state.ranks] == [
        (0, "node0", "cuda:0"),
        (1, "node0", "cuda:1"),
        (2, "node0", "cuda:2"),
        (3, "node0", "cuda:3"),
    ]


def test_a_single_process_run_has_no_ranks():
    state = RunState()
    state.apply_many(
        [
            {"type": "start", "seq": 1, "time": 1.0, "name": "one"},
            {"type": "step", "seq": 2, "time": 2.0, "step": 1, "loss": 1.0},
        ]
    )
    assert state.world_size == 1 and state.ranks == []
    assert state.snapshot()["ranks"] == [] and state.ranks_version == 0


def test_another_ranks_steps_and_metrics_stay_out_of_the_jobs_curves():
    state = RunState()
    state.apply_many(
        [
            {"type": "start", "seq": 1, "time": 1.0, "name": "job", "rank": 0},
            {"type": "step", "seq": 2, "time": 2.0, "step": 1, "loss": 1.0, "rank": 0},
            {"type": "step", "seq": 3, "time": 2.0, "step": 1, "loss": 9.0, "rank": 1},
            {"type": "metrics", "seq": 4, "time": 2.0, "step": 1, "acc": 0.5, "rank": 0},
            {"type": "metrics", "seq": 5, "time": 2.0, "step": 1, "acc": 0.1, "rank": 1},
        ]
    )
    assert state.series["loss"].total == 1 and state.series["loss"].latest == 1.0
    assert state.last_metrics == {"acc": 0.5}


def test_a_damaged_ranks_event_is_read_field_by_field_and_never_raises():
    bad = [
        "not a rank",
        {"rank": "x", "step": 3},  # no usable rank: left out
        {"rank": -1},
        {
            "rank": 1,
            "step": "many",
            "status": "exploded",
            "host": 42,
            "pid": 2**80,
            "age": math.nan,
            "step_time": -1.0,
            "data_time": [0.1],
            "alive": "yes",
            "error": {"a": 1},
            "nonfinite_step": 7,
            "device": "cuda:1\x1b[31m",
        },
        {"rank": 2, "samples_per_s": None, "memory": None, "alive": None, "step": 4},
    ]
    state = RunState()
    state.apply_many(job_events(3, []))
    state.apply_many(
        [
            {"type": "ranks", "seq": 100, "world_size": "3", "ranks": bad},
            {"type": "ranks", "seq": 101, "world_size": 3, "ranks": {"0": {}}},
            {"type": "ranks", "seq": 102},
        ]
    )
    by_rank = {r["rank"]: r for r in state.ranks}
    assert sorted(by_rank) == [0, 1, 2]
    one = by_rank[1]
    assert one["nonfinite_step"] == 7
    assert one["host"] == "node0" and one["pid"] == 1001  # the start's stay
    for field in ("status", "age", "step_time", "data_time", "alive", "error"):
        assert field not in one, field
    assert "step" not in one
    two = by_rank[2]
    assert two["samples_per_s"] is None and two["alive"] is None and two["step"] == 4
    assert state.world_size == 3
    # The doctor's reader checks the same way.
    event = typed_event({"type": "ranks", "world_size": "2", "ranks": bad})
    assert "world_size" not in event and [r["rank"] for r in event["ranks"]] == [1, 2]
    assert typed_event({"type": "ranks", "ranks": "x"}) == {"type": "ranks"}
    assert typed_event({"type": "step", "step": 1, "rank": "x"}) == {"type": "step", "step": 1}
    assert typed_rank_summary({"rank": 3, "error": "e" * 10_000})["error"] == "e" * 4096


def test_ranks_are_bounded_however_many_a_log_claims():
    state = RunState()
    huge = [{"rank": r, "step": 1} for r in range(MAX_RANKS + 50)]
    state.apply({"type": "ranks", "seq": 1, "world_size": MAX_RANKS + 50, "ranks": huge})
    assert len(state.ranks) == MAX_RANKS


def test_ranks_travel_in_the_snapshot_an_attaching_ui_starts_from():
    state = RunState()
    report = [summary(0), summary(1, age=45.0, alive=None)]
    state.apply_many(job_events(2, [report]))
    wire = json.loads(json.dumps(state.snapshot()))
    received = RunState.from_snapshot(wire)
    assert received.world_size == 2
    assert received.ranks == state.ranks and received.ranks[1]["age"] == 45.0
    # A snapshot from before distributed jobs: one process.
    del wire["ranks"], wire["world_size"]
    assert RunState.from_snapshot(wire).world_size == 1


def test_a_log_with_ranks_loads_into_the_state_its_events_make_one_by_one(tmp_path):
    reports = [[summary(r, step=10 * i) for r in range(8)] for i in range(1, 30)]
    reports[-1][5] = summary(5, step=200, age=60.0)
    log = job_events(8, reports)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in log))
    loaded = load_run_state(path, fold_every=50)
    live = RunState()
    live.apply_many(log)
    assert loaded.ranks[5]["age"] == 60.0 and loaded.ranks[5]["step"] == 200
    got, expected = loaded.snapshot(), live.snapshot()
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_the_replay_cache_keeps_the_ranks(tmp_path):
    log = job_events(2, [[summary(0), summary(1, nonfinite_step=12)]])
    log.append({"type": "end", "seq": 10_000, "time": 2000.0, "status": "completed", "step": 10})
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in log))
    state = load_run_state(path)
    assert write_state_cache(tmp_path, state, path)
    cached = load_cached_state(tmp_path)
    assert cached is not None and cached.world_size == 2
    assert cached.ranks[1]["nonfinite_step"] == 12


def write_rank_log(run_dir, rank, events):
    folder = run_dir / "ranks" / str(rank)
    folder.mkdir(parents=True)
    lines = [
        json.dumps({"seq": i, "time": 1000.0 + i, "rank": rank, **e})
        for i, e in enumerate(events, 1)
    ]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n")


def test_the_ranks_own_logs_say_how_each_ended(tmp_path):
    """rank 0's last report predates the ends; each rank's log has them."""
    report = [summary(0, step=30), summary(1, step=30), summary(2, step=30, status="running")]
    state = RunState()
    state.apply_many(job_events(3, [report]))
    steps = [{"type": "step", "step": s, "loss": 1.0} for s in range(1, 36)]
    write_rank_log(
        tmp_path,
        1,
        [
            {"type": "start", "host": "node0", "pid": 1001},
            *steps,
            {"type": "step", "step": 36, "loss": math.inf},
            {
                "type": "end",
                "status": "failed",
                "step": 36,
                "error": "Traceback\nRuntimeError: boom",
            },
        ],
    )
    # Rank 2 was killed: its log stops without an end, so rank 0's word on it stays.
    write_rank_log(tmp_path, 2, [{"type": "start"}, *steps[:20]])
    version = state.ranks_version
    state.apply_rank_finals(read_rank_logs(tmp_path))
    one, two = state.ranks[1], state.ranks[2]
    assert one["status"] == "failed" and one["step"] == 36 and one["nonfinite_step"] == 36
    assert one["error"].endswith("RuntimeError: boom")
    assert two["status"] == "running" and two["step"] == 30  # its log got less far
    assert state.ranks_version > version
    assert state.ranks[0]["step"] == 30  # rank 0 has no log of its own under ranks/


def test_rank_zeros_end_is_the_jobs_end_however_the_log_is_read(tmp_path):
    log = job_events(2, [[summary(0, step=10), summary(1, step=10)]])
    log.append({"type": "end", "seq": 10_000, "time": 2000.0, "status": "failed", "step": 12})
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in log))
    live = RunState()
    live.apply_many(log)
    for state in (live, load_run_state(path)):
        assert state.ranks[0]["status"] == "failed" and state.ranks[0]["step"] == 10
        assert state.ranks[1]["status"] == "running"


# -- laggards ----------------------------------------------------------------------------


def test_a_healthy_job_has_no_laggards():
    ranks = [summary(r, step=500 + r % 2, age=0.1 * r) for r in range(64)]
    assert find_laggards(ranks) == {}


def test_each_kind_of_laggard_is_named_with_its_reason():
    ranks = [summary(r) for r in range(10)]
    ranks[1] = summary(1, alive=False)
    ranks[2] = summary(2, status="failed", error="Traceback…\nValueError: bad batch")
    ranks[3] = summary(3, nonfinite_step=480)
    ranks[4] = summary(4, age=45.0, step=450)
    ranks[5] = summary(5, step_age=40.0, step=300)
    ranks[6] = summary(6, step=460)  # 40 steps of 0.1 s: 4 s behind
    ranks[7] = summary(7, step_time=0.3)
    ranks[8] = summary(8, data_time=0.09)
    laggards = find_laggards(ranks)
    assert {rank: laggard.reasons for rank, laggard in laggards.items()} == {
        1: (DEAD,),
        2: (FAILED_RANK,),
        3: (NONFINITE,),
        4: (SILENT,),
        5: (STUCK, BEHIND),
        6: (BEHIND,),
        7: (SLOW_STEP,),
        8: (SLOW_DATA,),
    }
    assert laggards[2].words == "failed: ValueError: bad batch"
    assert laggards[4].words == "silent 45s" and laggards[4].severity == "error"
    assert laggards[6].words == "40 steps behind" and laggards[6].severity == "warning"
    assert laggards[8].words == "data 90 ms, 9.0× the others"
    assert slowest(ranks) is not None


def test_two_ranks_a_slow_loader_on_one_is_named_and_the_other_not():
    ranks = [summary(0, data_time=0.01), summary(1, data_time=0.05)]
    assert {r: g.reasons for r, g in find_laggards(ranks).items()} == {1: (SLOW_DATA,)}


def test_what_is_not_a_laggard():
    # Tiny absolute differences are noise, however large the ratio.
    assert find_laggards([summary(0, data_time=0.0001), summary(1, data_time=0.002)]) == {}
    # Reports lag the steps: ranks in lockstep at 40 steps/s show steps 20 apart.
    fast = [summary(0, step=184, step_time=0.025), summary(1, step=164, step_time=0.025)]
    assert find_laggards(fast) == {}
    # A report older than the newest by 3 s lags 3 s of steps more (here 60 in all).
    assert find_laggards([summary(0, step=560, age=0.1), summary(1, step=500, age=3.1)]) == {}
    # A paused job: nobody's step moves, so nobody is stuck.
    paused = [summary(r, status="paused", step_age=300.0) for r in range(4)]
    assert find_laggards(paused) == {}
    # Ranks that ended well are not dead, however old their news.
    done = [summary(r, status="completed", alive=False, age=500.0, step=1000) for r in range(2)]
    assert find_laggards(done) == {}
    # A finished job's straggler still was one; its news and steps are not compared.
    done[1] = summary(1, status="completed", alive=False, age=500.0, step=990, data_time=0.05)
    assert {r: g.reasons for r, g in find_laggards(done).items()} == {1: (SLOW_DATA,)}
    # The job's own rank_timeout sets how long a silence is allowed.
    slow_news = [summary(0), summary(1, age=45.0)]
    assert find_laggards(slow_news, limits_for({"rank_timeout": 60})) == {}
    assert SILENT in find_laggards(slow_news, limits_for({"rank_timeout": "x"}))[1].reasons


def test_the_median_of_the_others_is_exact():
    rng = random.Random(3)
    for count in (2, 3, 4, 7, 50):
        ranks = [summary(r, step_time=rng.choice([0.1, 0.2, rng.random()])) for r in range(count)]
        medians = _medians_of_others(ranks, "step_time")
        for r in ranks:
            others = [o["step_time"] for o in ranks if o is not r]
            assert medians[r["rank"]] == statistics.median(others)


def test_laggards_of_four_thousand_ranks_are_cheap_to_find():
    """Not timed (CI is busy): the work is one sort, so this finishes at once or not."""
    ranks = [summary(r, data_time=0.01 + (r % 7) * 0.001) for r in range(4096)]
    ranks[4000] = summary(4000, data_time=0.5)
    assert list(find_laggards(ranks, LaggardLimits())) == [4000]
