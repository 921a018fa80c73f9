"""Per GPU: utilization, memory, temperature, power and this run's memory, with history."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text

from tuimon.number_text import human_bytes, percent, share
from tuimon.run.events import GpuSample
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions, bar, sparkline
from tuimon.ui.widgets.lines import fit, wrap
from tuimon.ui.widgets.panel import Panel


class GpuPanel(Panel):
    TITLE = "GPU"

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        return (state.system or {}).get("seq"), ((state.last_step or {}).get("cuda_memory"))

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        system = state.system or {}
        gpus = system.get("gpus") or []
        if not gpus:
            status = system.get("gpu_status") or "waiting for the first system sample…"
            return fit(wrap(status, width, style="dim"), width, height)
        lines: list[Text] = []
        compact = height < 2 * len(gpus) + 1 or width < 60
        for gpu in gpus:
            lines += self.gpu_lines(state, gpu, width, compact)
        cuda = (state.last_step or {}).get("cuda_memory")
        if cuda and len(lines) < height:
            lines.append(
                Text(
                    f"torch allocated {human_bytes(cuda.get('allocated'))}, "
                    f"reserved {human_bytes(cuda.get('reserved'))}, peak "
                    f"{human_bytes(cuda.get('max_allocated'))}",
                    style="dim",
                )
            )
        return fit(lines, width, height)

    def gpu_lines(self, state: RunState, gpu: GpuSample, width: int, compact: bool) -> list[Text]:
        index = gpu.get("index", 0)
        util, used, total = gpu.get("util"), gpu.get("mem_used"), gpu.get("mem_total")
        memory = share(used, total)
        history = state.gpu_history.get(int(index), {})
        temp = gpu.get("temperature")
        power, limit = gpu.get("power_w"), gpu.get("power_limit_w")
        first = Text(no_wrap=True)
        first.append(f"GPU{index} ", style="bold")
        first.append(f"util {percent(util)} ", style=_load_style(util))
        if compact:
            first.append(f"mem {human_bytes(used)}/{human_bytes(total)} ")
            first.append(f"{temp if temp is not None else 'n/a'}°C ")
            first.append(f"run {human_bytes(gpu.get('process_mem'))}", style="dim")
            return [first]
        first.append(sparkline(history.get("util", []), 12, top=100.0), style="green")
        first.append(f"  {gpu.get('name') or ''}", style="dim")
        second = Text(no_wrap=True)
        second.append(
            f"  mem {bar(memory, 10)} {human_bytes(used)}/{human_bytes(total)} ",
            style=_load_style(100 * memory if memory is not None else None),
        )
        second.append(sparkline(history.get("mem", []), 12, top=100.0), style="blue")
        second.append(f"  {temp if temp is not None else 'n/a'}°C  ")
        second.append(f"{_watts(power)}/{_watts(limit)}  ")
        second.append(f"this run {human_bytes(gpu.get('process_mem'))}", style="bold")
        return [first, second]


def _watts(value: Any) -> str:
    return f"{value:.0f} W" if isinstance(value, int | float) else "n/a"


def _load_style(percent: Any) -> str:
    if not isinstance(percent, int | float):
        return "dim"
    return "bold red" if percent >= 95 else "yellow" if percent >= 80 else "green"
