"""The machine's GPUs under the runs table: utilization, memory, and which runs use each.

Filled from the catalog's `machine_gpus()` rows (the live runs' own samples, or NVML read
by the runs screen itself when no run is alive), or its line saying why there are none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widgets import Static

from tuimon.catalog.machine_gpus import MachineGpu
from tuimon.number_text import human_bytes, percent, share
from tuimon.terminal_text import printable
from tuimon.ui.terminal_safe import TerminalSafe

MAX_RUN_NAMES = 4  # per GPU; more are counted


def gpu_line(gpu: MachineGpu) -> Text:
    """`GPU0 util  87% mem ████░░ 30.1 GiB/80.0 GiB  A100 · runs: a, b`."""
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(f"GPU{gpu.index} ", style="bold")
    util_style = _load_style(gpu.util)
    line.append(f"util {percent(gpu.util):>4} ", style=util_style)
    memory = share(gpu.mem_used, gpu.mem_total)
    line.append(
        f"mem {bar(memory, 8)} ", style=_load_style(None if memory is None else 100 * memory)
    )
    line.append(f"{human_bytes(gpu.mem_used)}/{human_bytes(gpu.mem_total)}")
    if gpu.name:
        line.append(f"  {printable(gpu.name, keep_newlines=False)}", style="dim")
    names = [printable(name, keep_newlines=False) for name in gpu.runs]
    if names:
        shown = ", ".join(names[:MAX_RUN_NAMES])
        if len(names) > MAX_RUN_NAMES:
            shown += f" +{len(names) - MAX_RUN_NAMES}"
        line.append(f" · runs: {shown}", style="bold")
    else:
        line.append(" · no tuimon run", style="dim")
    return line


def gpu_lines(gpus: Sequence[MachineGpu], reason: str) -> list[Text]:
    if not gpus:
        return [Text(printable(reason or "no GPU information yet", keep_newlines=False), "dim")]
    return [gpu_line(gpu) for gpu in gpus]


class MachineGpuPanel(Static):
    """A bordered box; `show()` draws only when its content changed."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", markup=False, **kwargs)  # type: ignore[arg-type]
        self.border_title = "Machine GPUs"
        self.lines: list[Text] = [Text("reading the GPUs…", style="dim")]
        self._shown: tuple[list[MachineGpu], str] | None = None

    def show(self, gpus: Sequence[MachineGpu], reason: str) -> None:
        shown = (list(gpus), reason)
        if shown == self._shown:
            return
        self._shown = shown
        lines = gpu_lines(gpus, reason)
        self.lines = lines
        wanted = max(1, len(lines)) + 2  # the border
        if self.styles.height is None or self.styles.height.value != wanted:
            self.styles.height = wanted
        renderable: RenderableType = Group(*lines)
        self.update(TerminalSafe(renderable))

    def plain_text(self) -> str:
        return "\n".join(line.plain for line in self.lines)


def bar(fraction: float | None, width: int) -> str:
    """A fixed-width bar: ███████░░░ (as ui/plotting.py draws one; not imported from there,
    which would load numpy and plotext at `tuimon`'s start: ~0.13 s of the runs screen's
    ~0.4 s of imports)."""
    if fraction is None or not math.isfinite(fraction) or width <= 0:
        return "·" * max(width, 0)
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "░" * (width - filled)


def _load_style(value: float | None) -> str:
    if value is None:
        return "dim"
    return "bold red" if value >= 95 else "yellow" if value >= 80 else "green"
