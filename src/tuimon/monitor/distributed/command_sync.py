"""Commands applied by every rank at one agreed step, through torchrun's store.

Rank 0 serves the control socket. It publishes each request with the step every rank
applies it at: the next multiple of `every` after its current step. Every rank looks
for new requests at each such multiple (one store round trip, ~30 µs on one host, every
`every` steps; no GPU sync). Under DDP the ranks move in lockstep (each step's backward
waits for every rank's gradients), so when rank r finishes step Q it has seen everything
rank 0 published up to step Q-1: a request published at step P < Q with apply_at = Q is
seen by every rank at Q, applied there, and logged there by each. A job whose ranks do
not move in lockstep can see a request after its step: it applies it at once and says
how late.

A request a rank receives itself (a signal's stop, `request_stop()`) is forwarded to rank
0, which schedules it like its own. While paused, every rank waits at the same step
boundary, polling the store, never inside a collective (so NCCL's watchdog cannot fire).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from tuimon.control.protocol import Request
from tuimon.monitor.distributed.job_store import JobStore

_PUBLISHED = "commands"  # counter: requests rank 0 published; each under commands/<n>
_FORWARDED = "forwarded"  # counter: requests other ranks handed to rank 0


class RankCommands:
    """This rank's side of the exchange: what to apply at which step."""

    def __init__(self, store: JobStore, rank: int, every: int) -> None:
        self.store = store
        self.rank = rank
        self.every = every
        self._scheduled: list[tuple[int, Request]] = []  # (apply_at, request), in order
        self._seen = 0  # published requests read so far (other ranks)
        self._taken = 0  # forwarded requests read so far (rank 0)
        self.late: list[tuple[Request, int]] = []  # applied after their step: (request, at)

    def due_now(self, step: int) -> bool:
        """Whether this step boundary has anything to exchange or apply (cheap)."""
        return step % self.every == 0 or bool(self._scheduled)

    def exchange(self, step: int, local: list[Request], *, paused: bool) -> list[Request]:
        """Hand over this rank's new requests and return those to apply at `step`.

        `paused`: every rank is (or is about to be) waiting at this boundary, so a
        request published now applies at this very step."""
        if self.rank == 0:
            self._publish_for_all(step, local, paused)
        else:
            for request in local:
                self._forward(request)
            if paused or step % self.every == 0:
                self._read_published()
        due = [request for at, request in self._scheduled if at <= step]
        for at, request in self._scheduled:
            if at < step:
                self.late.append((request, at))
        self._scheduled = [(at, request) for at, request in self._scheduled if at > step]
        return due

    # -- rank 0 --------------------------------------------------------------------------

    def _publish_for_all(self, step: int, local: list[Request], paused: bool) -> None:
        requests = list(local)
        if (paused or step % self.every == 0) and self.store.counter(_FORWARDED) > self._taken:
            requests += self._take_forwarded()
        for request in requests:
            apply_at = step if paused else (step // self.every + 1) * self.every
            n = self._seen + 1
            self.store.set(f"{_PUBLISHED}/{n}", {"request": _encode(request), "at": apply_at})
            self.store.counter(_PUBLISHED, 1)  # after the value: readers never wait for it
            self._seen = n
            self._scheduled.append((apply_at, request))

    def _take_forwarded(self) -> list[Request]:
        count = self.store.counter(_FORWARDED)
        keys = [f"{_FORWARDED}/{n}" for n in range(self._taken + 1, count + 1)]
        # A sender bumps the counter before it sets the value: wait for each briefly.
        values = [self.store.get(key) for key in keys]
        self._taken = count
        return [_decode(value) for value in values]

    # -- every other rank ----------------------------------------------------------------

    def _forward(self, request: Request) -> None:
        n = self.store.counter(_FORWARDED, 1)
        self.store.set(f"{_FORWARDED}/{n}", _encode(request))

    def _read_published(self) -> None:
        count = self.store.counter(_PUBLISHED)
        if count <= self._seen:
            return
        keys = [f"{_PUBLISHED}/{n}" for n in range(self._seen + 1, count + 1)]
        for value in self.store.get_many(keys):
            self._scheduled.append((int(value["at"]), _decode(value["request"])))
        self._seen = count


def _encode(request: Request) -> dict[str, Any]:
    return asdict(request)


def _decode(value: dict[str, Any]) -> Request:
    return Request(
        cmd=str(value["cmd"]),
        args=dict(value.get("args") or {}),
        id=value.get("id"),
        source=str(value.get("source") or "rank"),
    )
