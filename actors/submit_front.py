"""The submit endpoint's path on the bus loop: the StageEngine decides, the loop stores.

A submit through the service used to cross a pool thread, an `ask`, and a KV create
the engine waited for on its own thread (a hop to the loop and back), and the engine
then published the outbox before it took the next message. Here, on the loop that
received the request:

1. the engine plans the submit (`PlanSubmit`: validation, the id, the record with its
   outbox; see `actors/task_submit.py`), answered through a future, no thread waiting;
2. the loop creates the record (the same fenced, retried create as `Store.create`),
   so creates of submits in flight together are in flight together;
3. the engine is told the stored record (`TaskCreated`) before the client is answered:
   whatever the client asks next reaches the engine after it;
4. the reply goes out; then the outbox is published (acks awaited together) and the
   engine is told (`OutboxSent`), so its next tick clears it.

The guarantees stay those of the ask: ok only once the record is durable (a crash
after it loses nothing: the engine's start or tick sends every stored outbox again
under the same message ids); refused input stores nothing; ids are picked by the
engine alone, and an id that exists already is read back and answered by it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from actors.task_outbox import publish_outbox
from actors.task_policy import Task
from actors.task_submit import (
    OutboxSent,
    PlanSubmit,
    SubmitExisted,
    SubmitPlan,
    TaskCreated,
)
from bus.bridge import Bus
from bus.kv import KeyExists, Store, Versioned
from bus.messages import Reply, Submit
from conveyor import faults
from conveyor.errors import BusUnavailable, Fenced
from conveyor.logs import get_logger

log = get_logger(__name__)

UNAVAILABLE = "stage engine unavailable"


class SubmitFront:
    """Submits from the bus loop: planned by the StageEngine, stored and sent by the loop."""

    def __init__(self, bus: Bus, engine: Any, tasks: Store[Task], *, timeout_s: float) -> None:
        self._bus = bus
        self._engine = engine
        self._tasks = tasks
        self._timeout_s = timeout_s
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(self, command: Submit) -> Reply:
        """The reply to `command`; ok once the task record is durable."""
        plan = await self._ask(lambda answer: PlanSubmit(command, answer))
        if not isinstance(plan, SubmitPlan):
            return plan
        try:
            revision = await self._tasks.create_async(plan.task_id, plan.data)
        except KeyExists:
            # Another engine instance (or an earlier try of this id) stored it first.
            return _reply(await self._ask(lambda answer: SubmitExisted(plan, answer)))
        except (BusUnavailable, Fenced) as err:
            log.warning("submit_front.create_failed", task_id=plan.task_id, error=str(err))
            return Reply(ok=False, error=f"task {plan.task_id} not stored: {err}")
        faults.point("stage_engine.persisted")
        # Before the answer: anything the client sends after it finds the engine knowing.
        self._engine.tell(TaskCreated(Versioned(plan.task, revision)))
        sending = asyncio.ensure_future(self._send(plan, revision))
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)
        return Reply(ok=True, task=plan.row)

    async def _send(self, plan: SubmitPlan, revision: int) -> None:
        """Publish the stored outbox; a failure is left to the engine's next tick."""
        try:
            await publish_outbox(self._bus, plan.task_id, revision, plan.task.outbox)
        except (BusUnavailable, Fenced) as err:
            log.warning("submit_front.send_failed", task_id=plan.task_id, error=str(err))
            return
        faults.point("stage_engine.published")
        self._engine.tell(OutboxSent(plan.task_id, revision))

    async def _ask(self, message: Any) -> SubmitPlan | Reply:
        """Tell the engine `message(answer)` and await the answer without holding a thread."""
        if not self._engine.is_alive():
            return Reply(ok=False, error=f"{UNAVAILABLE}: it is down; retry")
        answer: concurrent.futures.Future[SubmitPlan | Reply] = concurrent.futures.Future()
        self._engine.tell(message(answer))
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(answer)), self._timeout_s
            )
        except TimeoutError:
            return Reply(ok=False, error=f"{UNAVAILABLE}: no answer in {self._timeout_s:g} s")
        except Fenced:
            # Fenced while deciding: the engine stopped, and its supervisor restarts it.
            return Reply(ok=False, error=f"{UNAVAILABLE}: it stopped; retry")
        except Exception as err:  # noqa: BLE001 - every submit is answered
            return Reply(ok=False, error=f"internal error: {err}")


def _reply(answer: SubmitPlan | Reply) -> Reply:
    if isinstance(answer, Reply):
        return answer
    return Reply(ok=False, error=f"internal error: unexpected answer for {answer.task_id}")
