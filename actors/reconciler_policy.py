"""Pure decisions of the Reconciler: which gates to read again, which Plane states to replay.

The pipeline moves on events. A lost webhook (a CI status, a merge, a state
change in Plane) must not strand a task, so the Reconciler replays what the
event would have caused: a gate read (acted on only if green) once a stage's
grace has passed, and a work item state that the task never saw.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec

from actors.gate_policy import GateResult
from actors.intake_policy import state_key, task_id_for
from actors.task_policy import Task
from bus.messages import PolledItem, WorkItemEvent
from conveyor.config import Config
from conveyor.pipeline import (
    GATE_CI_GREEN,
    JOB_DONE,
    JOB_FAILED,
    STATE_APPROVED,
    STATE_BLOCKED,
    STATE_IN_PROGRESS,
    STATE_NEEDS_INPUT,
    STATE_REJECTED,
    STEP_CONFIRM,
    STEP_WORK,
    TERMINAL,
)

REPLAYED_STATES = frozenset(
    {STATE_IN_PROGRESS, STATE_APPROVED, STATE_REJECTED, STATE_BLOCKED, STATE_NEEDS_INPUT}
)
"""Plane states a poll replays. Never Confirm Deploy: a production deploy needs a live human."""


class TaskRow(msgspec.Struct, frozen=True, kw_only=True):
    """What the Reconciler reads of a task (the StageEngine's status row)."""

    id: str
    repo: str
    stage: str
    step: str = ""
    job_id: str = ""
    job_status: str = ""
    escalated: bool = False
    hold: str = ""
    tracker_state: str = ""
    updated_at: float = 0.0


class Replay(msgspec.Struct, frozen=True, kw_only=True):
    """Read this task's gate again (acting only if it is green)."""

    task_id: str
    reason: str


class ReplayMove(msgspec.Struct, frozen=True, kw_only=True):
    """A task that a replayed gate read (the Reconciler's own work) moved."""

    task_id: str
    old_stage: str
    new_stage: str
    job_id: str
    """The job whose gate the replay read."""
    reason: str = ""


class ReplayMoves(msgspec.Struct, frozen=True):
    """Reconciler -> StageEngine (ask): the moves replays made since the last ask (drained)."""


def replay_acts(gate: str, result: GateResult, cfg: Config) -> bool:
    """Whether a replayed gate read is acted on.

    A green gate always is. A red CI (a lost `failure` status) is too, when
    configured: the task is retried through the ordinary failed-gate path rather
    than stranded waiting for an event that will not come. Anything else (still
    pending, unreadable) stays silent, as a replay must.
    """
    if result.verdict == "pass":
        return True
    return cfg.reconciler.retry_red_ci and gate == GATE_CI_GREEN and result.verdict == "retry"


def replay_move(before: Task, after: Task | None) -> ReplayMove | None:
    """The move a replayed read made of `before`, or None when the task stayed put."""
    if after is None or (after.stage, after.step, after.job_id) == (
        before.stage,
        before.step,
        before.job_id,
    ):
        return None
    return ReplayMove(
        task_id=before.id,
        old_stage=before.stage,
        new_stage=after.stage,
        job_id=before.job_id,
        reason=after.last_reason,
    )


def unblocked_text(move: ReplayMove) -> str:
    """The alert that says what the Reconciler's own replay did."""
    why = f": {move.reason}" if move.reason else ""
    return (
        f"reconciler unblocked {move.task_id}: {move.old_stage} → {move.new_stage}"
        f" (a lost event{why})"
    )


def grace_for(stage: str, cfg: Config) -> float:
    """Seconds a stage waits for its event before the Reconciler reads its gate."""
    return cfg.reconciler.stage_grace_s.get(stage, cfg.reconciler.grace_s)


def skip_reason(row: TaskRow, cfg: Config) -> str:
    """Why a task is not the Reconciler's business now, or ""."""
    if row.stage in TERMINAL:
        return f"task is {row.stage}"
    if row.escalated:
        return "task is escalated"
    if cfg.reconciler.skip_blocked and row.hold:
        return f"task is held ({row.hold})"
    if row.step == STEP_CONFIRM:
        return "its production deploy waits for Confirm Deploy"
    stage = cfg.stage(row.stage)
    if stage is not None and stage.human_approval and row.step == STEP_WORK:
        return f"{row.stage} waits for a human"
    if row.job_status not in (JOB_DONE, JOB_FAILED):
        return f"its job is {row.job_status or 'not requested'}"
    return ""


def due(
    rows: Sequence[TaskRow], *, now: float, replayed_at: Mapping[str, float], cfg: Config
) -> list[Replay]:
    """Tasks whose gate should be read again: quiet past the grace, at most once per grace."""
    out: list[Replay] = []
    for row in rows:
        if skip_reason(row, cfg):
            continue
        grace = grace_for(row.stage, cfg)
        quiet = now - row.updated_at
        if quiet < grace or now - replayed_at.get(row.id, float("-inf")) < grace:
            continue
        out.append(Replay(task_id=row.id, reason=f"quiet on {row.stage} for {quiet:.0f}s"))
    return out


RECHECK_S = 600.0
"""Polled items updated this long before the newest stamp of the last poll are compared
again: an item changed while a poll was paging is never missed."""


def to_compare(
    items: Sequence[PolledItem],
    stamps: Mapping[str, float | None],
    *,
    since: float | None,
    pending: Collection[str],
) -> list[PolledItem]:
    """The polled items worth comparing with their tasks (the rest changed nothing).

    `stamps` are the items' `updated_at` on Plane's clock (None: unreadable), `since`
    the newest stamp of the previous poll (None: the first poll since start: every
    item), `pending` the items whose replay was published last time (compared until
    their task agrees). So a poll costs the items that moved, not every card.
    """
    if since is None:
        return list(items)
    out: list[PolledItem] = []
    for item in items:
        stamp = stamps.get(item.id)
        if item.id in pending or stamp is None or stamp >= since - RECHECK_S:
            out.append(item)
    return out


FULL_POLL_S = 3600.0
"""A bounded poll trusts Plane to list newest first; this often the whole list is read."""


def poll_scope(
    polled_upto: float | None, pending: Mapping[str, str], *, now: float, last_full: float
) -> tuple[float | None, tuple[tuple[str, str], ...]]:
    """What the next Plane poll reads: items updated after a moment, and pairs by id.

    The moment is None for every item; the pairs are the (project, work item)
    replayed last time, read by id when the list leaves them out. `polled_upto` is
    the newest stamp the last poll saw (None: none since start), `pending` maps a
    replayed item to its project, `last_full` is when (on the actor's clock) the
    whole list was last read.
    """
    also = tuple((project, item) for item, project in sorted(pending.items()))
    if polled_upto is None or now - last_full >= FULL_POLL_S:
        return None, also
    return polled_upto - RECHECK_S, also


def polled_task_ids(items: Sequence[PolledItem], *, cfg: Config) -> list[str]:
    """The task ids polled work items name (those of configured projects)."""
    ids: list[str] = []
    for item in items:
        repo = cfg.repo_for_plane(item.project_id)
        task_id = task_id_for(repo.prefix, item.sequence_id) if repo is not None else ""
        if task_id:
            ids.append(task_id)
    return ids


def plane_replays(
    items: Sequence[PolledItem], rows: Mapping[str, TaskRow], *, cfg: Config
) -> list[tuple[str, WorkItemEvent]]:
    """Work item states a lost webhook kept from a task, as (message id, event) pairs.

    In Progress for an item with no task starts it; Approved, Rejected, Blocked and
    Needs Input are replayed when the task's remembered tracker state differs. The
    message id names the difference, so one difference is replayed once.
    """
    out: list[tuple[str, WorkItemEvent]] = []
    for item in items:
        repo = cfg.repo_for_plane(item.project_id)
        key = state_key(item.state_name, cfg.plane.states)
        if repo is None or key not in REPLAYED_STATES:
            continue
        task_id = task_id_for(repo.prefix, item.sequence_id)
        if not task_id:
            continue
        row = rows.get(task_id)
        if row is None:
            if key != STATE_IN_PROGRESS:
                continue
        elif row.stage in TERMINAL or row.tracker_state == key:
            continue
        seen = row.tracker_state if row is not None else "none"
        msg_id = f"plane-poll:{item.id}:{item.state_id}:{seen}"
        event = WorkItemEvent(
            delivery_id=msg_id,
            action="updated",
            project_id=item.project_id,
            work_item_id=item.id,
            sequence_id=item.sequence_id,
            title=item.name,
            description=item.description,
            state_id=item.state_id,
            state_name=item.state_name,
            field="state",
            source="poll",
        )
        out.append((msg_id, event))
    return out
