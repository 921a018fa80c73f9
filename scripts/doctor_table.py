"""Print the README's table of doctor rules: defaults, fixes, and fault-zoo results.

Runs every config of configs/faults/ (in-process, on the CPU, about a minute) and notes the
step at which the doctor first named each fault.

    python scripts/doctor_table.py > /tmp/table.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tuimon.config import load_config
from tuimon.doctor.registry import ALL_RULES
from tuimon.run.log_reader import read_events
from tuimon.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent


def detected_at(config: Path) -> str:
    trainer = Trainer(load_config(config))
    trainer.setup()
    with tempfile.TemporaryDirectory() as tmp:
        trainer.run(Path(tmp) / "run", quiet=True)
        alerts = [
            e
            for e in read_events(Path(tmp) / "run" / "events.jsonl")
            if e["type"] == "alert" and e["rule"] == config.stem
        ]
    return f"step {alerts[0]['step']}" if alerts else "not detected"


def main() -> int:
    print("| rule | detects | defaults | suggested fix | fault zoo |")
    print("| --- | --- | --- | --- | --- |")
    for rule in ALL_RULES:
        config = REPO / "configs" / "faults" / f"{rule.id}.yaml"
        if config.exists():
            zoo = f"{detected_at(config)} (`{config.relative_to(REPO)}`)"
        elif rule.id in JOB_RULES:
            zoo = "needs a torchrun job: `tests/test_distributed_monitor.py`"
        else:
            zoo = "needs a GPU: unit-tested on samples"
        defaults = ", ".join(f"{k}={v:g}" for k, v in rule.defaults.items()) or "—"
        action = " (**a** applies it)" if rule.id in ACTIONS else ""
        cells = [f"`{rule.id}` ({rule.severity})", rule.summary, defaults, rule.fix + action, zoo]
        # A `|` in a rule's words (|tanh|) would end its cell: Markdown's escape keeps it.
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return 0


# Rules whose alerts carry a command that the UI's `a` key (or autofix) applies.
ACTIONS = {
    "nan_loss",
    "nan_grad",
    "divergence",
    "oscillation",
    "exploding_gradients",
    "lr_too_high",
    "lr_too_low",
    "rank_nan",
}
# Rules of a distributed job's ranks: no single-process fault config can show them.
JOB_RULES = {"straggler", "stalled_rank", "rank_nan"}

if __name__ == "__main__":
    sys.exit(main())
