"""Panel views as pure functions of a RunState (no running app), plus the `a` key."""

from __future__ import annotations

import io

from rich.console import Console

from tuimon.control.commands import describe
from tuimon.run.run_state import RunState
from tuimon.system.nvml import NVML
from tuimon.ui.app import TuimonApp
from tuimon.ui.plotting import ViewOptions, bar, sparkline, tick_labels
from tuimon.ui.widgets.doctor_panel import DoctorPanel
from tuimon.ui.widgets.gpu_panel import GpuPanel
from tuimon.ui.widgets.grad_panel import GradPanel, shown_rows
from tuimon.ui.widgets.host_panel import HostPanel
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import until
from fake_pynvml import FakeNVML, recorded_machines


def text_of(renderable, width) -> list[str]:
    console = Console(width=width, color_system=None, file=io.StringIO())
    with console.capture() as captured:
        console.print(renderable)
    return captured.get().rstrip("\n").split("\n")


def state_with(*events) -> RunState:
    state = RunState()
    start = {
        "type": "start",
        "seq": 1,
        "time": 100.0,
        "name": "demo",
        "total_steps": 1000,
        "steps_per_epoch": 100,
        "epochs": 10,
        "settings": {},
    }
    state.apply_many([start, *({"seq": i + 2, **e} for i, e in enumerate(events))])
    return state


def recorded_gpus(name, pid):
    machine = next(m for m in recorded_machines() if m["devices"][0].get("name") == name)
    return NVML(module=FakeNVML(machine)).sample(pid=pid)


def test_gpu_panel_shows_a_recorded_a100_under_training():
    gpus = recorded_gpus("NVIDIA A100-SXM4-80GB", pid=280059)
    state = state_with({"type": "system", "time": 101.0, "gpus": gpus[:2], "host": {}})
    lines = text_of(GpuPanel().view(state, ViewOptions(), 100, 10), 100)
    assert lines[0].startswith("GPU0 util   0%") and "NVIDIA A100-SXM4-80GB" in lines[0]
    assert "GPU1 util 100%" in lines[2]
    assert "21.9 GiB/80.0 GiB" in lines[1] and "28°C" in lines[1] and "68 W/400 W" in lines[1]
    assert "this run n/a" in lines[1]  # another process's GPU: can't tell
    assert "this run 15.6 GiB" in lines[3]  # ours
    compact = text_of(GpuPanel().view(state, ViewOptions(), 50, 2), 50)
    assert len(compact) == 2 and compact[1].startswith("GPU1 util 100% mem 15.6 GiB/80.0 GiB")


def test_gpu_panel_says_why_there_is_no_gpu_and_na_fields():
    state = state_with(
        {
            "type": "system",
            "time": 101.0,
            "gpus": [],
            "host": {},
            "gpu_status": "no NVIDIA GPU (NVML library not found)",
        }
    )
    assert text_of(GpuPanel().view(state, ViewOptions(), 60, 3), 60) == [
        "no NVIDIA GPU (NVML library not found)"
    ]
    gtx = recorded_gpus("NVIDIA GeForce GTX 680", pid=1)
    state = state_with({"type": "system", "time": 101.0, "gpus": gtx, "host": {}})
    lines = text_of(GpuPanel().view(state, ViewOptions(), 100, 4), 100)
    assert "util n/a" in lines[0] and "n/a/n/a" in lines[1]


def test_host_panel_shows_load_and_data_wait():
    steps = [
        {
            "type": "step",
            "step": s,
            "time": 100.0 + s,
            "loss": 1.0,
            "lr": 0.1,
            "step_time": 1.0,
            "data_time": 0.6,
            "samples": 10,
        }
        for s in range(1, 11)
    ]
    state = state_with(
        {
            "type": "system",
            "time": 101.0,
            "gpus": [],
            "host": {
                "cpu_percent": 50.0,
                "ram_used": 2**33,
                "ram_total": 2**35,
                "process_rss": 2**30,
                "cpu_count": 8,
            },
        },
        *steps,
    )
    lines = text_of(HostPanel().view(state, ViewOptions(), 60, 4), 60)
    assert lines[0].startswith("CPU  50% ") and "8 cores" in lines[0]
    assert "8.0 GiB/32.0 GiB" in lines[1] and "1.0 GiB RSS" in lines[2]
    assert "data wait 60% of step time" in lines[3]


def test_doctor_lists_alerts_newest_first_with_their_fix():
    alerts = [
        {
            "type": "alert",
            "step": 10,
            "rule": "stall",
            "severity": "info",
            "message": "loss flat for 500 steps",
            "suggestion": "raise the LR",
        },
        {
            "type": "alert",
            "step": 20,
            "rule": "divergence",
            "severity": "error",
            "message": "loss rose 1e6x in 40 steps",
            "suggestion": "try LR 0.3",
            "action": {"cmd": "scale-lr", "factor": 0.1},
        },
    ]
    state = state_with(*alerts, {"type": "message", "level": "warning", "text": "CIFAR absent"})
    panel = DoctorPanel()
    lines = text_of(panel.view(state, ViewOptions(), 60, 20), 60)
    assert lines[0].startswith(" ERROR  divergence at step 20")
    assert "loss rose 1e6x in 40 steps" in lines[1] and "→ try LR 0.3" in lines[2]
    assert lines[3] == "[a] apply: scale LR ×0.1"
    assert lines[4].startswith(" INFO  stall at step 10")
    assert lines[-1] == "note: CIFAR absent"
    assert panel.selected_alert["rule"] == "divergence"
    assert describe({"cmd": "set-lr", "value": 0.003}) == "set LR to 0.003"


def test_doctor_draws_a_damaged_logs_actions_instead_of_crashing():
    """Wrong types in an alert's action or an autofix control (a damaged or crafted log)
    are shown as they are: `:g` on a string used to raise inside the panel's view."""
    state = state_with(
        {
            "type": "alert",
            "step": 3,
            "rule": "divergence",
            "severity": "error",
            "message": "m",
            "action": {"cmd": "scale-lr", "factor": "half"},
        },
        {"type": "control", "command": "recover", "source": "autofix", "old": None, "new": "x"},
    )
    panel = DoctorPanel()
    text = "\n".join(text_of(panel.view(state, ViewOptions(), 60, 20), 60))
    assert "[a] apply: scale LR ×half" in text and "LR None → x" in text
    assert describe({"cmd": "set-lr"}) == "set LR to None"


async def test_a_applies_the_selected_alerts_action(tmp_path):
    (tmp_path / "events.jsonl").write_text("")
    app = TuimonApp(tmp_path, replay=True, fps=20)
    sent = []
    app.send = lambda cmd, **args: sent.append((cmd, args))  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        app.state = state_with(
            {
                "type": "alert",
                "step": 5,
                "rule": "oscillation",
                "severity": "warning",
                "message": "m",
                "action": {"cmd": "scale-lr", "factor": 0.5},
            },
            {"type": "alert", "step": 9, "rule": "stall", "severity": "info", "message": "m"},
        )
        app.refresh_panels(everything=True)
        await pilot.pause()
        await pilot.press("a")  # the newest (stall) has no action: nothing is sent
        assert sent == []
        await pilot.press("down")
        await pilot.press("a")
        assert sent == [("scale-lr", {"factor": 0.5})]


async def test_news_past_the_kept_items_still_redraws_and_toasts(tmp_path):
    from tuimon.run.run_state import MAX_ITEMS
    from tuimon.ui.messages import StateReplaced

    (tmp_path / "events.jsonl").write_text("")
    app = TuimonApp(tmp_path, replay=True, fps=20)
    old = {"type": "alert", "rule": "stall", "severity": "info", "message": "old"}
    state = state_with(*({**old, "step": i} for i in range(MAX_ITEMS)))
    async with app.run_test(size=(120, 40)) as pilot:
        # The replay's own loader reads the (empty) log first, so its state cannot land
        # after this one.
        await until(pilot, lambda: app.connection_status == "replay")
        app.post_message(StateReplaced(state))
        await pilot.pause()
        assert len(app._notifications) == 0  # history is not news
        panel = app.query_one(DoctorPanel)
        assert "stall" in panel.plain_lines()[0]
        with state.lock:
            state.apply(
                {
                    "type": "alert",
                    "step": 5000,
                    "rule": "nan_loss",
                    "severity": "error",
                    "message": "loss went to nan",
                }
            )
        assert len(state.alerts) == MAX_ITEMS  # the deque is full: its length did not change
        app.refresh_panels()
        await pilot.pause()
        assert "nan_loss" in panel.plain_lines()[0]
        assert [n.title for n in app._notifications] == ["nan_loss"]


def test_grad_panel_keeps_the_extremes_when_layers_do_not_fit():
    layers = [(f"layer{i}", 10.0**-i, None) for i in range(10)]
    rows = shown_rows(layers, 4)
    assert [r[0] for r in rows] == ["layer0", "layer1", "layer2", "layer9"]
    state = state_with(
        {
            "type": "step",
            "step": 1,
            "time": 101.0,
            "loss": 1.0,
            "lr": 0.1,
            "grad_norm": 1.0,
            "layer_grad_norms": dict((n, v) for n, v, _ in layers),
        }
    )
    lines = text_of(GradPanel().view(state, ViewOptions(), 120, 6), 120)
    assert "layer0" in lines[1] + lines[2] and any("layer9" in line for line in lines)


def test_status_bar_and_small_parts():
    steps = [
        {
            "type": "step",
            "step": s,
            "epoch": 2,
            "time": 100.0 + s,
            "loss": 1.0,
            "lr": 0.1,
            "step_time": 0.5,
            "samples": 64,
        }
        for s in range(1, 251)
    ]
    state = state_with(*steps)
    bar_view = StatusBar()
    bar_view.shown_status = "paused"
    [line] = text_of(bar_view.view(state, ViewOptions(), 160, 1), 160)
    assert line.startswith(" demo  paused   epoch 3/10")
    assert "250/1000 25.0%" in line and "128 samples/s" in line and "ETA 6m15s" in line
    bar_view.shown_status = "replay"  # not live: elapsed runs to the last event, not to now
    assert "elapsed 4m10s" in text_of(bar_view.view(state, ViewOptions(), 160, 1), 160)[0]
    assert bar(0.5, 4) == "██░░" and bar(None, 3) == "···"
    assert sparkline([0, 50, 100], 3, top=100) == "▁▄█"
    assert tick_labels([0.001, 0.0010001]) == ["0.001", "0.0010001"]


async def test_a_replay_says_how_many_damaged_lines_of_its_log_were_skipped(tmp_path):
    lines = [
        '{"type":"start","seq":1,"time":1.0,"name":"torn","total_steps":10}',
        '{"type":"step","seq":2,"time":2.0,"step":1,"loss":1.0}',
        "\x00\x01 not json",
        '{"type":"step","seq":3,"time":3.0,"step":2,"loss":0.5}',
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    app = TuimonApp(tmp_path, replay=True, fps=20)
    async with app.run_test(size=(160, 40)) as pilot:
        bar = app.query_one(StatusBar)
        await until(pilot, lambda: "damaged" in "".join(bar.plain_lines()))
        text = "".join(bar.plain_lines())
        assert "1 damaged line skipped (line 3)" in text and "2/10" in text
        assert "no end event" in text  # and what the log lacks, on the same line


def test_the_status_bar_says_loudly_while_the_run_is_not_recorded():
    """run/event_log.py tells listeners (not the full disk) that events are not written,
    and logs the count of what was lost once they are again."""
    outage = {
        "type": "message",
        "level": "error",
        "recording": False,
        "text": "events are not being recorded: cannot write events.jsonl: no space left",
    }
    state = state_with({"type": "step", "step": 1, "time": 101.0, "loss": 1.0}, outage)
    bar_view = StatusBar()
    bar_view.shown_status = "running"
    [line] = text_of(bar_view.view(state, ViewOptions(), 160, 1), 160)
    assert "NOT RECORDING" in line
    # An app attaching later gets it through the worker's snapshot.
    assert RunState.from_snapshot(state.snapshot()).not_recording == outage["text"]
    state.apply({"type": "message", "level": "warning", "dropped_events": 40, "text": "..."})
    assert state.not_recording is None
    [line] = text_of(bar_view.view(state, ViewOptions(), 160, 1), 160)
    assert "NOT RECORDING" not in line


async def test_the_app_shows_why_the_run_is_not_recorded(tmp_path):
    lines = [
        '{"type":"start","seq":1,"time":1.0,"name":"full","total_steps":10}',
        '{"type":"step","seq":2,"time":2.0,"step":1,"loss":1.0}',
        '{"type":"message","level":"error","recording":false,"time":3.0,'
        '"text":"events are not being recorded: no space left on device"}',
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    app = TuimonApp(tmp_path, replay=True, fps=20)
    async with app.run_test(size=(160, 40)) as pilot:
        bar = app.query_one(StatusBar)
        await until(pilot, lambda: "no space left" in "".join(bar.plain_lines()))
        text = "".join(bar.plain_lines())
        assert "NOT RECORDING: events are not being recorded" in text


async def test_a_refresh_tick_after_the_app_closed_draws_nothing_and_raises_nothing(tmp_path):
    # The refresh timer can fire once more while the app shuts down, when its screen stack
    # is already empty (seen on a loaded CI machine: ScreenStackError out of a tick).
    app = TuimonApp(tmp_path / "no-such-run", fps=20)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app._panels  # mounted: a tick would draw
    assert not app.screen_stack
    app.refresh_panels()  # no ScreenStackError
