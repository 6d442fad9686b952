"""The submit endpoint's path on the bus loop: decided and stored there, known to the engine.

A submit through the service used to cross a pool thread, an `ask` to the engine's
thread, and a KV create the engine waited for (a hop to the loop and back); the
engine then published the outbox before it took its next message. Each hop between
threads waits for the GIL, which a busy thread hands over only every few ms. Here the
whole path stays on the loop that received the request:

1. the submit is decided by the engine's own rules (`task_submit.prepare`: validation,
   the id taken from the engine's `IdBook`, the record with its outbox);
2. the record is created (the same fenced, retried create as `Store.create`), so the
   creates of submits in flight together are in flight together;
3. the engine is told the stored record (`TaskCreated`) before the client is answered:
   whatever the client asks next reaches the engine after it, and only the engine
   writes the task from then on;
4. the reply goes out; then the outbox is published (acks awaited together) and the
   engine is told (`OutboxSent`), so its next tick clears it.

The guarantees are those of the ask: ok only once the record is durable (a crash
after it loses nothing: the engine's start or tick sends every stored outbox again
under the same message ids); refused input stores nothing; ids come from one book;
an id that exists already fails the create and is read back and answered by the
engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from actors.task_outbox import publish_outbox
from actors.task_policy import Task
from actors.task_submit import (
    OutboxSent,
    RulesQuery,
    SubmitExisted,
    SubmitPlan,
    SubmitRules,
    TaskCreated,
    prepare,
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
    """Submits decided and stored on the bus loop, told to the StageEngine before answering."""

    def __init__(self, bus: Bus, engine: Any, tasks: Store[Task], *, timeout_s: float) -> None:
        self._bus = bus
        self._engine = engine
        self._tasks = tasks
        self._timeout_s = timeout_s
        self._rules: tuple[str, SubmitRules] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def submit(self, command: Submit) -> Reply:
        """The reply to `command`; ok once the task record is durable."""
        if not self._engine.is_alive():
            # Not while it restarts: it could not be told, nor answer for the task.
            return Reply(ok=False, error=f"{UNAVAILABLE}: it is down; retry")
        rules = await self._engine_rules()
        if isinstance(rules, Reply):
            return rules
        prepared = prepare(command, rules.cfg, rules.ids, now=rules.clock.now())
        if isinstance(prepared, Reply):
            return prepared
        plan = prepared.plan()
        try:
            revision = await self._tasks.create_async(plan.task_id, plan.data)
        except KeyExists:
            # Submitted before (or by another engine instance): the engine answers for it.
            existed = await self._ask(lambda answer: SubmitExisted(plan, answer))
            return existed if isinstance(existed, Reply) else Reply(ok=False, error="no answer")
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

    async def _engine_rules(self) -> SubmitRules | Reply:
        """The running engine's rules (a restarted engine has its own IdBook, from the store)."""
        urn = str(self._engine.actor_urn)
        if self._rules is None or self._rules[0] != urn:
            rules = await self._ask(RulesQuery)
            if not isinstance(rules, SubmitRules):
                return rules if isinstance(rules, Reply) else Reply(ok=False, error="no rules")
            self._rules = (urn, rules)
        return self._rules[1]

    async def _send(self, plan: SubmitPlan, revision: int) -> None:
        """Publish the stored outbox; a failure is left to the engine's next tick."""
        try:
            await publish_outbox(self._bus, plan.task_id, revision, plan.task.outbox)
        except (BusUnavailable, Fenced) as err:
            log.warning("submit_front.send_failed", task_id=plan.task_id, error=str(err))
            return
        faults.point("stage_engine.published")
        self._engine.tell(OutboxSent(plan.task_id, revision))

    async def _ask(self, message: Callable[[Future[Any]], Any]) -> Any:
        """Tell the engine `message(answer)` and await the answer without holding a thread."""
        if not self._engine.is_alive():
            return Reply(ok=False, error=f"{UNAVAILABLE}: it is down; retry")
        answer: Future[Any] = Future()
        self._engine.tell(message(answer))
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(answer)), self._timeout_s
            )
        except TimeoutError:
            return Reply(ok=False, error=f"{UNAVAILABLE}: no answer in {self._timeout_s:g} s")
        except Fenced:
            # Fenced while answering: the engine stopped, and its supervisor restarts it.
            return Reply(ok=False, error=f"{UNAVAILABLE}: it stopped; retry")
        except Exception as err:  # noqa: BLE001 - every submit is answered
            return Reply(ok=False, error=f"internal error: {err}")
