"""`tuimon doctor RUN_DIR`: the rules run again over a recorded event log, offline.

For logs of headless runs, runs recorded before a rule existed, and tuning thresholds:
the same Doctor as in the worker reads the same events (its own past alerts are ignored)
with the run's overrides plus any given here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from tuimon.did_you_mean import did_you_mean
from tuimon.doctor.engine import Doctor, DoctorEvent
from tuimon.doctor.registry import RULES, override_problems
from tuimon.doctor.rules.ranks import last_line
from tuimon.errors import UsageError
from tuimon.headless.alert_text import without_key_hint
from tuimon.run.events import (
    ALERT,
    ALERT_CLEARED,
    COMPLETED,
    END,
    END_STATUSES,
    ERROR,
    INFO,
    RANKS,
    START,
    STEP,
    WARNING,
    RankSummary,
    Severity,
)
from tuimon.run.field_types import as_dict, as_list, as_step, typed_event
from tuimon.run.log_reader import read_events
from tuimon.run.rank_logs import RankLog, read_rank_log_details
from tuimon.run.run_dir import EVENTS_FILE, RANKS_DIR
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
    rank0 = RankLog(0)  # the job's log is rank 0's own, in a distributed job
    reported: list[RankSummary] = []  # every rank in rank 0's last `ranks` event
    world_size: int | None = None
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
        rank0.add(raw)  # raw: typed_event drops a start's `host` (a system event's is a dict)
        if kind == START:
            if "name" in event:
                summary["name"] = _clip(event["name"], 200)
            world_size = as_step(as_dict(event.get("distributed")).get("world_size"))
        elif kind == RANKS:
            # typed_event has checked each summary's fields (field_types.typed_ranks).
            reported = cast(list[RankSummary], as_list(event.get("ranks")))
            world_size = as_step(event.get("world_size")) or world_size
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
    logs = read_rank_log_details(run_dir)
    if logs or reported or world_size:
        summary["world_size"] = world_size
        summary["ranks"] = rank_rows(rank0, logs, reported)
        summary["rank_damage"] = [
            f"rank {log.rank}'s log ({RANKS_DIR}/{log.rank}/{EVENTS_FILE}): {log.damage}"
            for log in logs
            if log.damage
        ]
    return said, summary


def rank_rows(
    rank0: RankLog, logs: list[RankLog], reported: list[RankSummary]
) -> list[dict[str, Any]]:
    """What the report says of each rank: its own log's account (rank 0's is the job's
    log), else what rank 0 last heard of it (a rank on another node, whose log is there)."""
    heard = {item["rank"]: item for item in reported if as_step(item.get("rank")) is not None}
    rows: dict[int, dict[str, Any]] = {}
    for log in [rank0, *logs]:
        row: dict[str, Any] = {
            **log.summary,
            "source": "log",
            "nonfinite_steps": log.nonfinite_steps,
            "first_nonfinite_step": log.first_nonfinite_step,
        }
        last = heard.get(log.rank, {})
        if row["status"] not in END_STATUSES and last.get("status") in END_STATUSES:
            # Its log has no end (killed mid-write, or its node's copy): rank 0 heard it end.
            row["status"], row["error"] = last["status"], last.get("error", row.get("error"))
        elif row["status"] not in END_STATUSES and last.get("alive") is False:
            row["died"] = True
        rows[log.rank] = row
    for rank, item in heard.items():
        if rank not in rows:
            rows[rank] = {**item, "source": "report", "died": item.get("alive") is False}
    return [rows[rank] for rank in sorted(rows)]


def rank_lines(summary: dict[str, Any]) -> list[str]:
    """The per-rank section of the report: each rank's last step, how it ended (its error's
    last line), and its NaN/inf losses. Empty for a run of one process."""
    rows = summary.get("ranks")
    if not rows:
        return []
    size = summary.get("world_size")
    lines = [
        f"  ranks: {len(rows)}" + (f" of world size {size}" if size and size != len(rows) else "")
    ]
    for row in rows:
        where = [f"host {_clip(row['host'], 80)}" if isinstance(row.get("host"), str) else ""]
        where.append(f"pid {row['pid']}" if as_step(row.get("pid")) is not None else "")
        step = as_step(row.get("step"))
        status = row.get("status")
        if status not in END_STATUSES:
            status = "died (no end)" if row.get("died") else "no end: still running, or killed"
        error = last_line(row.get("error"))
        text = (
            f"    rank {row['rank']}: "
            + ", ".join(part for part in where if part)
            + (", " if any(where) else "")
            + (f"step {step}, " if step is not None else "no step, ")
            + str(status)
            + (f": {error}" if error else "")
            + (" (as rank 0 last heard; its log is not here)" if row["source"] == "report" else "")
        )
        lines.append(printable(text, keep_newlines=False))
        count, first = row.get("nonfinite_steps"), row.get("first_nonfinite_step")
        last = as_step(row.get("nonfinite_step"))
        if count:
            span = f"step {last}" if count == 1 else f"steps {first} to {last}"
            lines.append(f"      NaN/inf loss at {_count(count, 'step')} ({span})")
        elif last is not None:
            lines.append(f"      NaN/inf loss, last at step {last}")
    return lines


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
    lines += summary.get("rank_damage") or []
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
    lines += [printable(f"  note: {line}") for line in damage_lines(summary)]
    lines += rank_lines(summary)
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
