"""What the app shows of a distributed job, through Pilot over real job directories: the
rank strip (laggards named, many ranks summed up in two lines, absent for one process),
the `R` table of every rank, and a replay that reads each rank's own log."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time

import pytest
from rich.cells import cell_len
from test_run_state_ranks import job_events, summary, write_rank_log

from tuimon.ui.app import TuimonApp
from tuimon.ui.screens.rank_screen import RankScreen, RankTable
from tuimon.ui.widgets.rank_strip import RankStrip, strip_lines

from conftest import until

CONTROLS = [chr(c) for c in range(32) if chr(c) not in "\n\t"] + ["\x7f", "\x9b"]


def write_job(run_dir, world_size, reports, *, end=True):
    run_dir.mkdir(parents=True, exist_ok=True)
    events = job_events(world_size, reports)
    if end:
        step = events[-1].get("step", 0)
        events.append(
            {"type": "end", "seq": 10**6, "time": 5000.0, "status": "completed", "step": step}
        )
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def strip_text(app) -> str:
    return "\n".join(app.query_one(RankStrip).plain_lines())


def table_rows(screen) -> dict[int, list[str]]:
    return screen.query_one(RankTable).row_texts()


def screen_text(app) -> str:
    """Every character the screen would send to the terminal as text."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return "".join(segment.text for line in update.strips for strip in line for segment in strip)


async def replayed(app, pilot):
    await until(pilot, lambda: app.connection_status == "replay")


async def test_two_ranks_the_strip_names_the_silent_rank_and_r_lists_both(tmp_path):
    report = [summary(0, step=40), summary(1, step=31, age=45.0, alive=None)]
    run_dir = write_job(tmp_path / "job", 2, [report] * 4, end=False)
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await replayed(app, pilot)
        strip = app.query_one(RankStrip)
        await until(pilot, lambda: strip.display and "r1" in strip_text(app))
        lines = strip.plain_lines()
        assert len(lines) == 2 and strip.region.height == 2
        assert lines[0].startswith("2 ranks · steps 31–40")
        assert "r1 (node0) silent 45s" in lines[0]
        assert "r0 320/s @40" in lines[1] and "r1 SILENT @31" in lines[1]
        # The curves are rank 0's: its 40 steps.
        assert app.state.series["loss"].total == 40
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RankScreen))
        screen = app.screen
        rows = table_rows(screen)
        assert sorted(rows) == [0, 1]
        assert rows[1][:6] == ["1", "0", "node0", "1001", "cuda:1", "31"]
        assert rows[1][6] == "SILENT" and rows[1][-2:] == ["45s ago", "silent 45s"]
        assert rows[0][6] == "running" and rows[0][10] == "1.0 GiB" and rows[0][-1] == ""
        # Redrawn on the timer only when the ranks change.
        draws = screen.draws
        for _ in range(5):
            await pilot.pause(0.06)
        assert screen.draws == draws
        with app.state.lock:
            app.state.apply(
                {
                    "type": "ranks",
                    "seq": 10**7,
                    "world_size": 2,
                    "ranks": [summary(0, step=50), summary(1, step=50)],
                }
            )
        await until(pilot, lambda: screen.draws > draws)
        assert table_rows(screen)[1][5] == "50" and table_rows(screen)[1][6] == "running"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, RankScreen))
        await until(pilot, lambda: "all ranks keep up" in strip_text(app))


async def test_sixty_four_ranks_stay_two_lines_and_name_the_slowest(tmp_path):
    report = [summary(r) for r in range(64)]
    report[17] = summary(17, data_time=0.08, samples_per_s=200.0)
    run_dir = write_job(tmp_path / "job", 64, [report])
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(100, 30)) as pilot:
        await replayed(app, pilot)
        strip = app.query_one(RankStrip)
        await until(pilot, lambda: "r17" in strip_text(app))
        lines = strip.plain_lines()
        assert len(lines) == 2 and strip.region.height == 2
        assert lines[0].startswith("64 ranks · step 500 · slowest r17 200 samples/s")
        assert "r17 (node2) data 80 ms, 8.0× the others" in lines[0]
        assert lines[1].startswith("r17! 200/s @500  r0 320/s @500")  # the laggard first
        assert lines[1].endswith("more") and all(cell_len(line) <= 98 for line in lines)
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RankScreen))
        rows = table_rows(app.screen)
        assert sorted(rows) == list(range(64))
        await pilot.pause()
        assert "node0" in screen_text(app) and "1063" not in screen_text(app)  # rank 63's pid
        await pilot.press("end")  # only the rows on screen are drawn: these, now
        await until(pilot, lambda: "1063" in screen_text(app))
        assert "rank  node  host" in screen_text(app)  # the header stays on top
        assert rows[17][6] == "running" and rows[17][-1].startswith("data 80 ms, 8.0×")


async def test_a_single_process_run_has_no_strip_and_no_rank_table(tmp_path):
    run_dir = tmp_path / "one"
    run_dir.mkdir()
    events = [
        {"type": "start", "seq": 1, "time": 1.0, "name": "one", "total_steps": 10},
        *(
            {"type": "step", "seq": s + 1, "time": 1.0 + s, "step": s, "loss": 1.0}
            for s in range(1, 6)
        ),
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await replayed(app, pilot)
        await until(pilot, lambda: app.state.step == 5)
        await pilot.pause(0.1)
        strip = app.query_one(RankStrip)
        assert not strip.display and strip.region.height == 0 and strip.draws == 0
        assert not strip.is_stale(app.state, app.options)
        await pilot.press("R")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, RankScreen)
        assert any("one process" in n.message for n in app._notifications)


async def test_a_replay_reads_how_each_rank_ended_from_its_own_log(tmp_path):
    report = [summary(r, step=30) for r in range(3)]
    run_dir = write_job(tmp_path / "job", 3, [report] * 3)
    steps = [{"type": "step", "step": s, "loss": 1.0} for s in range(1, 34)]
    write_rank_log(
        run_dir,
        1,
        [
            {"type": "start", "host": "node0", "pid": 1001},
            *steps,
            {"type": "step", "step": 34, "loss": math.nan},
            {"type": "end", "status": "failed", "step": 34, "error": "Tb…\nRuntimeError: boom"},
        ],
    )
    write_rank_log(run_dir, 2, [{"type": "start"}, *steps, {"type": "end", "status": "completed"}])
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(140, 40)) as pilot:
        await replayed(app, pilot)
        await until(pilot, lambda: "boom" in strip_text(app))
        lines = app.query_one(RankStrip).plain_lines()
        assert "r1 (node0) failed: RuntimeError: boom, NaN/inf at step 34" in lines[0]
        assert "r1 FAILED @34" in lines[1] and "r2 320/s @33" in lines[1]
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RankScreen))
        rows = table_rows(app.screen)
        assert rows[1][6] == "FAILED" and rows[1][-1].startswith("failed: RuntimeError: boom")
        assert rows[1][11] == "34" and rows[2][6] == "completed"


async def test_text_from_the_log_reaches_the_terminal_as_plain_text(tmp_path):
    evil = "\x1b]0;pwned\x07\x1b[2J[bold red]loud[/]\x9b31m"
    report = [
        summary(0, host=f"h{evil}"),
        summary(1, host=f"h{evil}", status="failed", error=f"RuntimeError: {evil}"),
    ]
    run_dir = write_job(tmp_path / "job", 2, [report])
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(140, 40)) as pilot:
        await replayed(app, pilot)
        await until(pilot, lambda: "pwned" in strip_text(app))
        await pilot.pause()
        shown = screen_text(app)
        assert "[bold red]loud[/]" in shown  # markup from the log is shown, not applied
        assert not [c for c in CONTROLS if c in shown]
        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, RankScreen))
        await pilot.pause()
        shown = screen_text(app)
        assert "pwned" in shown and not [c for c in CONTROLS if c in shown]


def test_the_strip_fits_any_width_and_any_number_of_ranks():
    for count in (2, 8, 64, 4096):
        ranks = [summary(r) for r in range(count)]
        ranks[-1] = summary(count - 1, alive=False)
        for width in (40, 80, 200):
            lines = strip_lines(ranks, count, width)
            assert len(lines) == 2
            assert lines[1].cell_len <= width
            assert f"r{count - 1} DEAD" in lines[1].plain or width < 20


async def test_a_killed_jobs_attach_reads_its_ranks_logs(tmp_path):
    """`tuimon attach` on a job whose worker is gone shows the log, and each rank's own log
    says how far it got."""
    gone = subprocess.Popen(["true"])  # a pid that is not running any more
    gone.wait()
    run_dir = write_job(tmp_path / "job", 2, [[summary(0, step=20), summary(1, step=20)]] * 2)
    lines = (run_dir / "events.jsonl").read_text().splitlines()[:-1]  # killed: no end
    start = json.loads(lines[0]) | {"pid": gone.pid, "host": socket.gethostname()}
    lines[0] = json.dumps(start | {"time": time.time()})
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n")
    steps = [{"type": "step", "step": s, "loss": 1.0} for s in range(1, 26)]
    write_rank_log(run_dir, 1, [{"type": "start"}, *steps])
    app = TuimonApp(run_dir, fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.connection_status == "worker-gone")
        await until(pilot, lambda: "r1 320/s @25" in strip_text(app))


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 60)])
async def test_with_the_strip_every_panel_still_fits_with_its_title(tmp_path, width, height):
    from tuimon.ui.widgets.panel import Panel

    report = [summary(0), summary(1, age=45.0, alive=None)]
    run_dir = write_job(tmp_path / "job", 2, [report] * 3, end=False)
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(width, height)) as pilot:
        await replayed(app, pilot)
        await until(pilot, lambda: "SILENT" in strip_text(app))
        app.refresh_panels(everything=True)
        await pilot.pause()
        screen = app.screen.region
        for panel in app.query(Panel):
            if panel.id in ("status", "ranks"):
                continue
            title = str(panel.border_title)
            assert screen.contains_region(panel.region), panel.id
            assert panel.region.width >= len(title) + 4 and panel.region.height >= 3, panel.id
            lines = panel.plain_lines()
            assert len(lines) <= panel.content_size.height, panel.id
            assert max(cell_len(line) for line in lines) <= panel.content_size.width, panel.id
        strip = app.query_one(RankStrip)
        assert strip.region.height == 2 and screen.contains_region(strip.region)


def test_the_strip_says_when_fewer_ranks_are_known_than_the_job_has():
    first, cells = strip_lines([summary(0), summary(1, step=499)], 4, 80)
    assert first.plain.startswith("4 ranks (2 known) · steps 499–500 · 320 samples/s each")
    assert cells.plain == "r0 320/s @500  r1 320/s @499"
