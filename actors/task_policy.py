"""The StageEngine's task record and its bookkeeping, apart from how a task moves.

A `Task` is the StageEngine's state; a `Decision` is what every stage policy
function returns. The circuit breaker, the applied-event memory and history notes
change a task without moving it, so they live here too. Pure: no I/O, clock or logs.
"""

from __future__ import annotations

import msgspec

from actors.gate_policy import GateResult
from actors.usage_policy import Usage
from bus.messages import Alert, Annotate, BusMessage, JobOutcome, Message, TrackerUpdate
from conveyor.config import Config
from conveyor.pipeline import (
    CREATED,
    GATE_DEPLOY,
    JOB_DONE,
    JOB_FAILED,
    OUTCOME_AUTH_REFUSED,
    STEP_CONFIRM,
    STEP_INTAKE,
    TERMINAL,
)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stage change of a task and why it happened."""

    at: float
    old: str
    new: str
    cause: str
    cost_usd: float = 0.0
    """What the agents spent on the stage visit that ended here (USD and tokens)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


class Brief(msgspec.Struct, frozen=True, kw_only=True):
    """Why work came back to a stage, as the next run of its role is told."""

    kind: str
    """review, tests, ci, no_work, merge, deploy, gate, stalled or over_budget (`brief_policy`)."""
    stage: str
    """The stage whose gate sent the work back."""
    head: str = ""
    """The branch head the failure was seen at; the same kind at the same head is kept once."""
    text: str
    count: int = 1
    """How many times this failure was seen at this head."""
    at: float = 0.0


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A work item on its way through the pipeline; owned by the StageEngine alone."""

    id: str
    repo: str
    title: str
    description: str = ""
    branch: str
    stage: str = CREATED
    step: str = STEP_INTAKE
    visits: dict[str, int] = msgspec.field(default_factory=dict)
    job_id: str = ""
    job_status: str = ""
    approved: bool = False
    developer_retries: int = 0
    stage_retries: int = 0
    escalated: bool = False
    last_reason: str = ""
    external_id: str = ""
    """The work item in the tracker (a Plane uuid); empty for CLI items."""
    hold: str = ""
    """`blocked` or `needs_input` while a human holds the work item; the Reconciler skips it."""
    tracker_state: str = ""
    """The last tracker state key applied (what the Reconciler compares a polled state with)."""
    applied: list[str] = msgspec.field(default_factory=list)
    """Keys of the tracker events already applied (newest last, bounded)."""
    head_sha: str = ""
    """The branch head the last job left behind."""
    visit_base_sha: str = ""
    """The branch head when the current work visit was requested: a CI gate passes only
    once the visit moved the head past it (a visit that committed nothing is no progress)."""
    merge_sha: str = ""
    """The commit the task's last merge step put on main: its production deploy ships it."""
    staged_sha: str = ""
    """The branch head the task's last staging deploy left: the tree staging judged."""
    job_reason: str = ""
    """Why the last job failed, for people ("rate limited (429)", "exit code 1"); empty when
    it succeeded."""
    job_outcome: str = ""
    """How the last job's agent run ended when it failed (`stalled`, `over_budget`, …)."""
    jobs_requested: int = 0
    """Jobs requested since the task was created or retried by an operator (circuit breaker)."""
    cost_usd: float = 0.0
    """Agent cost reported over the task's whole life."""
    budget_used_usd: float = 0.0
    """Agent cost since creation or the last operator retry (circuit breaker)."""
    input_tokens: int = 0
    """Tokens reported over the task's whole life (with `cost_usd`, the task's usage)."""
    output_tokens: int = 0
    cached_tokens: int = 0
    budget_used_tokens: int = 0
    """Tokens (input + output) since creation or the last operator retry (circuit breaker)."""
    stage_usage: Usage = msgspec.field(default_factory=Usage)
    """What the agents spent on the current stage visit (goes into its history entry)."""
    briefs: list[Brief] = msgspec.field(default_factory=list)
    """Rework briefs, oldest first (bounded); the newest went into the last job request."""
    created_at: float = 0.0
    updated_at: float = 0.0
    history: list[HistoryEntry] = msgspec.field(default_factory=list)
    outbox: list[BusMessage] = msgspec.field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """True once the task is done or cancelled."""
        return self.stage in TERMINAL

    @property
    def usage(self) -> Usage:
        """What the task's agents reported spending over its whole life."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cached_tokens=self.cached_tokens,
            cost_usd=self.cost_usd,
        )

    def visit(self, stage: str) -> int:
        """How many times work for `stage` has been requested."""
        return self.visits.get(stage, 0)


JOB_ENDED = frozenset({JOB_DONE, JOB_FAILED})
"""Job statuses after which the step's gate can be read."""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with one input: the new task (or None), what to emit, and why."""

    task: Task | None = None
    emit: tuple[Message, ...] = ()
    reason: str
    ok: bool = True
    error: str = ""
    field: str = ""
    evaluate: bool = False


def refuse(reason: str, field: str = "id") -> Decision:
    """A refused input: nothing changes and `error` names why."""
    return Decision(reason=reason, ok=False, error=reason, field=field)


def job_id_for(task_id: str, stage: str, visit: int, step: str) -> str:
    """Deterministic job id: a replayed request names the same job."""
    return f"{task_id}.{stage}.{visit}.{step}"


def breaker_open(task: Task, cfg: Config) -> str:
    """Why the task must not get another job (its circuit breaker), or ""."""
    limit = cfg.pipeline.max_task_jobs
    if limit > 0 and task.jobs_requested >= limit:
        return f"circuit breaker: {task.jobs_requested} jobs requested (limit {limit})"
    return ""


def outcome_usage(outcome: JobOutcome) -> Usage:
    """What a job reported spending over all its attempts."""
    return Usage(
        input_tokens=outcome.input_tokens,
        output_tokens=outcome.output_tokens,
        cached_tokens=outcome.cached_tokens,
        cost_usd=outcome.cost_usd,
    )


def charged(task: Task, usage: Usage) -> Task:
    """The task with a job's usage added to its totals, its stage visit and its budget."""
    total = task.usage + usage
    return msgspec.structs.replace(
        task,
        cost_usd=total.cost_usd,
        input_tokens=total.input_tokens,
        output_tokens=total.output_tokens,
        cached_tokens=total.cached_tokens,
        budget_used_usd=task.budget_used_usd + usage.cost_usd,
        budget_used_tokens=task.budget_used_tokens + usage.tokens,
        stage_usage=task.stage_usage + usage,
    )


def over_ceiling(task: Task, cfg: Config) -> str:
    """Why the task's spending since its last retry trips a per-task ceiling, or ""."""
    budget = cfg.pipeline.max_task_cost_usd
    if budget > 0 and task.budget_used_usd >= budget:
        spent = f"${task.budget_used_usd:.2f} of ${budget:.2f}"
        return f"circuit breaker: agent budget spent ({spent}) on pipeline.max_task_cost_usd"
    tokens = cfg.pipeline.max_task_tokens
    if tokens > 0 and task.budget_used_tokens >= tokens:
        used = f"{task.budget_used_tokens:,} of {tokens:,} tokens"
        return f"circuit breaker: agent token budget spent ({used}) on pipeline.max_task_tokens"
    return ""


def history_entry(task: Task, new: str, cause: str, now: float) -> HistoryEntry:
    """The history entry of leaving the current stage visit, with what it spent."""
    spent = task.stage_usage
    return HistoryEntry(
        at=now,
        old=task.stage,
        new=new,
        cause=cause,
        cost_usd=spent.cost_usd,
        input_tokens=spent.input_tokens,
        output_tokens=spent.output_tokens,
        cached_tokens=spent.cached_tokens,
    )


def job_failure(outcome: JobOutcome) -> str:
    """Why a job failed, for people: the agent's outcome when known, never a bare exit code."""
    if outcome.outcome == OUTCOME_AUTH_REFUSED and "authentication refused" not in outcome.reason:
        return f"authentication refused{': ' + outcome.reason if outcome.reason else ''}"
    if outcome.reason:
        return outcome.reason
    return outcome.error or f"exit code {outcome.exit_code}"


def with_job_failure(task: Task, result: GateResult) -> GateResult:
    """A gate that fails after a failed job names the job's failure too."""
    if task.job_status != JOB_FAILED or not task.job_reason or result.verdict == "pass":
        return result
    reason = f"{result.reason}; the job failed: {task.job_reason}"
    return msgspec.structs.replace(result, reason=reason)


def alert(task: Task, text: str, now: float, level: str = "warning", kind: str = "") -> Alert:
    """An alert about `task` from the StageEngine."""
    return Alert(level=level, text=text, task_id=task.id, source="stage_engine", at=now, kind=kind)


def escalate(task: Task, reason: str, now: float) -> Decision:
    """Stop the task until an operator retries it, with an error alert saying why."""
    escalated = msgspec.structs.replace(task, escalated=True, last_reason=reason, updated_at=now)
    text = f"{task.id} escalated on {task.stage}: {reason}; fix it, then `conveyor retry {task.id}`"
    return Decision(
        task=escalated,
        emit=(alert(task, text, now, level="error", kind="escalated"),),
        reason=f"escalated: {reason}",
    )


def guarded(task: Task, cfg: Config) -> bool:
    """Whether the task's stage is the production deploy of a protected repository."""
    stage_cfg = cfg.stage(task.stage)
    repo = next((r for r in cfg.repos if r.name == task.repo), None)
    return (
        stage_cfg is not None
        and stage_cfg.gate == GATE_DEPLOY
        and repo is not None
        and repo.protected
    )


def await_confirm(task: Task, now: float) -> tuple[Task, Alert]:
    """Park the task before its production deploy and tell the operator what to do."""
    reason = "waiting for Confirm Deploy (protected repository)"
    # The visit starts now, so the confirmed job has an id no earlier deploy used.
    visits = {**task.visits, task.stage: task.visits.get(task.stage, 0) + 1}
    waiting = msgspec.structs.replace(
        task,
        step=STEP_CONFIRM,
        visits=visits,
        job_id="",
        job_status="",
        last_reason=reason,
        updated_at=now,
    )
    text = (
        f"{task.id} is ready for its production deploy of {task.repo} (protected): move it to "
        f"Confirm Deploy, or run `conveyor confirm-deploy {task.id}`"
    )
    return waiting, alert(waiting, text, now, level="warning")


MAX_APPLIED = 50
"""How many applied tracker event keys a task remembers (older ones are long out of replay)."""


def on_annotate(task: Task, note: Annotate, *, now: float) -> Decision:
    """Add a note to the history (same stage before and after), once per key."""
    if note.key in task.applied:
        return Decision(reason=f"note {note.key} already recorded")
    entry = HistoryEntry(at=now, old=task.stage, new=task.stage, cause=note.cause)
    noted = msgspec.structs.replace(
        task,
        history=[*task.history, entry],
        applied=[*task.applied, note.key][-MAX_APPLIED:],
        updated_at=now,
    )
    return Decision(task=noted, reason=f"noted: {note.cause}")


def remember(task: Task, update: TrackerUpdate, reason: str) -> Decision:
    """The task having applied tracker event `update` (its key kept, bounded)."""
    applied = [*task.applied, update.key][-MAX_APPLIED:]
    remembered = msgspec.structs.replace(
        task, applied=applied, hold=task.hold, tracker_state=update.state
    )
    return Decision(task=remembered, reason=reason)


def reevaluable(task: Task) -> str:
    """Why the task's gate cannot be read again now, or "" when it can."""
    if task.terminal:
        return f"task is {task.stage}"
    if task.escalated:
        return "task is escalated"
    if task.job_status not in JOB_ENDED:
        return f"its job is {task.job_status or 'not requested'}"
    return ""
