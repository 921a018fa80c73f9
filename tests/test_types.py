"""The type annotations hold: mypy is clean on src/ (part of `pytest`, beside ruff).

The event and command vocabularies (run/events.py, control/commands.py) are TypedDicts and
constants, so a renamed event field or command is a type error here, not a blank panel.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_mypy_is_clean_on_src():
    done = subprocess.run(
        [sys.executable, "-m", "mypy"],  # files and settings: pyproject.toml's [tool.mypy]
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert "No module named mypy" not in done.stderr, "pip install -e '.[dev]'"
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
