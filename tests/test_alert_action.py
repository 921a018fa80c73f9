"""An alert's fix is offered, and sent by `a`, only while the alert holds.

A real user script trains with a learning rate far too small, so the real doctor in its
Monitor raises `lr_too_low` with a `scale-lr` fix (×100), and it holds until that fix is
applied; then the alert clears, and pressing `a` again must not scale the LR again (as one
key press once cut a healthy run's LR 20x after an early alert had cleared). The app attaches
to the real worker through its control socket; what reaches the run is read back from the
run's own event log.
"""

from __future__ import annotations

import io

import pytest
from textual.widgets import Button

from tuimon.doctor.report import format_report
from tuimon.headless.console import ConsoleReporter
from tuimon.launch import start_script_worker
from tuimon.run.log_reader import read_events
from tuimon.ui.app import TuimonApp
from tuimon.ui.screens.choice_screen import ChoiceScreen
from tuimon.ui.widgets.doctor_panel import DoctorPanel

from conftest import until

SCRIPT = """
import torch
import torch.nn.functional as F
import tuimon

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
true_w = torch.randn(8, 1)
with tuimon.Monitor(model, optimizer) as mon:
    while not mon.should_stop:
        x = torch.randn(32, 8)
        y = x @ true_w
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.step(loss, inputs=x, targets=y)
"""


def lr_too_low(app: TuimonApp) -> dict | None:
    with app.state.lock:
        return next((a for a in app.state.alerts if a["rule"] == "lr_too_low"), None)


async def select(pilot, app: TuimonApp, alert: dict) -> DoctorPanel:
    """Move the Doctor panel's selection onto `alert`, with the arrow keys."""
    panel = app.query_one(DoctorPanel)
    app.refresh_panels(everything=True)
    await pilot.pause()
    for _ in range(len(panel._alerts)):
        if panel.selected_alert is alert:
            break
        await pilot.press("down")
    assert panel.selected_alert is alert
    return panel


def drawn(panel: DoctorPanel, rule: str) -> str:
    """The lines the Doctor panel drew for the alert of `rule`, up to the next alert."""
    lines = panel.plain_lines()
    start = next(i for i, line in enumerate(lines) if f" {rule} at step" in line)
    heads = (" ERROR ", " WARNING ", " INFO ", "note:")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(heads)), None)
    return "\n".join(lines[start:end])


def lr_changes(app: TuimonApp) -> int:
    with app.state.lock:
        return sum(1 for c in app.state.controls if c["command"] == "scale-lr")


async def test_a_sends_an_alerts_fix_only_while_the_alert_holds(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    run_dir, process = start_script_worker(str(script), [], base=tmp_path / "runs")
    try:
        app = TuimonApp(run_dir, launched=True, worker=process, fps=20)
        async with app.run_test(size=(120, 40)) as pilot:
            # While the alert holds, [a] offers its fix and sends it at once.
            await until(pilot, lambda: lr_too_low(app) is not None)
            alert = lr_too_low(app)
            assert alert["action"]["cmd"] == "scale-lr" and "cleared_at" not in alert
            panel = await select(pilot, app, alert)
            assert "\n[a] apply: scale LR ×" in drawn(panel, "lr_too_low")
            await pilot.press("a")
            await until(pilot, lambda: lr_changes(app) == 1)

            # The fix works: the alert clears, and its fix no longer applies.
            await until(pilot, lambda: alert.get("cleared_at") is not None)
            await select(pilot, app, alert)
            text = drawn(panel, "lr_too_low")
            assert "[a] apply" not in text and "press a" not in text
            assert "fix (no longer applies): scale LR ×" in text

            # `a` asks first; the default answer is "Don't apply", and nothing is sent.
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
            assert f"cleared at step {alert['cleared_at']}" in app.screen.question
            assert [b.id for b in app.screen.query(Button)] == ["apply", "cancel"]
            await pilot.press("enter")  # on the focused button
            await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen))
            assert any("not applied" in n.message for n in app._notifications)

            # Only a deliberate "Apply anyway" sends it. Commands reach the run in order, so
            # had the `a` above sent anything, it would be in the log before this one.
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
            await pilot.click("#apply")
            await until(pilot, lambda: lr_changes(app) == 2)
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
            await pilot.click("#stop")
            await until(pilot, lambda: app.shown_status == "stopped")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    sent = [
        e
        for e in read_events(run_dir / "events.jsonl")
        if e["type"] == "control" and e.get("source") == "ui"
    ]
    assert [c["command"] for c in sent] == ["scale-lr", "scale-lr", "stop"]
    factor = alert["action"]["factor"]
    assert sent[0]["factor"] == factor
    assert sent[0]["new"] == pytest.approx(sent[0]["old"] * factor)
    # Pressed twice, the fix would have scaled the LR twice: only the deliberate one did.
    assert sent[1]["old"] == pytest.approx(sent[0]["new"])


ALERT = {
    "type": "alert",
    "step": 50,
    "rule": "lr_too_high",
    "severity": "warning",
    "message": "each step changes the weights by 0.21 of their size",
    "suggestion": "SGD at LR 0.5 is too high: try 0.025 (×0.05, press a)",
    "action": {"cmd": "scale-lr", "factor": 0.05},
}


def test_the_console_and_the_doctor_report_do_not_offer_a_cleared_fix(tmp_path):
    out = io.StringIO()
    console = ConsoleReporter("run", print_every=3600, stream=out)
    console(ALERT)
    console({"type": "alert_cleared", "rule": "lr_too_high", "step": 90})
    lines = out.getvalue().splitlines()
    assert "(×0.05, press a)" in lines[1]  # while it held, the key was the way to apply it
    assert lines[2] == (
        "[run] cleared: lr_too_high at step 90: its fix (scale LR ×0.05) no longer applies"
    )

    cleared = {"type": "alert_cleared", "rule": "lr_too_high", "step": 90}
    holding = {**ALERT, "rule": "oscillation", "step": 95}
    report = format_report(
        tmp_path,
        [ALERT, cleared, holding],
        {"name": "r", "steps": 99, "status": "completed", "recorded": 2},
    )
    shown = report.splitlines()
    assert shown[2] == "           → SGD at LR 0.5 is too high: try 0.025 (×0.05)"
    assert shown[3] == "           (cleared at step 90)"
    assert shown[5].endswith("(×0.05, press a)")  # oscillation still holds at the end


def test_a_new_alert_does_not_move_the_selection_off_the_highlighted_one():
    from tuimon.run.run_state import RunState
    from tuimon.ui.plotting import ViewOptions

    state = RunState()
    state.apply_many([{"type": "start", "seq": 1, "time": 0.0}, {**ALERT, "seq": 2}])
    panel = DoctorPanel()
    panel.view(state, ViewOptions(), 60, 20)
    assert panel.selected_alert["rule"] == "lr_too_high"
    # A new alert arrives between the redraw the user read and the key they press.
    state.apply({"type": "alert", "seq": 3, "step": 60, "rule": "stall", "severity": "info"})
    panel.view(state, ViewOptions(), 60, 20)
    assert panel.selected_alert["rule"] == "lr_too_high"
    assert [a["rule"] for a in panel._alerts] == ["stall", "lr_too_high"]


def test_the_selected_alert_is_always_in_view():
    from tuimon.run.run_state import RunState
    from tuimon.ui.plotting import ViewOptions

    state = RunState()
    alerts = [{**ALERT, "seq": i + 2, "step": 10 * i, "rule": f"rule{i}"} for i in range(10)]
    state.apply_many([{"type": "start", "seq": 1, "time": 0.0}, *alerts])
    panel = DoctorPanel()
    panel.view(state, ViewOptions(), 60, 8)
    panel.move_selection(9)  # the oldest, far below the first screenful
    text = panel.view(state, ViewOptions(), 60, 8).plain
    assert text.startswith("↑ 9 newer") and " rule0 at step 0" in text
    assert "[a] apply: scale LR ×0.05" in text
