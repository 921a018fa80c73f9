"""Which layer each optimizer parameter belongs to, and sums of per-parameter norms by layer.

Probes measure one norm per parameter on the device (one fused kernel); turning those into
global and per-layer norms happens here, on the host, for a batch of steps at once.
"""

from __future__ import annotations

import math

import torch

from tuimon.run.events import NOT_IN_MODEL

# Up to this many norms a batch is summed in plain Python: a few tiny tensor operations
# cost more than the loop (a small model's batch of 10 steps is 10 rows of a few norms).
PYTHON_SUM_LIMIT = 1024


class ParamLayout:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self._model = model
        self._optimizer = optimizer
        self.refresh()

    def refresh(self) -> None:
        """Give every parameter the optimizer holds a layer: its module's name."""
        self.param_names = {id(p): name for name, p in self._model.named_parameters()}
        layer_of = {pid: name.rsplit(".", 1)[0] for pid, name in self.param_names.items()}
        self.params = [p for group in self._optimizer.param_groups for p in group["params"]]
        self.layer_names: list[str] = []
        index: dict[str, int] = {}
        columns = []
        for param in self.params:
            layer = layer_of.get(id(param), NOT_IN_MODEL)
            if layer not in index:
                index[layer] = len(self.layer_names)
                self.layer_names.append(layer)
            columns.append(index[layer])
        self._columns = columns
        # Summing squares through this one-hot matrix gives every layer's norm.
        self._matrix = torch.zeros(
            len(self.params), max(len(self.layer_names), 1), dtype=torch.float64
        )
        self._matrix[torch.arange(len(self.params)), torch.tensor(columns).long()] = 1

    def changed(self) -> bool:
        """Whether add_param_group() added parameters since the last refresh()."""
        return sum(len(g["params"]) for g in self._optimizer.param_groups) != len(self.params)

    def reduce(self, rows: list[list[float]]) -> list[tuple[float, dict[str, float]]]:
        """(global norm, {layer: norm}) for each row of per-parameter norms.

        Rows from before a refresh() have another width: they get a global norm only.
        """
        width = len(self.params)
        if not rows or any(len(row) != width for row in rows):
            return [(math.sqrt(sum(v * v for v in row)), {}) for row in rows]
        if width * len(rows) <= PYTHON_SUM_LIMIT:
            reduced = [self._reduce_row(row) for row in rows]
            if all(math.isfinite(total) for total, _ in reduced):
                return reduced
            # NaN/Inf: the matrix product spreads them to every layer; keep that answer.
        squares = torch.tensor(rows, dtype=torch.float64).square()
        totals = squares.sum(dim=1).sqrt().tolist()
        layers = (squares @ self._matrix).sqrt().tolist()
        return [
            (total, dict(zip(self.layer_names, values, strict=True)))
            for total, values in zip(totals, layers, strict=True)
        ]

    def _reduce_row(self, row: list[float]) -> tuple[float, dict[str, float]]:
        """`reduce` of one row in plain floats (doubles, like the matrix product)."""
        sums = [0.0] * len(self.layer_names)
        for value, column in zip(row, self._columns, strict=True):
            sums[column] += value * value
        return math.sqrt(math.fsum(sums)), dict(
            zip(self.layer_names, map(math.sqrt, sums), strict=True)
        )
