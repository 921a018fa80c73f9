"""The runs screen (`tuimon` alone): its rows, filter and sort as pure functions, then the
app under Pilot on real runs in every state (a live worker, one killed with SIGKILL, a
failed one, a completed one)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.widgets import Button, Input

from tuimon.catalog.machine_gpus import MachineGpu
from tuimon.catalog.roots import ROOTS_ENV
from tuimon.catalog.run_summary import DIED, RunSummary
from tuimon.control.client import is_alive
from tuimon.errors import UsageError
from tuimon.run.events import COMPLETED, FAILED, RUNNING, STOPPED
from tuimon.run.log_reader import read_events
from tuimon.runs_launch import parse_roots
from tuimon.ui.runs_app import RunsApp
from tuimon.ui.runs_view import (
    OPEN_ATTACH,
    OPEN_REPLAY,
    SORT_LOSS,
    SORT_NAME,
    SORT_STARTED,
    SORT_STATE,
    SORT_STEP,
    SORTS,
    RunFilter,
    RunsViewState,
    next_sort,
    row_text,
    sort_runs,
    visible_runs,
)
from tuimon.ui.screens.choice_screen import ChoiceScreen
from tuimon.ui.screens.help_screen import HelpScreen
from tuimon.ui.screens.runs_screen import NO_RUNS_HINT, RunsScreen
from tuimon.ui.screens.text_screen import TextScreen
from tuimon.ui.widgets.machine_gpu_panel import MachineGpuPanel, gpu_lines

from conftest import (
    ENDLESS_CONFIG,
    REPO,
    Worker,
    kill_workers,
    launch_worker,
    run_tuimon,
    until,
    worker_env,
)

MLP = REPO / "configs" / "mlp.yaml"


# -- the rows, the filter and the sort, without Textual ----------------------------------


def summary(name: str, status: str, **fields) -> RunSummary:
    return RunSummary(run_dir=Path("/runs") / name, name=name, status=status, **fields)


def test_a_row_says_state_step_loss_trend_alert_gpus_and_times():
    run = summary(
        "bert-lr3",
        RUNNING,
        step=120,
        total_steps=1000,
        loss=0.5,
        loss_trend=-0.3,
        alert={"rule": "loss_spike", "severity": "warning", "message": "m", "step": 100},
        alerts_open=2,
        gpus=[0, 1],
        gpu_mem=3 * 2**30,
        started=1_000_000.0,
        duration=3725.0,
    )
    mark, name, state, step, loss, alert, gpu, started, duration = row_text(
        run, marked=True, now=1_000_100.0
    )
    assert mark == "✓" and name == "● bert-lr3" and state == RUNNING
    assert step == "120/1000"
    assert loss == "0.5 ↓"  # falling
    assert alert == "⚠ loss_spike +1"
    assert gpu.startswith("0,1 (") and "GiB" in gpu
    assert started == time.strftime("%H:%M:%S", time.localtime(1_000_000.0))
    assert duration == "1h02m"
    rising = row_text(summary("r", RUNNING, loss=2.0, loss_trend=0.5))
    assert rising[4] == "2 ↑"
    flat = row_text(summary("r", RUNNING, loss=2.0, loss_trend=0.001))
    assert flat[4] == "2 →"
    bare = row_text(summary("new", "starting"))
    assert bare[0] == " " and bare[3] == "n/a" and bare[4] == "n/a" and bare[5] == ""


def test_text_from_the_log_is_made_printable_in_a_row():
    run = summary(
        "x",
        FAILED,
        alert={"rule": "\x1b[31mrule", "severity": "error", "message": "", "step": 1},
        alerts_open=1,
    )
    run.name = "evil\x1b]0;title\x07\nname"
    cells = row_text(run)
    assert all("\x1b" not in cell and "\n" not in cell and "\x07" not in cell for cell in cells)
    assert cells[5] == "✖ rule"


def test_the_filter_matches_words_of_the_name_and_state_terms():
    runs = [
        summary("bert-base", RUNNING),
        summary("bert-large", FAILED),
        summary("gpt-small", DIED),
        summary("mlp", COMPLETED),
    ]

    def names(text):
        return [r.name for r in runs if RunFilter.parse(text).matches(r)]

    assert names("") == ["bert-base", "bert-large", "gpt-small", "mlp"]
    assert names("bert") == ["bert-base", "bert-large"]
    assert names("BERT large") == ["bert-large"]
    assert names("state:failed") == ["bert-large"]
    assert names("state:fail state:died") == ["bert-large", "gpt-small"]
    assert names("bert state:run") == ["bert-base"]
    assert names("state:") == names("")  # an empty state term filters nothing
    assert not RunFilter.parse("  ") and RunFilter.parse("state:x")


def test_each_sort_orders_the_runs_and_missing_values_go_last():
    runs = [
        summary("b", COMPLETED, started=2.0, loss=0.3, step=50),
        summary("a", DIED, started=3.0, loss=None, step=None),
        summary("c", RUNNING, started=1.0, loss=0.1, step=500),
        summary("d", FAILED, started=None, loss=math.nan, step=10),
    ]

    def order(sort):
        return [r.name for r in sort_runs(runs, sort)]

    assert order(SORT_STARTED) == ["a", "b", "c", "d"]
    assert order(SORT_NAME) == ["a", "b", "c", "d"]
    assert order(SORT_STATE) == ["c", "a", "d", "b"]  # live, died, failed, completed
    assert order(SORT_LOSS) == ["c", "b", "a", "d"]  # lowest first; none and NaN last
    assert order(SORT_STEP) == ["c", "b", "d", "a"]
    assert [next_sort(s) for s in SORTS] == [*SORTS[1:], SORTS[0]]
    assert [r.name for r in visible_runs(runs, "state:died state:failed", SORT_NAME)] == ["a", "d"]


def test_the_gpu_panel_names_the_runs_on_each_gpu_or_says_why_there_is_none():
    busy = MachineGpu(0, "H200\x1b[2J", 87.0, 30 << 30, 80 << 30, [f"r{i}" for i in range(6)])
    idle = MachineGpu(1, None, None, None, None, [])
    first, second = gpu_lines([busy, idle], "")
    assert first.plain == (
        "GPU0 util  87% mem ███░░░░░ 30.0 GiB/80.0 GiB  H200 · runs: r0, r1, r2, r3 +2"
    )
    assert second.plain == "GPU1 util  n/a mem ········ n/a/n/a · no tuimon run"
    [why] = gpu_lines([], "no NVIDIA GPU (NVML library not found)")
    assert why.plain == "no NVIDIA GPU (NVML library not found)"


def test_roots_come_from_each_root_or_the_default_list_and_bad_usage_is_refused(
    monkeypatch, tmp_path
):
    monkeypatch.setenv(ROOTS_ENV, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert parse_roots([]) == [Path("runs"), tmp_path / "a", tmp_path / "b"]
    assert parse_roots(["--root", "x", "--root=y"]) == [Path("x"), Path("y")]
    with pytest.raises(UsageError, match="--root"):
        parse_roots(["--root"])
    with pytest.raises(UsageError, match="unexpected argument"):
        parse_roots(["--root", "x", "stray"])
    done = run_tuimon("runs", "--bogus", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "unexpected argument(s) --bogus" in done.stderr


def test_tuimon_with_stdout_not_a_terminal_prints_the_runs_as_ls_does(tmp_path):
    """`tuimon > file` or `tuimon | grep`: no UI to draw, so the runs screen's table as text."""
    run = tmp_path / "root" / "piped-run"
    run.mkdir(parents=True)
    start = {"type": "start", "name": "piped-run", "time": 1.0, "seq": 1, "total_steps": 5}
    end = {"type": "end", "status": "completed", "time": 2.0, "seq": 3}
    step = {"type": "step", "step": 5, "loss": 0.25, "time": 1.5, "seq": 2}
    run.joinpath("events.jsonl").write_text(
        "".join(json.dumps(event) + "\n" for event in (start, step, end))
    )
    done = run_tuimon("--root", str(tmp_path / "root"), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "piped-run" in line)
    assert "completed" in line and "5/5" in line
    assert "\x1b" not in done.stdout  # text, not a screen


async def test_with_no_runs_the_screen_says_how_to_start_one(tmp_path):
    app = RunsApp([tmp_path], refresh_s=0.2)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = screen_of(app)
        await until(pilot, lambda: NO_RUNS_HINT in screen.title_text.plain)
        assert screen.table.run_dirs == [] and screen.table.selected is None
        await pilot.press("enter", "d", "x", "space", "c")  # nothing selected: nothing breaks
        assert screen.toasts[:4] == ["no run selected"] * 3 + [
            "select 2 or more runs with space to compare them (0 selected)"
        ]
        assert app.return_value is None and isinstance(app.screen, RunsScreen)


# -- real runs in every state -------------------------------------------------------------


@dataclass
class Runs:
    root: Path
    live: Worker
    completed: Path
    failed: Path
    died: Path

    @property
    def all(self) -> list[Path]:
        return [self.live.run_dir, self.completed, self.failed, self.died]


def named(name: str, text: str = ENDLESS_CONFIG) -> str:
    return text.replace("name: endless", f"name: {name}", 1)


FAILING = named("broken").replace(
    "  name: mlp\n  hidden: [32]\n", "  name: faulty_models:raises_at\n  step: 5\n"
)


def step_count(run_dir: Path) -> int:
    return sum(1 for e in read_events(run_dir / "events.jsonl") if e["type"] == "step")


def end_status(run_dir: Path) -> str | None:
    ends = [e for e in read_events(run_dir / "events.jsonl") if e["type"] == "end"]
    return ends[-1]["status"] if ends else None


def poll(predicate, timeout: float = 120.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} never held"
        time.sleep(0.1)


def start_runs(root: Path, work: Path) -> Iterator[Runs]:
    """Four runs under `root`, started at once: one completed (the shipped MLP config),
    one failed (its model raises at step 5), one killed with SIGKILL while it trains
    (died), and one left running."""
    root.mkdir()
    configs = {}
    for name, text in (("live", named("live-run")), ("killed", named("killed-run"))):
        configs[name] = work / f"{name}.yaml"
        configs[name].write_text(text, encoding="utf-8")
    (work / "broken.yaml").write_text(FAILING, encoding="utf-8")
    one_thread = dict(worker_env(), OMP_NUM_THREADS="1")
    finished = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tuimon",
                str(config),
                "--headless",
                "--quiet",
                "--run-dir",
                str(root / dirname),
                *extra,
            ],
            env=one_thread,
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for config, dirname, extra in (
            (MLP, "done", ["--set", "train.max_steps=30"]),
            (work / "broken.yaml", "broken", []),
        )
    ]
    workers = [
        launch_worker(configs["live"], root / "live", ["--quiet"], work),
        launch_worker(configs["killed"], root / "killed", ["--quiet"], work),
    ]
    try:
        for worker in workers:
            worker.wait_ready(timeout=120)
        live, killed = workers
        poll(lambda: step_count(killed.run_dir) >= 3, what="the run to kill stepping")
        killed.process.send_signal(signal.SIGKILL)
        killed.process.wait(timeout=30)
        for process in finished:
            process.wait(timeout=300)
        yield Runs(root, live, root / "done", root / "broken", root / "killed")
    finally:
        for process in finished:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            if process.stderr:
                process.stderr.close()
        kill_workers(workers)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    work = tmp_path_factory.mktemp("runs-screen")
    yield from start_runs(work / "runs", work)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def screen_of(app: RunsApp) -> RunsScreen:
    return app.runs_screen


def status_cell(screen: RunsScreen, run_dir: Path) -> str:
    row = screen.table.row_plain(run_dir)
    return row[2] if row else ""


def step_of(row: list[str]) -> int:
    """The step in a row's step cell ("120/1000" or "120")."""
    return int(row[3].split("/")[0])


async def all_shown(pilot, screen: RunsScreen, runs: Runs) -> None:
    expected = {
        runs.live.run_dir: RUNNING,
        runs.completed: COMPLETED,
        runs.failed: FAILED,
        runs.died: DIED,
    }
    await until(
        pilot,
        lambda: all(status_cell(screen, d) == s for d, s in expected.items()),
        timeout=120,
    )


async def test_the_table_shows_every_run_in_its_state_with_its_figures(runs):
    nowhere = runs.root.parent / "nowhere"  # a --root typo: said, not an error
    app = RunsApp([runs.root, nowhere], refresh_s=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        title = screen.title_text.plain
        assert title.startswith(f"tuimon runs · 4 runs under {runs.root}, {nowhere}")
        assert title.endswith(f"no such directory: {nowhere}")
        assert sorted(screen.table.run_dirs) == sorted(runs.all)
        done = screen.table.row_plain(runs.completed)
        assert done[1] == "● mlp" and done[3] == "30/30"
        assert float(done[4].split()[0]) > 0  # the last loss, a number
        broken = screen.table.row_plain(runs.failed)
        assert broken[1] == "● broken" and broken[2] == FAILED
        killed = screen.table.row_plain(runs.died)
        assert killed[1] == "● killed-run" and step_of(killed) >= 3
        # The live run goes on: its step grows in place, without rebuilding the rows.
        rebuilds = screen.table.rebuilds
        first = step_of(screen.table.row_plain(runs.live.run_dir))
        await until(pilot, lambda: step_of(screen.table.row_plain(runs.live.run_dir)) > first)
        assert screen.table.rebuilds == rebuilds
        # No GPU here: the panel says why; with one it would list it.
        panel = screen.query_one(MachineGpuPanel)
        if screen.gpus:
            assert panel.plain_text().startswith("GPU0 ")
        else:
            assert screen.gpu_reason and panel.plain_text() == screen.gpu_reason


async def test_filter_and_sort_and_the_cursor_stays_on_its_run(runs):
    app = RunsApp([runs.root], refresh_s=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        await pilot.press("slash")
        field = screen.query_one("#runs-filter", Input)
        assert field.display and field.has_focus
        await pilot.press(*"state:failed")
        await until(pilot, lambda: screen.table.run_dirs == [runs.failed])
        await pilot.press("escape")
        await until(pilot, lambda: len(screen.table.run_dirs) == 4)
        assert not field.display and screen.view.filter_text == ""
        await pilot.press("slash", *"killed", "enter")
        await until(pilot, lambda: screen.table.run_dirs == [runs.died])
        assert screen.table.has_focus  # enter keeps the filter and goes back to the table
        await pilot.press("escape")
        await until(pilot, lambda: len(screen.table.run_dirs) == 4)

        # Put the cursor on the failed run; every sort keeps it there.
        screen.table.move_cursor(row=screen.table.run_dirs.index(runs.failed))
        await pilot.pause()
        assert screen.view.sort == SORT_STARTED
        for sort in SORTS[1:]:
            await pilot.press("o")
            assert screen.view.sort == sort
            await until(
                pilot,
                lambda sort=sort: (
                    screen.table.run_dirs == [r.run_dir for r in sort_runs(screen.runs, sort)]
                ),
            )
            assert screen.table.selected == runs.failed


async def test_a_new_run_appears_and_a_deleted_one_goes(runs, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(runs.completed, root / "first")
    app = RunsApp([root], refresh_s=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await until(pilot, lambda: screen.table.run_dirs == [root / "first"])
        shutil.copytree(runs.failed, root / "second")
        await until(
            pilot, lambda: sorted(screen.table.run_dirs) == [root / "first", root / "second"]
        )
        assert status_cell(screen, root / "second") == FAILED
        shutil.rmtree(root / "first")
        await until(pilot, lambda: screen.table.run_dirs == [root / "second"])
        assert screen.table.selected == root / "second"


async def test_help_lists_the_keys(runs):
    app = RunsApp([runs.root], refresh_s=0.2)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))


async def test_d_shows_the_doctor_report_of_the_selected_run(runs):
    app = RunsApp([runs.root], refresh_s=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        screen.table.move_cursor(row=screen.table.run_dirs.index(runs.failed))
        await pilot.pause()
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, TextScreen))
        report = app.screen.body  # type: ignore[attr-defined]
        assert report.startswith(f"tuimon doctor: broken ({runs.failed}):")
        assert "failed" in report.splitlines()[0]
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))


async def opened(runs: Runs, cursor: Path, key: str) -> tuple[str, Path] | None:
    """What the runs screen exits with when `key` is pressed on the run at `cursor`."""
    view = RunsViewState(cursor=cursor)  # as the launcher hands it back after a run's UI
    app = RunsApp([runs.root], refresh_s=0.2, view=view)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        assert screen.table.selected == cursor
        await pilot.press(key)
        await until(pilot, lambda: app.return_value is not None)
    return app.return_value


async def test_enter_attaches_to_a_live_run_and_replays_an_ended_one(runs):
    live = runs.live.run_dir
    assert await opened(runs, live, "enter") == (OPEN_ATTACH, live)
    assert await opened(runs, runs.died, "enter") == (OPEN_REPLAY, runs.died)
    assert await opened(runs, live, "r") == (OPEN_REPLAY, live)


async def test_keys_typed_after_q_do_not_change_what_the_screen_exits_with(runs):
    app = RunsApp([runs.root], refresh_s=0.2, view=RunsViewState(cursor=runs.completed))
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        screen.action_quit()
        screen.action_replay_run()  # `r` right after `q`, before the app has closed
        screen.action_open_run()
    assert app.return_value is None


async def test_space_selects_runs_and_c_compares_two_or_more(runs):
    app = RunsApp([runs.root], refresh_s=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        screen.table.move_cursor(row=screen.table.run_dirs.index(runs.completed))
        await pilot.press("space")
        await until(pilot, lambda: screen.table.row_plain(runs.completed)[0] == "✓")
        await pilot.press("c")  # one run: nothing to compare it with
        await until(pilot, lambda: any("select 2 or more" in t for t in screen.toasts))
        assert isinstance(app.screen, RunsScreen)
        screen.table.move_cursor(row=screen.table.run_dirs.index(runs.failed))
        await pilot.press("space")
        await until(pilot, lambda: screen.table.row_plain(runs.failed)[0] == "✓")
        assert screen.view.marked == [runs.completed, runs.failed]
        await pilot.press("space")  # again: deselected
        await until(pilot, lambda: screen.table.row_plain(runs.failed)[0] == " ")
        await pilot.press("space")
        from tuimon.ui.screens.compare_screen import CompareScreen

        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, CompareScreen))


async def test_x_refuses_an_ended_run_and_stops_a_live_one_after_asking(runs):
    app = RunsApp([runs.root], refresh_s=0.2)
    async with app.run_test(size=(160, 40)) as pilot:
        screen = screen_of(app)
        await all_shown(pilot, screen, runs)
        screen.table.move_cursor(row=screen.table.run_dirs.index(runs.completed))
        await pilot.pause()
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)  # nothing to ask: it has ended
        assert screen.toasts[-1] == "mlp is completed: there is nothing to stop"

        screen.table.move_cursor(row=screen.table.run_dirs.index(runs.live.run_dir))
        await pilot.pause()
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        assert is_alive(runs.live.run_dir)  # asking stops nothing
        await pilot.click(f"#{app.screen.query(Button).first().id}")  # "Stop the run"
        await until(pilot, lambda: isinstance(app.screen, RunsScreen))
        poll(lambda: end_status(runs.live.run_dir) is not None, what="the live run's end")
        assert end_status(runs.live.run_dir) == STOPPED
        await until(pilot, lambda: status_cell(screen, runs.live.run_dir) == STOPPED)
