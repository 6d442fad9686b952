"""Pure: what a task's change says to people, so trouble is never silent.

The StageEngine passes every decision through `with_notices`: a failed gate that
retries a stage or sends the task back (what failed, attempt n of m) and the start
of a production deploy become alerts in the decision's outbox. The outbox gives
each a message id stable per task revision, so a replay after a crash is stored
once, and TrackerSync turns each into exactly one tracker comment.
"""

from __future__ import annotations

import msgspec

from actors.task_policy import Decision, Task, alert
from bus.messages import Alert
from conveyor.config import Config
from conveyor.pipeline import GATE_DEPLOY, STEP_WORK

KIND_GATE_FAILED = "gate_failed"
KIND_DEPLOY_STARTED = "deploy_started"


def with_notices(before: Task | None, decision: Decision, cfg: Config, *, now: float) -> Decision:
    """`decision` with the alerts its change of `before` calls for added to its emits."""
    if before is None or decision.task is None:
        return decision
    found = notices(before, decision.task, cfg, now=now)
    if not found:
        return decision
    return msgspec.structs.replace(decision, emit=(*decision.emit, *found))


def notices(before: Task, after: Task, cfg: Config, *, now: float) -> tuple[Alert, ...]:
    """The alerts the change from `before` to `after` calls for (none for most changes)."""
    out: list[Alert] = []
    failed = _gate_failed(before, after, cfg)
    if failed:
        out.append(alert(after, failed, now, level="warning", kind=KIND_GATE_FAILED))
    if _deploy_started(before, after, cfg):
        text = f"{after.id}: production deploy of {after.repo} started (job {after.job_id})"
        out.append(alert(after, text, now, level="info", kind=KIND_DEPLOY_STARTED))
    return tuple(out)


def _gate_failed(before: Task, after: Task, cfg: Config) -> str:
    """The text of a retry or a rework that a failed gate caused, or ""."""
    if after.escalated or after.terminal:
        return ""  # an escalation says so itself
    pipeline = cfg.pipeline
    if after.developer_retries > before.developer_retries:
        attempt, budget = after.developer_retries, pipeline.max_developer_retries
    elif after.stage_retries > before.stage_retries:
        attempt, budget = after.stage_retries, pipeline.max_stage_retries
    else:
        return ""
    what = f"{after.id} {before.stage} failed: {after.last_reason or 'gate failed'}"
    if after.stage != before.stage:
        return f"{what}; back to {after.stage}, attempt {attempt} of {budget}"
    return f"{what}; retrying {after.stage}, attempt {attempt} of {budget}"


def _deploy_started(before: Task, after: Task, cfg: Config) -> bool:
    """Whether `after` requested a new production deploy job."""
    stage = cfg.stage(after.stage)
    return (
        stage is not None
        and stage.gate == GATE_DEPLOY
        and after.step == STEP_WORK
        and bool(after.job_id)
        and after.job_id != before.job_id
    )
