"""Wake-ups of runs waiting for a lease: the LeaseKeeper says when one is freed, or it is back.

A run refused a lease (held by another run, or the keeper away) waits for the
keeper's `LeaseFreed` for that lease, or for the keeper's return, instead of
polling on a fixed period; `leases.busy_retry_s` stays the longest wait, for a
wake-up lost on core NATS.
"""

from __future__ import annotations

import threading

from bus.messages import LeaseFreed
from conveyor.clock import Clock, SystemClock

_SLICE_S = 0.5
"""How often a waiter looks at its `abandoned` event (a launcher stopping)."""


class LeaseWaker:
    """Counts `LeaseFreed` per lease name; a waiter sleeps until its count moves."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._freed: dict[str, int] = {}
        self._restarts = 0

    def notify(self, freed: LeaseFreed) -> None:
        """The keeper freed `freed.name`, or (empty name) is back: wake whoever waits."""
        with self._cond:
            if freed.name:
                self._freed[freed.name] = self._freed.get(freed.name, 0) + 1
            else:
                self._restarts += 1
            self._cond.notify_all()

    def returns(self) -> int:
        """How often the keeper said it is back; a request sent before that is lost."""
        with self._cond:
            return self._restarts

    def mark(self, name: str) -> tuple[int, int]:
        """Where `name`'s wake-ups stand; take it before the request that may be refused."""
        with self._cond:
            return self._freed.get(name, 0), self._restarts

    def wait(
        self, name: str, mark: tuple[int, int], timeout_s: float, abandoned: threading.Event
    ) -> bool:
        """Sleep until `name` is freed or the keeper is back since `mark`, or `timeout_s`.

        Returns True when `abandoned` was set (the launcher is stopping).
        """
        end = self._clock.monotonic() + timeout_s
        with self._cond:
            while (self._freed.get(name, 0), self._restarts) == mark:
                if abandoned.is_set():
                    return True
                left = end - self._clock.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, _SLICE_S))
        return abandoned.is_set()
