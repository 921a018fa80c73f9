"""Escape sequences and markup in a log never reach the terminal: a crafted log (a run name,
messages, alerts, a traceback, metric, layer and GPU names, a checkpoint path, a config
value) through `replay` in Textual, through the headless console, and through a real
script's headless output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tuimon.headless.console import ConsoleReporter
from tuimon.ui.app import TuimonApp
from tuimon.ui.screens.text_screen import TextScreen
from tuimon.ui.widgets.doctor_panel import DoctorPanel
from tuimon.ui.widgets.panel import Panel
from tuimon.ui.widgets.status_bar import StatusBar

from conftest import until, worker_env

OSC_TITLE = "\x1b]0;pwned\x07"  # sets the terminal's (tmux pane's) title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
CSI8 = "\x9b31m"  # the 8-bit CSI: red text on terminals that take it
MARKUP = "[bold red]loud[/bold red] [/]"  # Rich markup; a stray [/] raises MarkupError
EVIL = f"{OSC_TITLE}{CLEAR}{CSI8}{MARKUP}"
CONTROLS = ("\x1b", "\x07", "\x9b")


def crafted_events(*, end: bool = True) -> list[dict[str, Any]]:
    """A small run whose every free-text field carries escape sequences and markup."""
    events: list[dict[str, Any]] = [
        {
            "type": "start",
            "time": 1000.0,
            "name": f"evil{EVIL}",
            "run_dir": f"/runs/{EVIL}",
            "pid": 999_999_999,
            "host": "elsewhere",
            "total_steps": 100,
            "steps_per_epoch": 10,
            "epochs": 10,
            "settings": {},
            "config": {"name": EVIL, "optimizer": {"name": EVIL}},
            "device": {"name": EVIL},
            "model": {"class": EVIL, "params": 1000, "layers": [f"fc{EVIL}", "out"]},
            "notes": [f"note {EVIL}"],
        }
    ]
    for step in range(1, 31):
        events.append(
            {
                "type": "step",
                "time": 1000.0 + step,
                "step": step,
                "epoch": step // 10,
                "loss": 2.0 / step,
                "lr": 0.1,
                "grad_norm": 1.0,
                "layer_grad_norms": {f"fc{EVIL}": 0.5, "out": 1.0},
                "step_time": 0.01,
                "samples": 8,
            }
        )
    events += [
        {"type": "metrics", "time": 1010.0, "step": 10, f"acc{EVIL}": 0.5, "val_loss": 1.0},
        {
            "type": "system",
            "time": 1011.0,
            "host": {"cpu_percent": 10.0, "cpu_count": EVIL, "ram_used": 1, "ram_total": 2},
            "gpus": [{"index": 0, "name": EVIL, "util": 5, "mem_used": 1, "mem_total": 4}],
        },
        {
            "type": "alert",
            "time": 1012.0,
            "step": 12,
            "rule": f"oscillation{EVIL}",
            "severity": "warning",
            "message": f"message {EVIL}",
            "suggestion": f"suggestion {EVIL}",
            "evidence": {EVIL: EVIL},
            "action": {"cmd": "scale-lr", "factor": 0.5},
        },
        {"type": "message", "time": 1013.0, "level": "info", "text": f"text {EVIL}"},
        {"type": "checkpoint", "time": 1014.0, "step": 14, "path": f"/ckpt/{EVIL}.pt"},
        {
            "type": "control",
            "time": 1015.0,
            "step": 15,
            "command": "set-lr",
            "old": 0.1,
            "new": 0.1,
            "source": f"ui{EVIL}",
        },
    ]
    if end:
        error = f"Traceback (most recent call last):\n  {EVIL}\nRuntimeError: boom {EVIL}\n"
        events.append(
            {"type": "end", "time": 1031.0, "status": "failed", "step": 30, "error": error}
        )
    return [{"seq": seq, **event} for seq, event in enumerate(events, 1)]


def write_crafted_log(run_dir: Path, *, end: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(event) for event in crafted_events(end=end)]
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run_dir


def screen_text(app: TuimonApp) -> str:
    """Every character the screen would send to the terminal as text (the compositor's
    segments, toasts and dialogs included), without Textual's own cursor and colour codes."""
    update = app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    return "".join(segment.text for line in update.strips for strip in line for segment in strip)


async def test_replay_of_a_crafted_log_draws_no_control_character_and_no_markup(tmp_path):
    run_dir = write_crafted_log(tmp_path / "run")
    app = TuimonApp(run_dir, replay=True, fps=20)
    async with app.run_test(size=(140, 45), notifications=True) as pilot:
        await until(pilot, lambda: app.connection_status == "replay")
        panels = list(app.query(Panel))
        await until(pilot, lambda: not any(p.is_stale(app.state, app.options) for p in panels))
        await pilot.pause()
        shown = screen_text(app)
        assert not [c for c in CONTROLS if c in shown]
        for panel in panels:
            drawn = "\n".join(panel.plain_lines())
            assert not [c for c in CONTROLS if c in drawn], panel.id
        # Markup from the log is shown as it is, never interpreted.
        assert MARKUP in "".join(app.query_one(StatusBar).plain_lines())
        doctor = "\n".join(app.query_one(DoctorPanel).plain_lines())
        assert "message" in doctor and "red]loud[/bold red] [/]" in doctor
        assert "[bold red]loud" in shown and "pwned" in shown  # there, as plain text
        # A toast quoting a metric's name (m), then the traceback's dialog (e).
        await pilot.press("m")
        await until(pilot, lambda: "main plot: acc" in screen_text(app))
        assert app.is_running  # a "[/]" parsed as markup would have raised MarkupError
        shown = screen_text(app)
        assert not [c for c in CONTROLS if c in shown]
        assert "Loss · acc" in shown  # the border title names it, as plain text
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, TextScreen))
        await pilot.pause()
        shown = screen_text(app)
        assert "RuntimeError: boom" in shown and MARKUP in shown
        assert not [c for c in CONTROLS if c in shown]


def test_the_headless_console_prints_no_control_character_from_the_log():
    out = io.StringIO()
    console = ConsoleReporter(f"evil{EVIL}", print_every=0.0, stream=out)
    for event in crafted_events():
        console(event)
    printed = out.getvalue()
    assert "pwned" in printed and "boom" in printed and "checkpoint at step 14" in printed
    assert not [c for c in CONTROLS if c in printed], repr(printed)


EVIL_SCRIPT = f"""
import torch
import tuimon

EVIL = {EVIL!r}
torch.manual_seed(0)
Evil = type("Evil" + EVIL, (torch.nn.Linear,), {{}})
model = Evil(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with tuimon.Monitor(model, opt, run_dir="run", print_every=0.001) as mon:
    for step in range(5):
        x = torch.randn(8, 4)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(loss, inputs=x)
        mon.log(**{{"acc" + EVIL: 0.5}})
"""


def test_a_real_scripts_headless_output_carries_no_escape_from_its_names(tmp_path):
    """A model class and a metric named with escapes, printed by a real Monitor."""
    script = tmp_path / "train.py"
    script.write_text(EVIL_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=worker_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Evil" in done.stdout and "acc" in done.stdout  # the names were printed
    assert not [c for c in CONTROLS if c in done.stdout], repr(done.stdout)


def test_printable_drops_whole_sequences_and_neutralizes_every_other_control():
    from tuimon.terminal_text import printable

    assert printable(f"a{OSC_TITLE}b") == "a0;pwned\ufffdb"  # shown as text, inert
    assert printable("\x1b[31mred\x1b[0m plain") == "red plain"  # coloured output.log
    assert printable(f"x{CSI8}y") == "xy"
    assert printable("50%\r100%\r\n") == "50%\n100%\n"  # a redraw cannot hide text
    assert printable("tab\tNUL\x00", keep_newlines=False) == "tab\tNUL\ufffd"
    # Whatever the input, no control but tab and newline survives.
    every = "".join(map(chr, range(0x00, 0xA0))) * 3 + "\x1b[" + "\x1b]" + "\x9b"
    left = {c for c in printable(every) if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F}
    assert left <= {"\t", "\n"}


def test_a_usage_error_quoting_a_crafted_path_prints_no_escape(tmp_path):
    crafted = tmp_path / f"run{OSC_TITLE}{CLEAR}"
    done = subprocess.run(
        [sys.executable, "-m", "tuimon", "replay", str(crafted)],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=120,
    )
    assert done.returncode == 2
    assert "pwned" in done.stderr and "nothing to replay" in done.stderr
    assert not [c for c in CONTROLS if c in done.stderr]
