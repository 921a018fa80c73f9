"""`tuimon doctor RUN_DIR`: the rules run again over a recorded event log, offline.

For logs of headless runs, runs recorded before a rule existed, and tuning thresholds:
the same Doctor as in the worker reads the same events (its own past alerts are ignored)
with the run's overrides plus any given here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuimon.did_you_mean import did_you_mean
from tuimon.doctor.engine import Doctor, DoctorEvent
from tuimon.doctor.registry import RULES, override_problems
from tuimon.errors import UsageError
from tuimon.headless.alert_text import without_key_hint
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    COMPLETED,
    END,
    ERROR,
    INFO,
    START,
    STEP,
    WARNING,
    Severity,
)
from tuimon.run.field_types import as_dict, typed_event
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import EVENTS_FILE
from tuimon.terminal_text import printable

SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


def parse_rule_settings(settings: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`--rule stall.window=50`, `--rule stall.enabled=false` into override dicts."""
    overrides: dict[str, dict[str, Any]] = {}
    for text in settings:
        key, sep, raw = text.partition("=")
        rule_id, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--rule {text}: expected RULE.THRESHOLD=VALUE, e.g. stall.window=50")
        if rule_id not in RULES:
            raise UsageError(
                f"--rule {text}: unknown rule {rule_id!r}{did_you_mean(rule_id, RULES)}"
            )
        if name == "enabled":
            value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            try:
                value = float(raw)
            except ValueError:
                raise UsageError(f"--rule {text}: {raw!r} is not a number") from None
        for _, message in override_problems(rule_id, {name: value}):
            raise UsageError(f"--rule {text}: {message}")
        overrides.setdefault(rule_id, {})[name] = value
    return overrides


MAX_REPORTED = 1000  # alert events kept for the report; the rest are counted
# What a rule may raise on a field of a damaged log that the type checks let through
# (a probe's nested values): that event is not judged, and the review goes on.
JUDGING_ERRORS = (
    TypeError,
    ValueError,
    ArithmeticError,
    AttributeError,
    KeyError,
    IndexError,
    RecursionError,
)


def review(
    run_dir: Path, extra: dict[str, dict[str, Any]] | None = None
) -> tuple[list[DoctorEvent], dict[str, Any]]:
    """(what the doctor says over the log, a summary of the run).

    The log is streamed: one event at a time through the doctor, keeping only the
    summary and what the doctor says (at most MAX_REPORTED alerts and their clears), so
    memory stays flat however long the run. Damaged lines and events whose fields have
    the wrong types are skipped and counted in the summary."""
    path = run_dir / EVENTS_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: no {EVENTS_FILE} here")
    reader = read_events(path)
    doctor: Doctor | None = None
    said: list[DoctorEvent] = []
    summary: dict[str, Any] = {
        "name": run_dir.name,
        "steps": 0,
        "status": NO_END,
        "recorded": 0,
        "events": 0,
        "rejected": 0,
        "unjudged": 0,
        "unreported": 0,
    }
    for raw in reader:
        event = typed_event(raw)
        if event is None:
            summary["rejected"] += 1
            continue
        summary["events"] += 1
        kind = event["type"]
        if doctor is None:
            # The start is the first line a run writes: its configured thresholds apply.
            start = event if kind == START else {}
            doctor = Doctor(_overrides(start, extra))
        if kind == START and "name" in event:
            summary["name"] = _clip(event["name"], 200)
        elif kind == STEP:
            summary["steps"] += 1
        elif kind == ALERT:
            summary["recorded"] += 1
        elif kind == END:
            summary["status"] = str(event.get("status", COMPLETED))
        try:
            new = doctor.observe(event)
        except JUDGING_ERRORS:
            summary["unjudged"] += 1
            continue
        for item in new:
            if len(said) < MAX_REPORTED:
                said.append(item)
            else:
                summary["unreported"] += 1
    summary["skipped"] = reader.skipped
    summary["damage"] = reader.damage_note()
    return said, summary


NO_END = "no end: still running, or killed"


def _overrides(
    start: dict[str, Any], extra: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """The rule thresholds the run was configured with, then those given here."""
    configured = as_dict(as_dict(as_dict(start.get("config")).get("monitor")).get("rules"))
    overrides = {
        rule: dict(values)
        for rule, values in configured.items()
        if rule in RULES and type(values) is dict and not list(override_problems(rule, values))
    }
    for rule, values in (extra or {}).items():
        overrides.setdefault(rule, {}).update(values)
    return overrides


def damage_lines(summary: dict[str, Any]) -> list[str]:
    """What of the log was left out, said in words (empty for a sound log)."""
    lines = []
    if summary.get("damage"):
        lines.append(summary["damage"])
    if summary.get("rejected"):
        lines.append(f"{_count(summary['rejected'], 'event')} with unusable fields skipped")
    if summary.get("unjudged"):
        lines.append(
            f"{_count(summary['unjudged'], 'event')} the rules could not read (wrong types)"
        )
    if summary.get("unreported"):
        lines.append(f"{summary['unreported']} more alerts and clears not listed")
    return lines


def format_report(run_dir: Path, said: list[DoctorEvent], summary: dict[str, Any]) -> str:
    alerts = [e for e in said if e["type"] == ALERT]
    cleared = {(e["rule"], e["step"]) for e in said if e["type"] == ALERT_CLEARED}
    # Names and texts come from the log (a rule's message quotes the run's own names):
    # printable() keeps an escape sequence in them from reaching the terminal.
    lines = [
        printable(
            f"tuimon doctor: {summary['name']} ({run_dir}): {summary['steps']} steps, "
            f"{summary['status']}",
            keep_newlines=False,
        )
    ]
    lines += [f"  note: {line}" for line in damage_lines(summary)]
    if not alerts:
        lines.append("  no alerts: nothing wrong found")
    for alert in alerts:
        lines.append(
            printable(
                f"  {alert['severity'].upper():8s} {alert['rule']} at step "
                f"{alert['step']}: {alert['message']}"
            )
        )
        ends = [step for rule, step in cleared if rule == alert["rule"] and step > alert["step"]]
        if alert.get("suggestion"):
            # An alert that cleared has no fix to apply: no "press a" for it.
            text = without_key_hint(alert["suggestion"]) if ends else alert["suggestion"]
            lines.append(f"           → {printable(text)}")
        if ends:
            lines.append(f"           (cleared at step {min(ends)})")
    counts = {
        level: sum(1 for a in alerts if a["severity"] == level) for level in (ERROR, WARNING, INFO)
    }
    lines.append(
        f"{_count(len(alerts), 'alert')}: {_count(counts['error'], 'error')}, "
        f"{_count(counts['warning'], 'warning')}, {counts['info']} info "
        f"({summary['recorded']} in the log as run)"
    )
    return "\n".join(lines)


def _clip(value: Any, limit: int) -> str:
    text = str(value) if isinstance(value, str | int | float) else "?"
    return text if len(text) <= limit else text[:limit] + "…"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def worst_severity(said: list[DoctorEvent]) -> Severity | None:
    levels = [e["severity"] for e in said if e["type"] == ALERT]
    if not levels:
        return None
    return min(levels, key=lambda level: SEVERITY_ORDER[level])
