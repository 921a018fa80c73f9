"""Where notifications go and what they are about: the vocabulary of `monitor.notify`.

Pure (no pydantic, no torch): the config schema, the Monitor and the sender share it.
A target is a URL when it starts with http:// or https://, else a command line, split
like a shell would (shlex) but run without one.
"""

from __future__ import annotations

import shlex
from typing import Final
from urllib.parse import urlsplit

from tuimon.run.events import COMPLETED, ERROR, FAILED, STOPPED

# What can notify (`monitor.notify.when`): an error alert, how the run ended, a hang.
HANG: Final = "hang"
NOTIFY_WHEN: Final[tuple[str, ...]] = (ERROR, FAILED, COMPLETED, STOPPED, HANG)
DEFAULT_WHEN: Final[tuple[str, ...]] = (ERROR, FAILED, COMPLETED, HANG)
# The body a webhook gets: chosen from the URL (auto), or named.
AUTO: Final = "auto"
SLACK: Final = "slack"
NTFY: Final = "ntfy"
JSON: Final = "json"
FORMATS: Final[tuple[str, ...]] = (AUTO, SLACK, NTFY, JSON)
URL_SCHEMES: Final[tuple[str, ...]] = ("http://", "https://")
SLACK_HOST: Final = "hooks.slack.com"
# Seconds without a step before a running run is said to hang (`monitor.notify.hang_after`).
DEFAULT_HANG_AFTER: Final = 600.0
# Seconds one delivery may take (a POST, a command).
DEFAULT_TIMEOUT: Final = 10.0


def is_url(target: str) -> bool:
    return target.strip().lower().startswith(URL_SCHEMES)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook, or None."""
    if not is_url(url):
        return f"must start with http:// or https://, got {_short(url)!r}"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if not parts.hostname:
        return "a URL needs a host (http://HOST/...)"
    if any(ch.isspace() for ch in url.strip()):
        return "a URL cannot hold spaces"
    return None


def command_argv(command: str) -> list[str]:
    """The command's words (shlex), or ValueError saying why there are none."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot split the command line: {exc}") from None
    if not argv:
        raise ValueError("the command is empty")
    return argv


def format_for(url: str, format: str) -> str:
    """The body a URL gets: the one named, or Slack's for hooks.slack.com, ntfy's for an
    ntfy server (a host named ntfy.*), else tuimon's JSON."""
    if format != AUTO:
        return format
    host = (urlsplit(url.strip()).hostname or "").lower()
    if host == SLACK_HOST:
        return SLACK
    if host == "ntfy.sh" or host.startswith("ntfy."):
        return NTFY
    return JSON


def ntfy_topic(url: str) -> tuple[str, str]:
    """(the server's root URL, the topic): ntfy takes JSON at its root, the topic inside."""
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    base, _, topic = path.rpartition("/")
    root = f"{parts.scheme}://{parts.netloc}{base}/"
    return root, topic


def shown_target(target: str) -> str:
    """The target as it may be logged: a URL's scheme and host only (its path, query and
    user part can hold a token: a Slack hook's path is its secret, an ntfy topic is a
    password), a command's program only."""
    if is_url(target):
        try:
            parts = urlsplit(target.strip())
            host = parts.hostname or "?"
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "(a URL)"
        rest = "/…" if parts.path.strip("/") or parts.query or parts.username else ""
        return f"{parts.scheme}://{host}{port}{rest}"
    try:
        argv = shlex.split(target)
    except ValueError:
        return "(a command)"
    if not argv:
        return "(a command)"
    return argv[0] + (" …" if len(argv) > 1 else "")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redacted_argv(argv: list[str]) -> list[str]:
    """A command line as it may be logged: the value of `--notify X`, `--notify=X` and
    `--set monitor.notify…=X` shown as `shown_target` shows a target."""
    out: list[str] = []
    follows_flag = False
    for arg in argv:
        key, eq, value = arg.partition("=")
        if follows_flag:
            out.append(shown_target(arg))
        elif eq and "notify" in key:
            out.append(f"{key}={shown_target(value)}")
        else:
            out.append(arg)
        follows_flag = arg == "--notify"
    return out


def target_problem(target: str) -> str | None:
    """Why a bare target (`tuimon run --notify X`, `notify: X`) cannot be used, or None:
    for a command line to check before it starts anything (no pydantic needed)."""
    if "://" in target.split(" ", 1)[0] or is_url(target):
        problem = url_problem(target)
        if problem is None and format_for(target, AUTO) == NTFY and not ntfy_topic(target)[1]:
            problem = "an ntfy URL names its topic: https://ntfy.sh/TOPIC"
        return problem
    try:
        command_argv(target)
    except ValueError as exc:
        return str(exc)
    return None
