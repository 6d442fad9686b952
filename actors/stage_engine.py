"""StageEngine: the sole owner of tasks (stage, branch, retries, history)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from typing import Any

import msgspec

from actors import gate_policy
from actors import stage_policy as policy
from actors.gate_policy import GateInputs, GateResult
from actors.gate_reader import read_gate_inputs
from actors.notice_policy import with_notices
from actors.owner import Owner, flush_outbox
from actors.reconciler_policy import ReplayMove, ReplayMoves, replay_acts, replay_move
from actors.stage_policy import Task
from actors.task_index import PageRequest
from actors.task_outbox import OutboxSender, SendOutbox
from actors.task_settled import HotPart, IndexStores, Segment, TasksHead
from actors.task_state import TaskState
from actors.task_submit import (
    OutboxSent,
    RulesQuery,
    SubmitDesk,
    SubmitExisted,
    SubmitRules,
    TaskCreated,
    task_row,
)
from actors.task_summary import (
    AllTasks,
    FindTasks,
    GetTask,
    GetTasks,
    TaskSummary,
    summarize,
)
from bus import subjects
from bus.bridge import Bus, Delivery, Store, Versioned
from bus.messages import (
    Annotate,
    Approve,
    Cancel,
    ConfirmDeploy,
    JobOutcome,
    Reevaluate,
    Reject,
    Reply,
    Retry,
    Submit,
    Tick,
    TrackerUpdate,
)
from conveyor import faults, validate
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.errors import InvalidField
from conveyor.logs import get_logger
from gateways.forge import Forge

log = get_logger(__name__)


class GateRead(msgspec.Struct, frozen=True):
    """Worker thread -> StageEngine: inputs of a gate, read off the actor thread."""

    task_id: str
    job_id: str
    gate: str
    inputs: GateInputs
    only_pass: bool = False
    cause: str = ""


class StatusQuery(msgspec.Struct, frozen=True):
    """Status endpoint -> StageEngine (ask): `kind` is tasks, task, usage or actor."""

    kind: str
    task_id: str = ""
    page: PageRequest = PageRequest()
    max_bytes: int = 1 << 20


def _task_of(message: Any) -> str:
    """The task a failed message was about, if any."""
    if isinstance(message, GateRead):
        return message.task_id
    if isinstance(message, Delivery) and isinstance(message.body, JobOutcome):
        return message.body.task_id
    return ""


COMMANDS = (Submit, Approve, Reject, Cancel, Retry, ConfirmDeploy)
REPLIED = (*COMMANDS, TrackerUpdate, Reevaluate, Annotate)
"""Asks answered with a `Reply`, also when handling them failed."""


class StageEngine(Owner, TaskState, OutboxSender, SubmitDesk):
    """Sole writer of task stages; every write is a CAS on the task's KV revision."""

    name = "stage_engine"

    def __init__(
        self, bus: Bus, store: Store[Task], forge: Forge, clock: Clock, cfg: Config
    ) -> None:
        super().__init__()
        self._bus, self._store, self._forge, self._clock, self._cfg = bus, store, forge, clock, cfg
        self._init_state()
        self._sent = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="gate-reader"
        )
        self._started_at = 0.0
        self._gates_in_flight: set[str] = set()
        self._stalled: set[str] = set()
        self._replay_moves: list[ReplayMove] = []

    def on_start(self) -> None:
        self._started_at = self._clock.now()
        self._index_stores = IndexStores(
            self._bus.store(subjects.BUCKET_INDEX, TasksHead),
            self._bus.store(subjects.BUCKET_INDEX, Segment),
            self._bus.store(subjects.BUCKET_INDEX, HotPart),
        )
        self._load(self._index_stores)
        for task_id in list(self._tasks):
            self._flush(task_id)
        for task_id, entry in self._tasks.items():
            task = entry.value
            # A gate may have been mid-evaluation when the previous process died.
            if not task.terminal and not task.escalated and task.job_status in ("done", "failed"):
                self._start_gate(task_id)
        self._evict()
        self._checkpoint(force=True)
        log.info("stage_engine.started", hot=len(self._tasks), settled=len(self._settled))

    def on_receive(self, message: Any) -> Any:
        try:
            return super().on_receive(message)
        finally:
            self._evict()

    def on_stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def on_failure(self, *_: object) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def handle(self, message: Any) -> Any:
        match message:
            case Delivery(body=JobOutcome() as outcome):
                self._on_outcome(outcome, message)
            case GateRead():
                self._on_gate(message)
            case Submit():
                return self._submit(message)
            case Approve() | Reject() | Cancel() | Retry() | ConfirmDeploy():
                return self._command(message)
            case TrackerUpdate():
                return self._tracker(message)
            case Reevaluate():
                return self._reevaluate(message)
            case Annotate():
                return self._annotate(message)
            case StatusQuery():
                return self._status(message)
            case SendOutbox(task_id=task_id):
                self._send(task_id)
            case RulesQuery(answer=answer):
                answer.set_result(SubmitRules(self._ids, self._cfg, self._clock))
            case TaskCreated():
                self._created(message)
            case OutboxSent():
                self._outbox_sent(message)
            case SubmitExisted():
                self._existed(message)
            case AllTasks(job_ended=True):
                return self._summaries(self._index.job_ended())
            case AllTasks():
                return self._summaries(self._tasks)
            case ReplayMoves():
                moves, self._replay_moves = self._replay_moves, []
                return moves
            case FindTasks():
                return self._summaries(sorted(self._index.find(message)))
            case GetTasks(task_ids=ids):
                return {i: self._row(i) for i in ids if i in self._tasks or i in self._settled}
            case GetTask(task_id=task_id):
                entry = self._entry(task_id)
                return summarize(entry.value) if entry is not None else None
            case Tick():
                self._heal()
                self._checkpoint()
            case _:
                log.warning("stage_engine.unknown_message", kind=type(message).__name__)
        return None

    def on_failed(self, message: Any, err: Exception) -> Any:
        super().on_failed(message, err)
        stalled = _task_of(message)
        if stalled:
            # Retried on the next tick: a bus outage must not strand a task.
            self._stalled.add(stalled)
        if isinstance(message, REPLIED):
            return Reply(ok=False, error=f"internal error: {err}")
        return None

    def _heal(self) -> None:
        """Finish what a failure interrupted: unflushed outboxes, gates never decided."""
        self._clear_sent()
        for task_id in list(self._unflushed):
            self._flush(task_id)
        for task_id in list(self._stalled):
            self._stalled.discard(task_id)
            entry = self._tasks.get(task_id)
            if entry is None:
                continue
            task = entry.value
            if not task.terminal and not task.escalated and task.job_status in ("done", "failed"):
                self._gates_in_flight.discard(f"{task_id}:{task.job_id}")
                self._start_gate(task_id)

    # --- persistence --------------------------------------------------------------------

    def _save(self, task: Task, decision: policy.Decision, *, later: bool = False) -> None:
        """CAS-write the task with the decision's emits in its outbox, then flush them.

        `later`: answer first; the outbox is sent by the next message (`SendOutbox`).
        """
        stored = msgspec.structs.replace(task, outbox=list(decision.emit))
        current = self._tasks.get(task.id)
        if current is None:
            revision = self._store.create(task.id, stored)
        else:
            if current.value.outbox and self._sent.get(task.id) != current.revision:
                # Never overwrite an outbox not sent yet (a submit's, still queued).
                self._flush(task.id)
                current = self._tasks[task.id]
            revision = self._store.update(task.id, stored, expect=current.revision)
        self._sent.pop(task.id, None)
        self._keep(Versioned(stored, revision))
        faults.point("stage_engine.persisted")
        if later:
            self.actor_ref.tell(SendOutbox(task.id))
        else:
            self._flush(task.id)

    def _flush(self, task_id: str) -> None:
        entry = self._tasks[task_id]
        if self._sent.get(task_id) == entry.revision and entry.value.outbox:
            return  # published: `_clear_sent` clears it, with the others, on the tick
        self._sent.pop(task_id, None)
        self._keep(
            flush_outbox(
                self._bus,
                self._store,
                task_id,
                entry,
                entry.value.outbox,
                fault="stage_engine.published",
            )
        )

    def _apply(self, task_id: str, decision: policy.Decision) -> None:
        before = self._tasks.get(task_id)
        if before is not None:
            decision = with_notices(before.value, decision, self._cfg, now=self._clock.now())
        if decision.task is not None:
            self._save(decision.task, decision)
            log.info(
                "stage_engine.decided",
                task_id=task_id,
                stage=decision.task.stage,
                reason=decision.reason,
            )
        else:
            log.debug("stage_engine.unchanged", task_id=task_id, reason=decision.reason)
        if decision.evaluate:
            self._start_gate(task_id)

    # --- job outcomes and gates ---------------------------------------------------------

    def _on_outcome(self, outcome: JobOutcome, delivery: Delivery[Any]) -> None:
        entry = self._entry(outcome.task_id)
        if entry is None:
            log.warning("stage_engine.outcome_unknown_task", task_id=outcome.task_id)
            delivery.ack()
            return
        self._apply(
            outcome.task_id,
            policy.on_job_outcome(entry.value, outcome, now=self._clock.now(), cfg=self._cfg),
        )
        delivery.ack()

    def _start_gate(self, task_id: str, *, only_pass: bool = False, cause: str = "") -> bool:
        """Read the task's gate in a worker thread; False if a read is already in flight."""
        task = self._tasks[task_id].value
        key = f"{task_id}:{task.job_id}"
        if key in self._gates_in_flight:
            return False
        self._gates_in_flight.add(key)
        gate = gate_policy.gate_for(task, self._cfg)
        job_id = task.job_id
        actor = self.actor_ref

        def _read() -> None:
            inputs = read_gate_inputs(self._forge, task, gate)
            actor.tell(
                GateRead(
                    task_id=task_id,
                    job_id=job_id,
                    gate=gate,
                    inputs=inputs,
                    only_pass=only_pass,
                    cause=cause,
                )
            )

        self._pool.submit(_read)
        return True

    def _on_gate(self, read: GateRead) -> None:
        self._gates_in_flight.discard(f"{read.task_id}:{read.job_id}")
        entry = self._tasks.get(read.task_id)
        if entry is None:
            return
        result: GateResult = gate_policy.evaluate_gate(read.gate, entry.value, read.inputs)
        if read.only_pass and not replay_acts(read.gate, result, self._cfg):
            # A replay of a lost event stays silent unless the gate is green (or CI is red).
            log.debug("stage_engine.replay_not_green", task_id=read.task_id, reason=result.reason)
            return
        log.info(
            "stage_engine.gate_evaluated",
            task_id=read.task_id,
            gate=read.gate,
            verdict=result.verdict,
            reason=result.reason,
            cause=read.cause or None,
        )
        decision = policy.on_gate(
            entry.value,
            read.job_id,
            result,
            now=self._clock.now(),
            revision=entry.revision,
            cfg=self._cfg,
            inputs=read.inputs,
        )
        self._apply(read.task_id, decision)
        moved = replay_move(entry.value, self._tasks.get(read.task_id, entry).value)
        if read.only_pass and moved is not None:
            self._replay_moves = [*self._replay_moves, moved][-100:]

    # --- commands -----------------------------------------------------------------------

    def _command(self, cmd: Approve | Reject | Cancel | Retry | ConfirmDeploy) -> Reply:
        try:
            task_id = validate.work_item_id(cmd.id)
        except InvalidField as err:
            return Reply(ok=False, error=str(err), field=err.field)
        entry = self._entry(task_id)
        if entry is None:
            return Reply(ok=False, error=f"id: no task {task_id}", field="id")
        decision = policy.on_command(
            entry.value, cmd, now=self._clock.now(), revision=entry.revision, cfg=self._cfg
        )
        if not decision.ok:
            log.warning(
                "stage_engine.command_refused",
                task_id=task_id,
                command=type(cmd).__name__,
                reason=decision.error,
            )
            return Reply(ok=False, error=decision.error, field=decision.field or None)
        self._apply(task_id, decision)
        log.info(
            "stage_engine.command_applied",
            task_id=task_id,
            command=type(cmd).__name__,
            reason=decision.reason,
        )
        return Reply(ok=True, task=task_row(self._tasks[task_id].value), note=decision.reason)

    def _tracker(self, update: TrackerUpdate) -> Reply:
        try:
            task_id = validate.work_item_id(update.id)
        except InvalidField as err:
            return Reply(ok=False, error=str(err), field=err.field)
        entry = self._entry(task_id)
        if entry is None:
            return Reply(ok=False, error=f"id: no task {task_id}", field="id")
        decision = policy.on_tracker(
            entry.value, update, now=self._clock.now(), revision=entry.revision, cfg=self._cfg
        )
        self._apply(task_id, decision)
        log.info(
            "stage_engine.tracker_applied",
            task_id=task_id,
            state=update.state,
            key=update.key,
            reason=decision.reason,
        )
        return Reply(ok=True, task=task_row(self._tasks[task_id].value), note=decision.reason)

    def _annotate(self, note: Annotate) -> Reply:
        entry = self._entry(note.id)
        if entry is None:
            return Reply(ok=False, error=f"id: no task {note.id}", field="id")
        decision = policy.on_annotate(entry.value, note, now=self._clock.now())
        self._apply(note.id, decision)
        return Reply(ok=True, note=decision.reason)

    def _reevaluate(self, cmd: Reevaluate) -> Reply:
        entry = self._entry(cmd.id)
        if entry is None:
            return Reply(ok=False, error=f"id: no task {cmd.id}", field="id")
        why = policy.reevaluable(entry.value)
        if why:
            return Reply(ok=False, error=why)
        started = self._start_gate(cmd.id, only_pass=cmd.only_pass, cause=cmd.cause)
        note = "gate read started" if started else "gate read already in flight"
        log.info("stage_engine.reevaluating", task_id=cmd.id, cause=cmd.cause, note=note)
        return Reply(ok=True, note=note)

    # --- status -------------------------------------------------------------------------

    def _summaries(self, task_ids: Iterable[str]) -> list[TaskSummary]:
        tasks = [self._tasks[task_id].value for task_id in task_ids]
        return [summarize(t) for t in sorted(tasks, key=lambda t: t.created_at)]

    def _status(self, query: StatusQuery) -> Any:
        if query.kind == "tasks":
            return self._status_index.page(query.page, self._row, query.max_bytes)
        if query.kind == "usage":
            return {"delivered": self._delivered.as_dict()}
        if query.kind == "task":
            entry = self._tasks.get(query.task_id) or self._store.get(query.task_id)
            if entry is None:
                return None
            record = msgspec.to_builtins(msgspec.structs.replace(entry.value, outbox=[]))
            record.pop("outbox", None)
            record["tokens"] = entry.value.usage.tokens
            record["revision"] = entry.revision
            return record
        counts = self._status_index.counts()
        return {
            "healthy": not self.fenced,
            **counts,
            "escalated": counts["by_state"]["escalated"],
            "gates_in_flight": len(self._gates_in_flight),
            "started_at": self._started_at,
        }
