"""The numbers of task ids: the highest per prefix, stored or taken, shared across threads.

The StageEngine notes every task it keeps (`seen`); a new id is `take`n, which
reserves its number at once, so two submits decided before either record is stored
(one by the engine, one by the submit front on the bus loop) never get the same id.
A number taken for a record that was never stored is skipped, not given again.
"""

from __future__ import annotations

import threading


class IdBook:
    """The highest task-id number per prefix; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}

    def seen(self, task_id: str) -> None:
        """Note an existing id (`<prefix>-<number>`; other shapes carry no number)."""
        prefix, _, number = task_id.rpartition("-")
        if number.isdigit():
            with self._lock:
                self._last[prefix] = max(self._last.get(prefix, 0), int(number))

    def take(self, prefix: str) -> str:
        """The next id of `prefix`, reserved."""
        with self._lock:
            number = self._last.get(prefix, 0) + 1
            self._last[prefix] = number
        return f"{prefix}-{number}"
