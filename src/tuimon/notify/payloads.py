"""What a notification says, and the body each kind of receiver takes.

A `Notification` is built from the run's events (an alert, the end) or from the hang
watch; `body()` turns it into Slack's `{"text"}`, ntfy's JSON publish (topic, title,
message, priority, tags) or tuimon's own JSON: `text` plus every field (docs/CONTRACTS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tuimon.notify.targets import HANG, NTFY, SLACK, ntfy_topic
from tuimon.run.events import COMPLETED, ERROR, FAILED, STOPPED

# The last lines of a failed run's traceback that a notification carries.
ERROR_TAIL_LINES = 15
ERROR_TAIL_CHARS = 2000
# ntfy's priorities (1 min … 5 max) and tags (emoji names) for each kind of notification.
_NTFY_PRIORITY = {FAILED: 5, ERROR: 4, HANG: 4, COMPLETED: 3, STOPPED: 3}
_NTFY_TAGS = {
    FAILED: ["rotating_light"],
    ERROR: ["warning"],
    HANG: ["hourglass"],
    COMPLETED: ["white_check_mark"],
    STOPPED: ["stop_sign"],
}


@dataclass(frozen=True)
class RunFacts:
    """Which run a notification is about."""

    name: str
    run_dir: str
    host: str
    pid: int


@dataclass
class Notification:
    """One message: `event` is a kind of `monitor.notify.when` (error, failed, completed,
    stopped, hang); the other fields are those that apply to it."""

    event: str
    run: str
    run_dir: str
    host: str
    pid: int
    time: float
    status: str | None = None
    step: int | None = None
    rule: str | None = None
    severity: str | None = None
    message: str | None = None
    suggestion: str | None = None
    error: str | None = None  # the end of a failed run's traceback
    idle_seconds: float | None = None  # a hang: seconds since the last step
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"tuimon: {self.run} {_HEADLINES[self.event](self)}"

    @property
    def text(self) -> str:
        """One line (the title), then what happened, then a failed run's error tail."""
        lines = [self.title]
        if self.message:
            lines.append(self.message)
        if self.suggestion:
            lines.append(f"fix: {self.suggestion}")
        lines.append(f"{self.host} · {self.run_dir}")
        if self.error:
            lines.append(self.error)
        return "\n".join(lines)

    def fields(self) -> dict[str, Any]:
        """tuimon's JSON: `text` and `title`, then every field that has a value."""
        out: dict[str, Any] = {"text": self.text, "title": self.title}
        for key, value in asdict(self).items():
            if key == "extra":
                out.update(value)
            elif value is not None:
                out[key] = value
        return out


def _alert_headline(note: Notification) -> str:
    return f"alert {note.rule} at step {note.step}"


def _end_headline(note: Notification) -> str:
    return f"{note.status} at step {note.step}"


def _hang_headline(note: Notification) -> str:
    return f"no step for {note.idle_seconds or 0:.0f} s (last step {note.step})"


_HEADLINES = {
    ERROR: _alert_headline,
    FAILED: _end_headline,
    COMPLETED: _end_headline,
    STOPPED: _end_headline,
    HANG: _hang_headline,
}


def from_alert(alert: Mapping[str, Any], run: RunFacts) -> Notification:
    return Notification(
        event=ERROR,
        status=None,
        step=_int(alert.get("step")),
        rule=str(alert.get("rule")),
        severity=str(alert.get("severity")),
        message=_text(alert.get("message")),
        suggestion=_text(alert.get("suggestion")),
        time=float(alert.get("time") or 0.0),
        **_run_fields(run),
    )


def from_end(end: Mapping[str, Any], run: RunFacts, now: float) -> Notification:
    status = str(end.get("status"))
    message = _text(end.get("reason"))
    error = error_tail(end.get("error"))
    if error and not message:
        message = error.strip().splitlines()[-1]
    return Notification(
        event=status,
        status=status,
        step=_int(end.get("step")),
        severity=ERROR if status == FAILED else None,
        message=message,
        error=error,
        time=float(end.get("time") or now),
        extra={"elapsed": end["elapsed"]} if isinstance(end.get("elapsed"), float) else {},
        **_run_fields(run),
    )


def from_hang(step: int, idle: float, status: str, run: RunFacts, now: float) -> Notification:
    return Notification(
        event=HANG,
        status=status,
        step=step,
        severity=ERROR,
        message=(
            f"no step for {idle:.0f} s while the run is {status}: a stuck data loader, a "
            "collective waiting for a lost rank, or a deadlock (py-spy dump --pid "
            f"{run.pid} shows where)"
        ),
        idle_seconds=round(idle, 1),
        time=now,
        **_run_fields(run),
    )


def error_tail(error: Any) -> str | None:
    """The last lines of a traceback: where it failed and why."""
    if not isinstance(error, str) or not error.strip():
        return None
    tail = "\n".join(error.rstrip().splitlines()[-ERROR_TAIL_LINES:])
    return tail[-ERROR_TAIL_CHARS:]


def body(note: Notification, format: str, url: str | None) -> tuple[str | None, dict[str, Any]]:
    """(where to POST it if not the URL itself, the JSON) for a receiver of `format`."""
    if format == SLACK:
        text = note.title
        rest = note.text.split("\n", 1)[1] if "\n" in note.text else ""
        if note.error:
            rest = rest.replace(note.error, f"```{note.error}```")
        return None, {"text": f"*{text}*\n{rest}".rstrip()}
    if format == NTFY and url is not None:
        root, topic = ntfy_topic(url)
        return root, {
            "topic": topic,
            "title": note.title,
            "message": note.text.split("\n", 1)[1] if "\n" in note.text else note.title,
            "priority": _NTFY_PRIORITY.get(note.event, 3),
            "tags": _NTFY_TAGS.get(note.event, []),
        }
    return None, note.fields()


def _run_fields(run: RunFacts) -> dict[str, Any]:
    return {"run": run.name, "run_dir": run.run_dir, "host": run.host, "pid": run.pid}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
