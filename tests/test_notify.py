"""Notifications (issue 12, item 5): settings, bodies, and delivery to a real HTTP server
and a real command. The Monitor's use of them is in tests/test_notify_monitor.py."""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from tuimon.config.loader import load_config
from tuimon.config.schema import MonitorConfig, NotifyConfig
from tuimon.errors import ConfigError
from tuimon.monitor.settings import monitor_settings
from tuimon.notify.delivery import DeliveryError, post_json, run_command
from tuimon.notify.hang_watch import HangWatch
from tuimon.notify.payloads import RunFacts, body, from_alert, from_end, from_hang
from tuimon.notify.targets import JSON, NTFY, SLACK, format_for, shown_target, target_problem
from tuimon.run.events import PAUSED, RUNNING
from tuimon.run.run_dir import NOTIFY_ENV

from conftest import ENDLESS_CONFIG, TESTS_DIR

SINK = TESTS_DIR / "scripts" / "notify_sink.py"
RUN = RunFacts(name="mlp", run_dir="runs/mlp-1", host="gpu-3", pid=4242)


class HookServer:
    """A real webhook receiver on 127.0.0.1: records each POST (path, headers, JSON body)
    and answers `status`. With `hold` set, a handler waits (after recording) until the
    test releases it: a slow receiver."""

    def __init__(self, status: int = 200, hold: bool = False) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.entered = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = json.loads(self.rfile.read(length))
                with server.changed:
                    server.received.append(
                        {"path": self.path, "headers": dict(self.headers), "body": data}
                    )
                    server.changed.notify_all()
                server.entered.set()
                server.release.wait(120)
                self.send_response(server.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[dict[str, Any]]:
        with self.changed:
            return [r["body"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 60.0, **match: Any) -> list[dict[str, Any]]:
        """Wait (with a deadline) until `count` bodies matching `match` have arrived."""
        deadline = time.monotonic() + timeout

        def matching() -> list[dict[str, Any]]:
            return [b for b in self.bodies() if all(b.get(k) == v for k, v in match.items())]

        with self.changed:
            while len(found := matching()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"{count} message(s) {match} not received in {timeout}s: {self.bodies()}"
                    )
                self.changed.wait(left)
        return found

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hook() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then closed): a connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- settings ---------------------------------------------------------------------------


def test_a_bare_string_is_a_url_or_a_command():
    url = MonitorConfig.model_validate({"notify": "https://hooks.slack.com/services/T/B/X"})
    assert url.notify is not None and url.notify.url == "https://hooks.slack.com/services/T/B/X"
    assert url.notify.command is None and url.notify.when == [
        "error",
        "failed",
        "completed",
        "hang",
    ]
    command = MonitorConfig.model_validate({"notify": "notify-send 'a run' --urgency=low"})
    assert command.notify is not None and command.notify.command is not None
    assert command.notify.url is None
    assert MonitorConfig().notify is None


@pytest.mark.parametrize(
    ("notify", "key", "says"),
    [
        ("ftp://host/x", "monitor.notify.url", "must start with http:// or https://"),
        ("https://", "monitor.notify.url", "needs a host"),
        ("", "monitor.notify.command", "the command is empty"),
        ("notify 'unclosed", "monitor.notify.command", "No closing quotation"),
        ({"url": "http://h/x", "command": "x"}, "monitor.notify", "a url or a command"),
        ({"url": "http://h/x", "when": ["eror"]}, "monitor.notify.when", "'error'"),
        ({"url": "http://h/x", "hang_after": 0}, "monitor.notify.hang_after", "greater than 0"),
        ({"url": "http://h/x", "format": "teams"}, "monitor.notify.format", "'slack'"),
        ({"url": "http://h/x", "retries": 3}, "monitor.notify", "unknown key"),
        ("https://ntfy.sh/", "monitor.notify", "names its topic"),
    ],
)
def test_a_malformed_notify_in_a_config_is_refused_at_its_line_and_key(
    write_config, notify: Any, key: str, says: str
):
    text = ENDLESS_CONFIG + "  notify: " + json.dumps(notify) + "\n"
    line = text.splitlines().index("  notify: " + json.dumps(notify)) + 1
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    [problem] = [p for p in caught.value.problems if key in p]
    assert f"config.yaml:{line}:" in problem and says in problem


def test_an_on_key_which_yaml_reads_as_true_is_told_to_be_when(write_config):
    text = ENDLESS_CONFIG + "  notify:\n    url: http://h/x\n    on: [hang]\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(text))
    [problem] = caught.value.problems
    assert "monitor.notify: `on:` reads as true in YAML: write `when:" in problem
    line = text.splitlines().index("  notify:") + 1
    assert f"config.yaml:{line}:" in problem


def test_notify_from_the_command_line_set(write_config):
    path = write_config()
    config = load_config(path, ["monitor.notify.url=http://127.0.0.1:9/hook"])
    assert config.monitor.notify is not None
    assert config.monitor.notify.url == "http://127.0.0.1:9/hook"
    with pytest.raises(ConfigError, match=r"--set monitor\.notify\.hang_after.*greater than 0"):
        load_config(path, ["monitor.notify.url=http://h/x", "monitor.notify.hang_after=-1"])


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (42, "Monitor(notify=...): a URL, a command or a dict"),
        ("ftp://x", "Monitor(notify=...): url: must start with http"),
        ({"url": "http://h/x", "when": ["done"]}, "Monitor(notify=...): when.0:"),
    ],
)
def test_a_malformed_monitor_notify_is_a_value_error_naming_the_keyword(given: Any, says: str):
    with pytest.raises(ValueError) as caught:
        monitor_settings(None, {"notify": given})
    assert says in str(caught.value)


def test_tuimon_run_notify_sets_the_target_and_keeps_the_script_s_other_settings():
    script = {"url": "http://script/hook", "when": ["failed"], "hang_after": 5}
    settings = monitor_settings(None, {"notify": script}, notify="python sink.py")
    assert settings.notify is not None
    assert settings.notify.command == "python sink.py" and settings.notify.url is None
    assert settings.notify.when == ["failed"] and settings.notify.hang_after == 5
    alone = monitor_settings(None, {}, notify="https://ntfy.sh/topic")
    assert alone.notify is not None and alone.notify.url == "https://ntfy.sh/topic"
    with pytest.raises(ValueError, match=rf"{NOTIFY_ENV} \(tuimon run --notify\)"):
        monitor_settings(None, {}, notify="https://")


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("https://ntfy.sh/topic", None),
        ("python sink.py --to 'ml team'", None),
        ("ftp://host/x", "must start with http:// or https://"),
        ("https://", "needs a host"),
        ("https://ntfy.sh/", "names its topic"),
        ("", "the command is empty"),
        ("sink 'unclosed", "No closing quotation"),
    ],
)
def test_a_bare_target_is_checked_as_the_schema_checks_it(target: str, says: str | None):
    """What `tuimon run --notify X` can check before it starts the script."""
    problem = target_problem(target)
    assert (problem is None) if says is None else (problem is not None and says in problem)
    if says is None:
        assert MonitorConfig.model_validate({"notify": target}).notify is not None
    else:
        with pytest.raises(ValidationError, match=re.escape(says)):
            MonitorConfig.model_validate({"notify": target})


def test_script_env_passes_notify_to_the_script(tmp_path):
    from tuimon.launch import script_env

    env = script_env(tmp_path, notify="https://ntfy.sh/topic")
    assert env[NOTIFY_ENV] == "https://ntfy.sh/topic"
    assert NOTIFY_ENV not in script_env(tmp_path)


def test_a_dump_never_holds_the_secret_part_of_the_target():
    secret = "https://hooks.slack.com/services/T000/B000/SECRETXYZ?token=abc"
    dumped = json.dumps(
        MonitorConfig.model_validate({"notify": secret}).model_dump(mode="json"), ensure_ascii=False
    )
    assert "SECRETXYZ" not in dumped and "token" not in dumped
    assert "https://hooks.slack.com/…" in dumped
    user = "https://bob:hunter2@ntfy.example.com/alerts"
    assert "hunter2" not in shown_target(user) and "alerts" not in shown_target(user)
    curl = MonitorConfig.model_validate({"notify": "curl -H 'Authorization: Bearer s3cr3t' x"})
    command = json.dumps(curl.model_dump(mode="json"), ensure_ascii=False)
    assert "s3cr3t" not in command and "curl …" in command


# -- what a message says ----------------------------------------------------------------


def test_the_body_each_receiver_gets():
    alert = {
        "type": "alert",
        "step": 40,
        "rule": "nan_loss",
        "severity": "error",
        "message": "the loss is NaN",
        "suggestion": "restore",
        "time": 1.0,
    }
    note = from_alert(alert, RUN)
    assert format_for("https://hooks.slack.com/services/T/B/X", "auto") == SLACK
    assert format_for("https://ntfy.sh/topic", "auto") == NTFY
    assert format_for("https://ntfy.example.org/topic", "auto") == NTFY
    assert format_for("https://example.com/hook", "auto") == JSON
    assert format_for("https://example.com/hook", "slack") == SLACK
    where, slack = body(note, SLACK, "https://hooks.slack.com/services/T/B/X")
    assert where is None and set(slack) == {"text"}
    assert "mlp" in slack["text"] and "nan_loss" in slack["text"] and "step 40" in slack["text"]
    where, ntfy = body(note, NTFY, "https://ntfy.example.org/base/mytopic")
    assert where == "https://ntfy.example.org/base/"
    assert ntfy["topic"] == "mytopic" and ntfy["priority"] == 4 and ntfy["tags"] == ["warning"]
    assert "nan_loss" in ntfy["title"] and "the loss is NaN" in ntfy["message"]
    _, generic = body(note, JSON, "https://example.com/hook")
    assert generic["event"] == "error" and generic["rule"] == "nan_loss"
    assert generic["run"] == "mlp" and generic["run_dir"] == "runs/mlp-1"
    assert generic["host"] == "gpu-3" and generic["step"] == 40 and "text" in generic
    traceback = "Traceback (most recent call last):\n" + "  line\n" * 50 + "ValueError: boom"
    failed = from_end({"status": "failed", "step": 7, "error": traceback, "time": 2.0}, RUN, 3.0)
    fields = failed.fields()
    assert fields["event"] == "failed" and fields["status"] == "failed"
    assert fields["error"].endswith("ValueError: boom") and fields["message"] == "ValueError: boom"
    assert fields["error"].count("\n") < 20  # the tail, not the whole traceback
    hang = from_hang(12, 31.4, RUNNING, RUN, 4.0).fields()
    assert hang["event"] == "hang" and hang["idle_seconds"] == 31.4 and hang["step"] == 12


def test_the_hang_watch_says_each_hang_once_and_never_while_paused():
    watch = HangWatch(10.0, step=0, now=0.0)
    assert watch.check(0, RUNNING, 9.0) is None
    hang = watch.check(0, RUNNING, 10.5)  # stuck before the first step: a hang
    assert hang is not None and hang.step == 0 and hang.idle == 10.5
    assert watch.check(0, RUNNING, 50.0) is None  # the same episode
    assert watch.check(3, RUNNING, 51.0) is None  # a step re-arms
    assert watch.check(3, PAUSED, 70.0) is None  # paused: not a hang
    assert watch.check(3, RUNNING, 75.0) is None  # counted again from the pause's end
    again = watch.check(3, RUNNING, 80.5)
    assert again is not None and again.step == 3


# -- delivery ---------------------------------------------------------------------------


def test_a_post_reaches_the_server_with_basic_auth_from_the_url(hook):
    url = hook.url("/topic").replace("http://", "http://bob:pa%3Ass@")
    post_json(url, {"text": "hi"}, timeout=10)
    [received] = hook.received
    assert received["body"] == {"text": "hi"} and received["path"] == "/topic"
    assert received["headers"]["Content-Type"] == "application/json"
    token = received["headers"]["Authorization"].removeprefix("Basic ")
    assert base64.b64decode(token).decode() == "bob:pa:ss"


def test_a_server_error_is_tried_twice_a_refusal_once():
    server = HookServer(status=500)
    try:
        with pytest.raises(DeliveryError, match="HTTP 500"):
            post_json(server.url(), {"text": "x"}, timeout=10)
        assert len(server.received) == 2  # one retry, no more
    finally:
        server.close()
    refusing = HookServer(status=403)
    try:
        with pytest.raises(DeliveryError, match="HTTP 403"):
            post_json(refusing.url(), {"text": "x"}, timeout=10)
        assert len(refusing.received) == 1
    finally:
        refusing.close()
    with pytest.raises(DeliveryError, match="no answer"):
        post_json(f"http://127.0.0.1:{closed_port()}/hook", {"text": "x"}, timeout=10)


def test_a_command_gets_the_json_on_stdin_and_its_failure_is_an_error(tmp_path):
    out = tmp_path / "got.jsonl"
    run_command([sys.executable, str(SINK), str(out)], {"event": "completed"}, timeout=60)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"event": "completed"}]
    with pytest.raises(DeliveryError, match="exited with status 3: notify_sink: told to fail"):
        run_command([sys.executable, str(SINK), str(out), "3"], {"event": "x"}, timeout=60)
    with pytest.raises(DeliveryError, match="no such program"):
        run_command([str(tmp_path / "nothing-here")], {}, timeout=60)


def test_notify_config_round_trips_its_fields():
    settings = NotifyConfig.model_validate({"url": "http://h/x", "when": ["hang"], "hang_after": 2})
    assert settings.target == "http://h/x" and settings.when == ["hang"]
    with pytest.raises(ValidationError):
        NotifyConfig.model_validate({"when": ["hang"]})


def test_tuimon_run_refuses_a_bad_notify_target_before_starting_anything(
    tmp_path, capsys, monkeypatch
):
    from tuimon import cli

    monkeypatch.chdir(tmp_path)
    script = tmp_path / "never_run.py"
    script.write_text("raise SystemExit('started')\n")
    code = cli.main(["run", "--notify", "ftp://example.com/hook", str(script)])
    assert code == 2
    err = capsys.readouterr().err
    assert "--notify" in err and "http" in err
    assert not (tmp_path / "runs").exists()
