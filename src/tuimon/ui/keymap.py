"""Every key of the app in one place: the bindings and the help screen both read this."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma-separated
    action: str
    description: str
    id: str
    display: str
    help: str
    show: bool = True


KEYS: tuple[Key, ...] = (
    Key("plus", "scale_lr_up", "LR ×f", "lr-up", "+", "multiply the LR by the factor (default 2)"),
    Key("minus", "scale_lr_down", "LR ÷f", "lr-down", "-", "divide the LR by the factor"),
    Key("l", "type_lr", "Set LR", "lr-set", "l", "type an exact learning rate"),
    Key("p", "toggle_pause", "Pause", "pause", "p", "pause or resume at the next step"),
    Key("s", "checkpoint", "Checkpoint", "checkpoint", "s", "save a checkpoint now"),
    Key("x", "stop_run", "Stop", "stop", "x", "stop the run (asks first; saves a checkpoint)"),
    Key(
        "a",
        "apply_alert",
        "Apply fix",
        "apply",
        "a",
        "apply the selected alert's fix (asks if the alert cleared)",
    ),
    Key(
        "m",
        "cycle_metric",
        "Metric",
        "metric",
        "m",
        "main plot: the loss, then each mon.log() metric in turn",
    ),
    Key("y", "toggle_log", "Log y", "log-y", "y", "log scale for the main plot"),
    Key("t", "cycle_x", "X axis", "x-axis", "t", "x axis: step → epoch → elapsed time"),
    Key("e", "show_error", "Error", "error", "e", "show the traceback of a failed run"),
    Key("o", "show_output", "Output", "output", "o", "show the run's stdout/stderr"),
    Key(
        "R",
        "show_ranks",
        "Ranks",
        "ranks",
        "R",
        "a distributed job's ranks: step, rates, memory, laggards",
    ),
    Key(
        "M",
        "show_metrics",
        "All metrics",
        "all-metrics",
        "M",
        "every scalar the run logged: / filters, enter plots one",
    ),
    Key(
        "S",
        "cycle_smoothing",
        "Smoothing",
        "smoothing",
        "S",
        "plot smoothing: raw → 0.6 → 0.9 → 0.99 (and the run's own)",
    ),
    Key("question_mark", "help", "Help", "help", "?", "this help"),
    Key(
        "q", "quit_ui", "Quit", "quit", "q", "quit the UI (asks whether to stop a run it launched)"
    ),
)


def bindings() -> list[BindingType]:
    return [
        Binding(k.keys, k.action, k.description, show=k.show, key_display=k.display, id=k.id)
        for k in KEYS
    ]


# The runs screen (`tuimon` alone): every run on the machine. Its help screen reads this too.
RUNS_KEYS: tuple[Key, ...] = (
    Key("enter", "open_run", "Open", "runs-open", "enter", "attach to the run (replay if ended)"),
    Key("r", "replay_run", "Replay", "runs-replay", "r", "replay the run's log, read-only"),
    Key("d", "doctor_report", "Doctor", "runs-doctor", "d", "the doctor's report on the run"),
    Key("x", "stop_run", "Stop", "runs-stop", "x", "stop the run (asks first)"),
    Key("space", "mark_run", "Select", "runs-mark", "space", "select the run for compare"),
    Key("c", "compare_runs", "Compare", "runs-compare", "c", "compare the selected runs"),
    Key("slash", "filter_runs", "Filter", "runs-filter", "/", "filter: name words, state:S"),
    Key("o", "cycle_sort", "Sort", "runs-sort", "o", "sort: start, name, state, loss, step"),
    Key("question_mark", "help", "Help", "runs-help", "?", "this help"),
    Key("q", "quit", "Quit", "runs-quit", "q", "quit (runs go on)"),
)


def runs_bindings() -> list[BindingType]:
    return [
        Binding(k.keys, k.action, k.description, show=k.show, key_display=k.display, id=k.id)
        for k in RUNS_KEYS
    ]


# Compare (`c` on the runs screen): several runs' curves overlaid. Its help reads this too.
COMPARE_KEYS: tuple[Key, ...] = (
    Key("tab", "next_run", "Next run", "compare-next", "tab", "select the next run (1–9: run N)"),
    Key("b", "pin_baseline", "Baseline", "compare-baseline", "b", "pin the selected run"),
    Key("t", "cycle_x", "X axis", "compare-x", "t", "x axis: step ↔ elapsed time"),
    Key("y", "toggle_log", "Log y", "compare-log-y", "y", "log scale for every plot"),
    Key("S", "cycle_smoothing", "Smooth", "compare-smooth", "S", "smoothing: 0 → 0.6 → 0.9 → 0.99"),
    Key("v", "next_metric", "Val metric", "compare-metric", "v", "validation plot: next metric"),
    Key("D", "config_diff", "Config diff", "compare-diff", "D", "the runs' configs side by side"),
    Key("M", "all_metrics", "Metrics", "compare-metrics", "M", "every metric across these runs"),
    Key("question_mark", "help", "Help", "compare-help", "?", "this help"),
    Key("escape,q", "close", "Back", "compare-back", "esc", "back to the runs"),
)
COMPARE_DIGITS = 9  # 1…9 select that run


def compare_bindings() -> list[BindingType]:
    keys: list[BindingType] = [
        Binding(k.keys, k.action, k.description, show=k.show, key_display=k.display, id=k.id)
        for k in COMPARE_KEYS
    ]
    keys += [
        Binding(str(n), f"select_run({n - 1})", f"Run {n}", show=False)
        for n in range(1, COMPARE_DIGITS + 1)
    ]
    return keys
