"""Debiased exponential moving average, as TensorBoard and W&B draw smoothed curves."""

from __future__ import annotations

import math


class DebiasedEMA:
    """EMA whose early values are not dragged toward zero by its initial state.

    Non-finite inputs are skipped so that one NaN step does not poison the curve.
    """

    def __init__(self, weight: float = 0.9) -> None:
        if not 0 <= weight < 1:
            raise ValueError("EMA weight must be in [0, 1)")
        self.weight = weight
        self._biased = 0.0
        self._count = 0

    def update(self, value: float) -> float | None:
        if math.isfinite(value):
            self._biased = self.weight * self._biased + (1 - self.weight) * value
            self._count += 1
        return self.value

    @property
    def value(self) -> float | None:
        if self._count == 0:
            return None
        return self._biased / (1 - self.weight**self._count)


def smooth(values: list[float], weight: float = 0.9) -> list[float | None]:
    ema = DebiasedEMA(weight)
    return [ema.update(v) for v in values]
