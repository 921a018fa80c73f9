"""`tuimon doctor RUN_DIR`: the rules run again over a recorded event log, offline.

For logs of headless runs, runs recorded before a rule existed, and tuning thresholds:
the same Doctor as in the worker reads the same events (its own past alerts are ignored)
with the run's overrides plus any given here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tuimon.doctor.engine import Doctor
from tuimon.doctor.registry import RULES, override_problems
from tuimon.errors import UsageError
from tuimon.headless.alert_text import without_key_hint
from tuimon.run.log_reader import read_events
from tuimon.run.run_dir import EVENTS_FILE

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def parse_rule_settings(settings: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`--rule stall.window=50`, `--rule stall.enabled=false` into override dicts."""
    overrides: dict[str, dict[str, Any]] = {}
    for text in settings:
        key, sep, raw = text.partition("=")
        rule_id, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise UsageError(f"--rule {text}: expected RULE.THRESHOLD=VALUE, e.g. stall.window=50")
        if rule_id not in RULES:
            from tuimon.config.suggest import did_you_mean

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


def review(
    run_dir: Path, extra: dict[str, dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(what the doctor says over the log, a summary of the run)."""
    path = run_dir / EVENTS_FILE
    if not path.is_file():
        raise UsageError(f"{run_dir}: no {EVENTS_FILE} here")
    events = list(read_events(path))
    start = next((e for e in events if e.get("type") == "start"), {})
    configured = (((start.get("config") or {}).get("monitor") or {}).get("rules")) or {}
    overrides = {rule: dict(values) for rule, values in configured.items()}
    for rule, values in (extra or {}).items():
        overrides.setdefault(rule, {}).update(values)
    said = Doctor(overrides).run(events)
    end = next((e for e in reversed(events) if e.get("type") == "end"), {})
    summary = {
        "name": start.get("name", run_dir.name),
        "steps": sum(1 for e in events if e.get("type") == "step"),
        "status": end.get("status", "no end: still running, or killed"),
        "recorded": sum(1 for e in events if e.get("type") == "alert"),
    }
    return said, summary


def format_report(run_dir: Path, said: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    alerts = [e for e in said if e["type"] == "alert"]
    cleared = {(e["rule"], e["step"]) for e in said if e["type"] == "alert_cleared"}
    lines = [
        f"tuimon doctor: {summary['name']} ({run_dir}): {summary['steps']} steps, "
        f"{summary['status']}"
    ]
    if not alerts:
        lines.append("  no alerts: nothing wrong found")
    for alert in alerts:
        lines.append(
            f"  {alert['severity'].upper():8s} {alert['rule']} at step "
            f"{alert['step']}: {alert['message']}"
        )
        ends = [step for rule, step in cleared if rule == alert["rule"] and step > alert["step"]]
        if alert.get("suggestion"):
            # An alert that cleared has no fix to apply: no "press a" for it.
            text = without_key_hint(alert["suggestion"]) if ends else alert["suggestion"]
            lines.append(f"           → {text}")
        if ends:
            lines.append(f"           (cleared at step {min(ends)})")
    counts = {
        level: sum(1 for a in alerts if a["severity"] == level)
        for level in ("error", "warning", "info")
    }
    lines.append(
        f"{_count(len(alerts), 'alert')}: {_count(counts['error'], 'error')}, "
        f"{_count(counts['warning'], 'warning')}, {counts['info']} info "
        f"({summary['recorded']} in the log as run)"
    )
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def worst_severity(said: list[dict[str, Any]]) -> str | None:
    levels = [e["severity"] for e in said if e["type"] == "alert"]
    return min(levels, key=lambda level: SEVERITY_ORDER[level]) if levels else None
