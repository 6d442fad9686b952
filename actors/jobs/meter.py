"""The running totals of one agent run, written by its run thread, read by the heartbeat."""

from __future__ import annotations

import threading
from typing import Any


class RunMeter:
    """Thread-safe: the run thread sets the totals, the Launcher's heartbeat copies them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._usage: dict[str, Any] = {}

    def set(self, usage: dict[str, Any]) -> None:
        with self._lock:
            self._usage = dict(usage)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the latest totals (`input_tokens`, …, `cost_usd`); empty before any."""
        with self._lock:
            return dict(self._usage)
