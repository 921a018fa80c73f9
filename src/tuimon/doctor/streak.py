"""A condition held N checks in a row: how most rules wait before they alert.

One noisy step (a bad batch, a slow fetch) is no fault; the same reading `patience` (or
`checks`, `confirm`…) looks in a row is. Each rule used to keep its own counter; this is
that counter, once, so "in a row" means the same thing in every rule: the count grows by
one per look where the condition holds and drops to 0 at the first look where it does not.
"""

from __future__ import annotations


class Streak:
    """Looks in a row at which a condition held, and whether that reached `needed`.

    `needed` is a rule's threshold as the user set it (a float from a config or
    `--rule stall.checks=3`): the count reaches it once `count >= needed`.
    """

    def __init__(self, needed: float) -> None:
        self.needed = needed
        self.count = 0

    def hold(self) -> bool:
        """The condition held at this look: count it; whether the streak reached `needed`."""
        self.count += 1
        return self.reached

    def reset(self) -> None:
        """The condition did not hold at this look (or the rule starts over): the streak ends."""
        self.count = 0

    def update(self, holds: bool) -> bool:
        """`hold()` or `reset()`, as `holds` says; whether it held and reached `needed`."""
        if not holds:
            self.reset()
            return False
        return self.hold()

    @property
    def reached(self) -> bool:
        """Whether the condition held at the last `needed` looks (or more) in a row."""
        return self.count >= self.needed
