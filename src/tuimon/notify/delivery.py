"""Sending one notification: a JSON POST to a webhook, or a command given it on stdin.

Blocking, with a timeout: called only by the notifier's own thread. A failure raises
`DeliveryError` with a reason that holds no secret (never the URL's path or query).
"""

from __future__ import annotations

import base64
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson

import tuimon

# A webhook that fails with a server error or no answer gets one more try after this pause.
RETRY_PAUSE = 1.0
# How much of a failed command's stderr a warning quotes.
STDERR_TAIL = 200


class DeliveryError(Exception):
    """A notification that did not arrive, and why (safe to log)."""


def post_json(url: str, payload: dict[str, Any], timeout: float, *, retry: bool = True) -> None:
    """POST `payload` as JSON; a 5xx answer or a connection problem is retried once.

    A user:password in the URL becomes Basic authentication (ntfy's protected topics)."""
    target, headers = _split_credentials(url)
    data = orjson.dumps(payload)
    headers["Content-Type"] = "application/json"
    headers["User-Agent"] = f"tuimon/{tuimon.__version__}"
    tries = 2 if retry else 1
    for attempt in range(tries):
        request = urllib.request.Request(target, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(1024)
            return
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500:  # the receiver refuses this message: a retry would too
                raise DeliveryError(reason) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            cause = getattr(exc, "reason", exc)
            reason = f"no answer ({cause})"
        if attempt + 1 < tries:
            time.sleep(RETRY_PAUSE)
    raise DeliveryError(reason)


def run_command(argv: list[str], payload: dict[str, Any], timeout: float) -> None:
    """Run the command (no shell) with the JSON on stdin; it must exit 0 within `timeout`."""
    try:
        done = subprocess.run(
            argv,
            input=orjson.dumps(payload),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise DeliveryError(f"no such program: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"{argv[0]} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise DeliveryError(f"{argv[0]} could not run ({exc.strerror or exc})") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        last = f": {said[-1][:STDERR_TAIL]}" if said else ""
        raise DeliveryError(f"{argv[0]} exited with status {done.returncode}{last}")


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its user part, and that part as an Authorization header."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    user, password = unquote(parts.username), unquote(parts.password or "")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}
