"""The StageEngine's side of a submit: whoever stores a new task, the engine knows it first.

Two ways in. An `ask` with a `Submit` (the intake, tests) is decided and stored on
the engine's thread. The service's submit front (`actors/submit_front.py`) decides
a submit on the bus loop with the same `prepare` (validation, the id, the record and
its outbox) and stores it there, taking ids from the engine's `IdBook` (`RulesQuery`),
so ids are reserved in one place whichever path took them. The front tells the
engine the stored record (`TaskCreated`) before it answers the client, so the engine
knows every task it is asked about after that answer; when the id turned out to
exist already (`KeyExists`), the engine reads it back and answers (`SubmitExisted`).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Any

import msgspec

from actors import stage_policy as policy
from actors.stage_policy import Task
from actors.task_ids import IdBook
from actors.task_summary import summarize
from bus.kv import KeyExists, Store, Versioned
from bus.messages import Reply, Submit
from conveyor import validate
from conveyor.clock import Clock
from conveyor.config import Config
from conveyor.errors import Fenced, InvalidField
from conveyor.logs import get_logger

log = get_logger(__name__)


class SubmitPlan(msgspec.Struct, frozen=True):
    """A submit decided: the record to create (with its outbox), encoded, and the reply's row."""

    task_id: str
    repo: str
    title: str
    task: Task
    data: bytes
    row: dict[str, Any]


@dataclass(frozen=True)
class SubmitRules:
    """What a submit is decided by: the running engine's IdBook, config and clock."""

    ids: IdBook
    cfg: Config
    clock: Clock


@dataclass(frozen=True)
class RulesQuery:
    """Submit front -> StageEngine: `answer` gets its SubmitRules."""

    answer: concurrent.futures.Future[Any]


@dataclass(frozen=True)
class SubmitExisted:
    """Submit front -> StageEngine: the planned id exists; read it back, `answer` the Reply."""

    plan: SubmitPlan
    answer: concurrent.futures.Future[Any]


class TaskCreated(msgspec.Struct, frozen=True):
    """Submit front -> StageEngine: the planned record is stored at this revision."""

    entry: Versioned[Task]


class OutboxSent(msgspec.Struct, frozen=True):
    """Submit front -> StageEngine: the record's outbox is published (clear it at the tick)."""

    task_id: str
    revision: int


class Prepared(msgspec.Struct, frozen=True):
    """A submit that passed validation, with its id taken and its new task decided."""

    task_id: str
    repo: str
    title: str
    decision: policy.Decision

    def plan(self) -> SubmitPlan:
        task = self.decision.task
        assert task is not None  # noqa: S101 - new_task always creates
        stored = msgspec.structs.replace(task, outbox=list(self.decision.emit))
        data = msgspec.json.encode(stored)
        return SubmitPlan(self.task_id, self.repo, self.title, stored, data, task_row(stored))


def prepare(cmd: Submit, cfg: Config, ids: IdBook, *, now: float) -> Prepared | Reply:
    """Validate `cmd` and decide its task; a refusal is a Reply naming the field.

    An id given is noted in `ids` (so no id taken later is the same); one not given is taken.
    """
    try:
        repo = cfg.repo(validate.repo_name(cmd.repo))
        title = validate.title(cmd.title)
        description = validate.description(cmd.description)
        external_id = validate.external_id(cmd.external_id) if cmd.external_id else ""
        if cmd.id:
            task_id = validate.work_item_id(cmd.id)
            if task_id.split("-")[0] != repo.prefix:
                raise InvalidField("id", f"prefix must be {repo.prefix} for repo {repo.name}")
            ids.seen(task_id)
        else:
            task_id = ids.take(repo.prefix)
    except InvalidField as err:
        log.warning("stage_engine.submit_refused", field=err.field, reason=err.reason)
        return Reply(ok=False, error=str(err), field=err.field)
    decision = policy.new_task(
        task_id=task_id,
        repo=repo.name,
        title=title,
        description=description,
        branch=validate.branch_for(task_id, title),
        now=now,
        cfg=cfg,
        external_id=external_id,
    )
    return Prepared(task_id, repo.name, title, decision)


def task_row(task: Task) -> dict[str, Any]:
    """A task's summary as a command reply carries it."""
    row: dict[str, Any] = msgspec.to_builtins(summarize(task))
    return row


class SubmitDesk:
    """Mixin of the StageEngine: `_submit` (ask), and what the submit front tells it."""

    _store: Store[Task]
    _tasks: dict[str, Versioned[Task]]
    _sent: dict[str, int]
    _ids: IdBook
    _cfg: Config
    _clock: Clock

    def _keep(self, entry: Versioned[Task]) -> None:
        raise NotImplementedError

    def _entry(self, task_id: str) -> Versioned[Task] | None:
        raise NotImplementedError

    def _save(self, task: Task, decision: policy.Decision, *, later: bool = False) -> None:
        raise NotImplementedError

    def _submit(self, cmd: Submit) -> Reply:
        prepared = prepare(cmd, self._cfg, self._ids, now=self._clock.now())
        if isinstance(prepared, Reply):
            return prepared
        existing = self._entry(prepared.task_id)
        if existing is not None:
            return _already(existing, prepared.repo, prepared.title)
        task = prepared.decision.task
        assert task is not None  # noqa: S101 - new_task always creates
        try:
            self._save(task, prepared.decision, later=True)
        except KeyExists:
            # Another engine instance created it first: adopt its record.
            return _already(self._reload(prepared.task_id), prepared.repo, prepared.title)
        log.info("stage_engine.task_created", task_id=prepared.task_id, repo=prepared.repo)
        return Reply(ok=True, task=task_row(self._tasks[prepared.task_id].value))

    def _created(self, created: TaskCreated) -> None:
        entry = created.entry
        current = self._tasks.get(entry.value.id)
        # A tick may have read it back already (and written it since): never go back.
        if current is None or current.revision < entry.revision:
            self._keep(entry)
        log.info("stage_engine.task_created", task_id=entry.value.id, repo=entry.value.repo)

    def _existed(self, existed: SubmitExisted) -> None:
        try:
            plan = existed.plan
            reply = _already(self._reload(plan.task_id), plan.repo, plan.title)
        except Exception as err:
            existed.answer.set_exception(err)
            raise
        existed.answer.set_result(reply)

    def _outbox_sent(self, sent: OutboxSent) -> None:
        entry = self._tasks.get(sent.task_id)
        if entry is not None and entry.revision == sent.revision and entry.value.outbox:
            self._sent[sent.task_id] = sent.revision

    def _reload(self, task_id: str) -> Versioned[Task]:
        reloaded = self._store.get(task_id)
        if reloaded is None:
            raise Fenced(f"task {task_id} exists but cannot be read")
        self._keep(reloaded)
        return reloaded


def _already(existing: Versioned[Task], repo: str, title: str) -> Reply:
    """The answer to a submit whose id exists: the same item again, or a clash."""
    if existing.value.repo != repo or existing.value.title != title:
        return Reply(
            ok=False,
            field="id",
            error=f"id: {existing.value.id} already exists with another repo or title",
        )
    return Reply(ok=True, task=task_row(existing.value), note="already submitted")
