"""A launcher's launch slots, and the drain that closes them to new orders.

The slots are read on the bus loop thread (how many orders to pull) and changed on
the actor's thread (a run took or gave back one). A drained launcher pulls no order
and hands back one a pull made before the drain, so the other launchers take them,
while its own runs finish and report as usual.
The drain belongs to the process, not to one incarnation of the actor: a Launcher
restarted by the supervisor keeps it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Slots:
    """Free launch slots, reserved on the loop thread before an order reaches the actor."""

    def __init__(self, total: int, drain: threading.Event | None = None) -> None:
        self.total = total
        self._used = 0
        self._lock = threading.Lock()
        self._drain = drain if drain is not None else threading.Event()

    def free(self) -> int:
        """How many more orders to take: none while draining."""
        if self._drain.is_set():
            return 0
        with self._lock:
            return self.total - self._used

    def reserve(self) -> None:
        with self._lock:
            self._used += 1

    def release(self) -> None:
        with self._lock:
            self._used = max(0, self._used - 1)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    @property
    def draining(self) -> bool:
        return self._drain.is_set()


def reserving(
    slots: Callable[[], Slots], tell: Callable[[Any], None], alive: Callable[[], bool]
) -> tuple[Callable[[Any], None], Callable[[], int]]:
    """A launcher consumer's handler (reserve a slot, then hand the order over) and capacity."""

    def _order(delivery: Any) -> None:
        if slots().draining:
            # Fetched before the drain: back to the stream, for another launcher.
            delivery.nak(delay_s=0.0)
            return
        if alive():
            slots().reserve()
        # Down: no slot is taken for an order nobody will run; it comes back.
        tell(delivery)

    return _order, lambda: slots().free()
