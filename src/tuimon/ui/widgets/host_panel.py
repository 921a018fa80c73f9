"""Host load: CPU, RAM, this process's memory, and the share of time spent waiting for data."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.text import Text

from tuimon.number_text import human_bytes, percent, share
from tuimon.run.events import HostSample
from tuimon.run.run_state import RunState
from tuimon.ui.plotting import ViewOptions, bar, sparkline
from tuimon.ui.widgets.lines import fit
from tuimon.ui.widgets.panel import Panel


class HostPanel(Panel):
    TITLE = "Host"

    def signature(self, state: RunState, options: ViewOptions) -> Any:
        return (state.system or {}).get("seq"), state.step

    def view(
        self, state: RunState, options: ViewOptions, width: int, height: int
    ) -> RenderableType:
        host: HostSample = (state.system or {}).get("host") or HostSample()
        cpu = host.get("cpu_percent")
        used, total = host.get("ram_used"), host.get("ram_total")
        wait = state.rates()["data_wait_share"]
        cpu_line = Text(no_wrap=True)
        cpu_line.append("CPU ", style="bold")
        cpu_line.append(f"{percent(cpu)} ")
        cpu_line.append(sparkline(state.cpu_history, 16, top=100.0), style="green")
        if host.get("cpu_count"):
            cpu_line.append(f" {host['cpu_count']} cores", style="dim")
        ram = Text(no_wrap=True)
        ram.append("RAM ", style="bold")
        ram.append(f"{bar(share(used, total), 8)} {human_bytes(used)}/{human_bytes(total)}")
        process = Text(no_wrap=True)
        process.append("run ", style="bold")
        process.append(f"{human_bytes(host.get('process_rss'))} RSS")
        data = Text(no_wrap=True)
        data.append("data wait ", style="bold")
        if wait is None:
            data.append("n/a", style="dim")
        else:
            style = "bold red" if wait > 0.5 else "yellow" if wait > 0.2 else "green"
            data.append(f"{100 * wait:.0f}% of step time", style=style)
        lines = [cpu_line, ram, process, data]
        if height < len(lines):
            # Two per line when the panel is short.
            lines = [cpu_line + Text("  ") + ram, process + Text("  ") + data]
        return fit(lines, width, height)
