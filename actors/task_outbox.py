"""A submitted task's outbox, published after the submit is answered, acks awaited together.

A submit is answered once the task record, with its outbox, is durable (ADR 0003:
from then on a crash loses nothing, because a start publishes every stored outbox
again under the same message ids, which the stream stores once). The outbox is
published by the next message the StageEngine handles (`SendOutbox`), every message
at once with their acks awaited together, and the write that clears it waits for the
next `Tick`, unless the task is written before that, which replaces the outbox anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import msgspec
from nats.js.api import PubAck

from actors.task_policy import Task
from bus import fence, subjects
from bus.bridge import MSG_ID, Bus
from bus.kv import Store, Versioned
from bus.messages import Message, encode
from bus.writes import retry_write
from conveyor import faults


class SendOutbox(msgspec.Struct, frozen=True):
    """StageEngine -> itself: publish the task's stored outbox (answered submit first)."""

    task_id: str


def _publisher(
    bus: Bus, subject: str, data: bytes, headers: dict[str, str]
) -> Callable[[int], Awaitable[PubAck]]:
    return lambda _try: bus.js.publish(subject, data, headers=headers)


def publish_all(bus: Bus, key: str, revision: int, outbox: Sequence[Message]) -> None:
    """Publish `outbox` as `flush_outbox` does (ids `<key>:<revision>:<index>`), acks together."""
    bus.call(
        publish_outbox(bus, key, revision, outbox),
        timeout_s=bus.write_retry_s + bus.request_timeout_s + 2.0,
    )


async def publish_outbox(bus: Bus, key: str, revision: int, outbox: Sequence[Message]) -> None:
    """`publish_all` on the bus loop itself."""
    writes: list[Coroutine[Any, Any, PubAck]] = []
    for index, msg in enumerate(outbox):
        subject = subjects.subject_for(msg)
        if not subjects.is_durable(msg):
            bus.publish_core(subject, msg)
            continue
        headers = {**bus.write_stamp(), MSG_ID: f"{key}:{revision}:{index}"}
        data = encode(msg)

        op = fence.refenced(_publisher(bus, subject, data, headers), bus.write_stamp)
        writes.append(retry_write(op, budget_s=bus.write_retry_s, what=subject))
    await asyncio.gather(*writes)


class OutboxSender:
    """The StageEngine's side of it: send a stored outbox now, clear it at the next flush."""

    _bus: Bus
    _store: Store[Task]
    _tasks: dict[str, Versioned[Task]]
    _sent: dict[str, int]
    """Tasks whose stored outbox was published at that revision, and not cleared yet."""

    def _keep(self, entry: Versioned[Task]) -> None:
        raise NotImplementedError

    def _send(self, task_id: str) -> None:
        """Publish a stored outbox, acks awaited together; its clear waits for the next tick."""
        entry = self._tasks.get(task_id)
        if entry is None or not entry.value.outbox or self._sent.get(task_id) == entry.revision:
            return
        publish_all(self._bus, task_id, entry.revision, entry.value.outbox)
        faults.point("stage_engine.published")
        self._sent[task_id] = entry.revision

    def _clear_sent(self) -> None:
        """Clear the outboxes `_send` published, their writes in flight together.

        One that does not land stays for the next tick, or for the ordinary flush.
        """
        sent = [(k, self._tasks.get(k), r) for k, r in self._sent.items()]
        writes = [
            (k, msgspec.structs.replace(e.value, outbox=[]), r)
            for k, e, r in sent
            if e is not None and e.revision == r and e.value.outbox
        ]
        landed = self._store.update_many(writes)
        for key, cleared, _ in writes:
            if key in landed:
                self._sent.pop(key, None)
                self._keep(Versioned(cleared, landed[key]))
