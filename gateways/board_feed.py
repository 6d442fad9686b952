"""Bus events for the board's live updates and the metrics' counters.

Stage changes and job messages are read with plain core subscriptions (a JetStream
publish reaches them too, and a core subscription holds nothing on the server);
alerts with an ordered consumer that starts a day back, so the board lists the
recent ones from the moment it starts. Each event is handed to the listeners
(the metrics) and, as a small JSON document, to every server-sent-events client.

A client that does not keep up (its queue full) is sent `resync` and its queue
emptied: the page reloads its data instead of replaying what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.api as js_api
import nats.js.errors
from nats.aio.msg import Msg

from bus import subjects
from bus.bridge import Bus
from bus.messages import Alert, BusMessage, JobOutcome, StageChanged, bus_decoder
from conveyor.clock import Clock
from conveyor.logs import get_logger

log = get_logger(__name__)

ALERTS_BACK_S = 86400.0
"""How far back the alert list starts when the board starts."""
CLIENT_QUEUE = 64
"""Events queued per SSE client before it is told to resync."""
CLOSED = "closed"

Listener = Callable[[BusMessage], None]


class Feed:
    """Subscribes once per process; SSE clients and listeners share it. Bus loop only."""

    def __init__(self, bus: Bus, clock: Clock, alerts_kept: int) -> None:
        self._bus = bus
        self._clock = clock
        self._subs: list[Any] = []
        self._clients: set[asyncio.Queue[str]] = set()
        self._listeners: list[Listener] = []
        self.alerts: deque[dict[str, Any]] = deque(maxlen=alerts_kept)
        self.started_at = 0.0

    def listen(self, listener: Listener) -> None:
        """Call `listener` with every decoded stage change, job message and alert."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self.started_at = self._clock.now()
        nc = self._bus.nc
        self._subs.append(await nc.subscribe(subjects.STAGE_ALL, cb=self._on_msg))
        self._subs.append(await nc.subscribe(subjects.JOBS_ALL, cb=self._on_msg))
        since = datetime.fromtimestamp(self.started_at - ALERTS_BACK_S, UTC)
        alerts: Any
        try:
            alerts = await self._bus.js.subscribe(
                subjects.ALERTS,
                stream=subjects.STREAM_NOTIFY,
                cb=self._on_msg,
                ordered_consumer=True,
                deliver_policy=js_api.DeliverPolicy.BY_START_TIME,
                config=js_api.ConsumerConfig(opt_start_time=since),
            )
        except nats.js.errors.NotFoundError:
            # A gateway started before any control made the streams: live alerts only.
            log.warning("board.alert_history_unavailable", stream=subjects.STREAM_NOTIFY)
            alerts = await nc.subscribe(subjects.ALERTS, cb=self._on_msg)
        self._subs.append(alerts)

    async def stop(self) -> None:
        """Unsubscribe and end every SSE stream."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for queue in list(self._clients):
            _put(queue, CLOSED)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            body = bus_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        for listener in self._listeners:
            try:
                listener(body)
            except Exception:  # a bug in the metrics must not stop the board
                log.exception("board.listener_failed", type=type(body).__name__)
        event = _event(body)
        if isinstance(body, Alert):
            self.alerts.appendleft(event)
        for queue in list(self._clients):
            _put(queue, msgspec.json.encode(event).decode())

    # --- SSE clients ----------------------------------------------------------------------

    def attach(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self._clients.add(queue)
        return queue

    def detach(self, queue: asyncio.Queue[str]) -> None:
        self._clients.discard(queue)

    @property
    def clients(self) -> int:
        return len(self._clients)


def _put(queue: asyncio.Queue[str], item: str) -> None:
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait('{"type":"resync"}' if item != CLOSED else CLOSED)


def _event(body: BusMessage) -> dict[str, Any]:
    """The small document an SSE client gets: enough to update in place, or to refetch."""
    if isinstance(body, StageChanged):
        return {
            "type": "stage",
            "task_id": body.task_id,
            "repo": body.repo,
            "old": body.old,
            "new": body.new,
            "cause": body.cause,
            "at": body.at,
        }
    if isinstance(body, Alert):
        return {
            "type": "alert",
            "level": body.level,
            "kind": body.kind,
            "text": body.text,
            "task_id": body.task_id,
            "source": body.source,
            "at": body.at,
        }
    task_id = body.task_id if isinstance(body, JobOutcome) else ""
    return {"type": "job", "message": type(body).__name__, "task_id": task_id}
