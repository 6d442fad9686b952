"""Unacknowledged JetStream deliveries of this process, kept alive while it lives.

A consumer's `ack_wait` is how long a message fetched by a process that died stays
invisible before it is delivered again. It is short (seconds) so a restarted
process gets its predecessor's messages back at once; a live process that still
holds a message (queued in an actor's mailbox, or being handled) tells the server
so with `in_progress` every fraction of `ack_wait`, so live work is not redelivered
under it. A message held longer than `max_hold_s` is let go: an actor that never
acknowledges it should see it again rather than keep it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from nats.aio.msg import Msg

from conveyor.clock import Clock, SystemClock
from conveyor.logs import get_logger

log = get_logger(__name__)

KEEP_ALIVE_FRACTION = 4
"""`in_progress` is sent every `ack_wait / KEEP_ALIVE_FRACTION`: three missed beats still hold."""


class InFlight:
    """The deliveries handed to actors and not yet acked, naked or terminated."""

    def __init__(self, ack_wait_s: float, *, max_hold_s: float, clock: Clock | None = None) -> None:
        self.ack_wait_s = ack_wait_s
        self.max_hold_s = max_hold_s
        self._clock = clock or SystemClock()
        self._held: dict[int, tuple[Msg, float]] = {}
        self._lock = threading.Lock()

    @property
    def interval_s(self) -> float:
        """How often the held messages are reported in progress."""
        return self.ack_wait_s / KEEP_ALIVE_FRACTION

    def hold(self, msg: Msg) -> None:
        """`msg` was handed to an actor: keep it alive until `settled`."""
        with self._lock:
            self._held[id(msg)] = (msg, self._clock.monotonic())

    def settled(self, msg: Msg) -> None:
        """`msg` was acked, naked or terminated: stop keeping it alive."""
        with self._lock:
            self._held.pop(id(msg), None)

    def count(self) -> int:
        with self._lock:
            return len(self._held)

    def due(self) -> list[Msg]:
        """The messages to report in progress now; those held too long are let go."""
        now = self._clock.monotonic()
        with self._lock:
            for key, (msg, since) in list(self._held.items()):
                if now - since > self.max_hold_s:
                    del self._held[key]
                    log.warning("bus.delivery_released", subject=msg.subject, held_s=now - since)
            return [msg for msg, _ in self._held.values()]

    async def keep_alive(self, stopping: Callable[[], bool]) -> None:
        """Report every held message in progress, every `interval_s`, until `stopping`."""
        while not stopping():
            await asyncio.sleep(self.interval_s)
            for msg in self.due():
                # Acked in the meantime (MsgAlreadyAckdError) or the connection is away:
                # either way there is nothing to keep alive, or nobody to tell.
                with contextlib.suppress(Exception):
                    await msg.in_progress()
