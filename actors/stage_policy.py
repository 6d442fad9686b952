"""Pure decisions of the StageEngine: transitions, retries, commands.

Nothing here does I/O, reads a clock or logs. The actor gathers gate inputs (artifacts from
the forge, CI status), has `gate_policy` evaluate them, calls these functions with the verdict
and `now`, then persists the returned task with a compare-and-swap and publishes the emits.
"""

from __future__ import annotations

import msgspec

from actors import brief_policy, deploy_policy, merge_policy
from actors.gate_policy import GateInputs, GateResult, gate_for
from actors.task_policy import (
    JOB_ENDED,
    HistoryEntry,
    breaker_open,
    charged,
    history_entry,
    job_failure,
    job_id_for,
    outcome_usage,
    over_ceiling,
    remember,
    with_job_failure,
)
from actors.task_policy import Decision as Decision
from actors.task_policy import Task as Task
from actors.task_policy import alert as _alert
from actors.task_policy import await_confirm as _await_confirm
from actors.task_policy import escalate as _escalate
from actors.task_policy import guarded as guarded
from actors.task_policy import on_annotate as on_annotate
from actors.task_policy import reevaluable as reevaluable
from actors.task_policy import refuse as _refuse
from actors.usage_policy import Usage
from bus.messages import (
    Approve,
    Cancel,
    ConfirmDeploy,
    DeployCommits,
    JobOutcome,
    JobRequested,
    JobsCancelled,
    Message,
    Reject,
    Retry,
    StageChanged,
    TrackerUpdate,
)
from conveyor.config import Config, StageConfig
from conveyor.pipeline import (
    CANCELLED,
    CREATED,
    DONE,
    HOLD_STATES,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    ON_FAIL_RETRY,
    OUTCOME_AUTH_REFUSED,
    ROLE_DEVELOPER,
    ROLE_INTAKE,
    ROLE_MERGE,
    STATE_APPROVED,
    STATE_CONFIRM_DEPLOY,
    STATE_REJECTED,
    STEP_CONFIRM,
    STEP_INTAKE,
    STEP_MERGE,
    STEP_WORK,
    TERMINAL,
)

# --- decisions -----------------------------------------------------------------------------


def _role_for(task: Task, cfg: Config) -> str:
    if task.step == STEP_INTAKE:
        return ROLE_INTAKE
    if task.step == STEP_MERGE:
        return ROLE_MERGE
    stage = cfg.stage(task.stage)
    return stage.role if stage else ""


def _request(
    task: Task, cfg: Config, now: float, *, new_visit: bool, brief: str = ""
) -> tuple[Task, JobRequested]:
    """Return the task waiting on a fresh job for its current step, and the request."""
    visits = dict(task.visits)
    if new_visit or visits.get(task.stage, 0) == 0:
        visits[task.stage] = visits.get(task.stage, 0) + 1
    visit = visits[task.stage]
    job_id = job_id_for(task.id, task.stage, visit, task.step)
    updated = msgspec.structs.replace(
        task,
        visits=visits,
        job_id=job_id,
        job_status=JOB_QUEUED,
        job_reason="",
        updated_at=now,
        jobs_requested=task.jobs_requested + 1,
        # The work must move the head past where it stood when the work was asked for.
        visit_base_sha=task.head_sha if task.step == STEP_WORK else task.visit_base_sha,
    )
    request = JobRequested(
        job_id=job_id,
        task_id=task.id,
        repo=task.repo,
        stage=task.stage,
        role=_role_for(updated, cfg),
        visit=visit,
        branch=task.branch,
        title=task.title,
        description=task.description,
        requested_at=now,
        brief=brief,
        task_spent_usd=task.budget_used_usd,
        task_spent_tokens=task.budget_used_tokens,
        deploy=DeployCommits(sha=task.merge_sha, staged_sha=task.staged_sha),
    )
    return updated, request


def _move(
    task: Task, new_stage: str, cause: str, now: float, *, revision: int
) -> tuple[Task, StageChanged]:
    entry = history_entry(task, new_stage, cause, now)
    step = STEP_WORK if new_stage not in TERMINAL else ""
    moved = msgspec.structs.replace(
        task,
        stage=new_stage,
        step=step,
        history=[*task.history, entry],
        stage_usage=Usage(),
        stage_retries=0,
        job_id="",
        job_status="",
        last_reason=cause,
        updated_at=now,
        approved=False if new_stage != task.stage else task.approved,
    )
    event = StageChanged(
        task_id=task.id,
        repo=task.repo,
        old=task.stage,
        new=new_stage,
        cause=cause,
        revision=revision + 1,
        at=now,
        cost_usd=entry.cost_usd,
        tokens=entry.input_tokens + entry.output_tokens,
    )
    return moved, event


def new_task(
    *,
    task_id: str,
    repo: str,
    title: str,
    description: str,
    branch: str,
    now: float,
    cfg: Config,
    external_id: str = "",
) -> Decision:
    """A submitted work item becomes a task on `created` with its intake job requested."""
    task = Task(
        id=task_id,
        repo=repo,
        title=title,
        description=description,
        branch=branch,
        external_id=external_id,
        created_at=now,
        updated_at=now,
        history=[HistoryEntry(at=now, old="", new=CREATED, cause="submitted")],
    )
    task, request = _request(task, cfg, now, new_visit=True)
    event = StageChanged(
        task_id=task_id, repo=repo, old="", new=CREATED, cause="submitted", revision=1, at=now
    )
    return Decision(task=task, emit=(request, event), reason="task created")


def on_job_outcome(task: Task, outcome: JobOutcome, *, now: float, cfg: Config) -> Decision:
    """A job ended: evaluate the gate if it is the job the task waits for."""
    if task.terminal:
        return Decision(reason=f"task {task.stage}; outcome ignored")
    if outcome.job_id != task.job_id:
        return Decision(reason="outcome of a superseded job; ignored")
    if task.job_status == outcome.status:
        evaluate = outcome.status != JOB_CANCELLED and not task.escalated
        return Decision(reason="outcome already recorded", evaluate=evaluate)
    failed = outcome.status == JOB_FAILED
    noted = failed or merge_policy.sends_back(outcome)
    updated = msgspec.structs.replace(
        charged(task, outcome_usage(outcome)),
        job_status=outcome.status,
        updated_at=now,
        head_sha=outcome.head_sha or task.head_sha,
        job_reason=job_failure(outcome) if noted else "",
        job_outcome=outcome.outcome if noted else "",
        **deploy_policy.commits_of(outcome, cfg),
    )
    if outcome.status == JOB_CANCELLED:
        return Decision(task=updated, reason="job cancelled")
    if failed and outcome.outcome == OUTCOME_AUTH_REFUSED:
        # Another run would be refused the same way: only a person can fix credentials.
        return _escalate(updated, f"the {outcome.role} job failed: {updated.job_reason}", now)
    ceiling = over_ceiling(updated, cfg)
    if ceiling:
        return _escalate(updated, ceiling, now)
    return Decision(task=updated, reason=f"job {outcome.status}; evaluating gate", evaluate=True)


def _next_stage(stage: str, cfg: Config) -> str:
    if stage == CREATED:
        return cfg.pipeline.stages[0].name
    names = [s.name for s in cfg.pipeline.stages]
    index = names.index(stage)
    return names[index + 1] if index + 1 < len(names) else DONE


def on_gate(
    task: Task,
    job_id: str,
    result: GateResult,
    *,
    now: float,
    revision: int,
    cfg: Config,
    inputs: GateInputs | None = None,
) -> Decision:
    """Act on a gate verdict for the step whose job is `job_id` (read from `inputs`)."""
    if task.terminal or task.escalated:
        return Decision(reason=f"task {task.stage}{' escalated' if task.escalated else ''}")
    if job_id != task.job_id:
        return Decision(reason="gate of a superseded job; ignored")
    if task.job_status not in JOB_ENDED:
        return Decision(reason="job still running; gate not decided")
    stage_cfg = cfg.stage(task.stage)
    result = with_job_failure(task, result)
    task, brief = brief_policy.noted(task, gate_for(task, cfg), inputs, result, now=now)
    sent = merge_policy.sent_back(task, result, cfg)
    if sent is not None:
        return _rework(task, sent[0], sent[1], now=now, revision=revision, cfg=cfg, brief=brief)
    match result.verdict:
        case "wait":
            if task.last_reason == result.reason:
                return Decision(reason=f"still waiting: {result.reason}")
            waiting = msgspec.structs.replace(task, last_reason=result.reason, updated_at=now)
            return Decision(task=waiting, reason=f"waiting: {result.reason}")
        case "pass" if _needs_approval(task, stage_cfg):
            reason = f"{result.reason}, awaiting approval"
            if task.last_reason == reason:
                return Decision(reason=f"still waiting: {reason}")
            waiting = msgspec.structs.replace(task, last_reason=reason, updated_at=now)
            text = f"{task.id} {task.stage} is ready: approve or reject it"
            return Decision(
                task=waiting,
                emit=(_alert(task, text, now, level="info", kind="awaiting_approval"),),
                reason=f"waiting: {reason}",
            )
        case "pass":
            return _pass(task, stage_cfg, result, now=now, revision=revision, cfg=cfg)
        case "rework" if task.step == STEP_WORK and (
            back := deploy_policy.back_to_stage(cfg, task.stage, result.back_to)
        ):
            return _rework(task, back, result, now=now, revision=revision, cfg=cfg, brief=brief)
        case "rework" if (
            stage_cfg and stage_cfg.on_fail != ON_FAIL_RETRY and task.step == STEP_WORK
        ):
            target = stage_cfg.on_fail
            return _rework(task, target, result, now=now, revision=revision, cfg=cfg, brief=brief)
        case _:
            return _retry(task, result, now=now, cfg=cfg, brief=brief)


def _needs_approval(task: Task, stage_cfg: StageConfig | None) -> bool:
    """A human gate: the stage's work is fine but a person has not approved it yet."""
    return (
        stage_cfg is not None
        and stage_cfg.human_approval
        and task.step == STEP_WORK
        and not task.approved
    )


def _approvable(task: Task, cfg: Config) -> bool:
    stage_cfg = cfg.stage(task.stage)
    return stage_cfg is not None and stage_cfg.human_approval and task.step == STEP_WORK


def _pass(
    task: Task,
    stage_cfg: StageConfig | None,
    result: GateResult,
    *,
    now: float,
    revision: int,
    cfg: Config,
) -> Decision:
    if task.step == STEP_WORK and stage_cfg is not None and stage_cfg.merge:
        merging = msgspec.structs.replace(task, step=STEP_MERGE, last_reason=result.reason)
        merging, request = _request(merging, cfg, now, new_visit=False)
        return Decision(task=merging, emit=(request,), reason=f"{result.reason}; merging")
    new_stage = _next_stage(task.stage, cfg)
    moved, event = _move(task, new_stage, result.reason, now, revision=revision)
    emits: list[Message] = [event]
    if new_stage == DONE:
        emits.append(_alert(moved, f"{task.id} is done", now, level="info"))
    elif guarded(moved, cfg):
        moved, alert = _await_confirm(moved, now)
        emits.append(alert)
    else:
        moved, request = _request(moved, cfg, now, new_visit=True)
        emits.insert(0, request)
    return Decision(task=moved, emit=tuple(emits), reason=f"advanced to {new_stage}")


def _counts_as_developer(task: Task, cfg: Config) -> bool:
    stage = cfg.stage(task.stage)
    return stage is not None and stage.role == ROLE_DEVELOPER


def _retry(task: Task, result: GateResult, *, now: float, cfg: Config, brief: str = "") -> Decision:
    tripped = breaker_open(task, cfg)
    if tripped:
        return _escalate(task, f"{tripped}; last: {result.reason}", now)
    if _counts_as_developer(task, cfg) and task.step == STEP_WORK:
        retries = task.developer_retries + 1
        if retries > cfg.pipeline.max_developer_retries:
            return _escalate(task, f"developer retries exhausted ({result.reason})", now)
        updated = msgspec.structs.replace(
            task, developer_retries=retries, last_reason=result.reason
        )
    else:
        retries = task.stage_retries + 1
        if retries > cfg.pipeline.max_stage_retries:
            return _escalate(task, f"stage retries exhausted ({result.reason})", now)
        updated = msgspec.structs.replace(task, stage_retries=retries, last_reason=result.reason)
    # A new visit produces new work: an approval given to the old one does not carry over.
    updated = msgspec.structs.replace(updated, approved=False)
    updated, request = _request(updated, cfg, now, new_visit=True, brief=brief)
    return Decision(task=updated, emit=(request,), reason=f"retrying {task.stage}: {result.reason}")


def _rework(
    task: Task,
    target: str,
    result: GateResult,
    *,
    now: float,
    revision: int,
    cfg: Config,
    brief: str = "",
) -> Decision:
    retries = task.developer_retries + 1
    if retries > cfg.pipeline.max_developer_retries:
        return _escalate(task, f"developer retries exhausted ({result.reason})", now)
    tripped = breaker_open(task, cfg)
    if tripped:
        return _escalate(task, f"{tripped}; last: {result.reason}", now)
    moved, event = _move(task, target, result.reason, now, revision=revision)
    moved = msgspec.structs.replace(moved, developer_retries=retries)
    moved, request = _request(moved, cfg, now, new_visit=True, brief=brief)
    return Decision(task=moved, emit=(request, event), reason=f"back to {target}: {result.reason}")


# --- commands ------------------------------------------------------------------------------


def on_command(
    task: Task,
    cmd: Approve | Reject | Cancel | Retry | ConfirmDeploy,
    *,
    now: float,
    revision: int,
    cfg: Config,
) -> Decision:
    """Apply an operator command; a command that does not apply is refused with a reason."""
    match cmd:
        case Cancel():
            if task.terminal:
                return _refuse(f"task is already {task.stage}", "id")
            cause = f"cancelled{': ' + cmd.reason if cmd.reason else ''}"
            moved, event = _move(task, CANCELLED, cause, now, revision=revision)
            return Decision(
                task=moved,
                reason="cancelled",
                emit=(JobsCancelled(task_id=task.id, reason=cause), event),
            )
        case _ if task.terminal:
            return _refuse(f"task is {task.stage}", "id")
        case Approve():
            if not _approvable(task, cfg):
                return _refuse(f"task is on {task.stage}, which has no human approval gate")
            if task.approved:
                return Decision(reason="already approved", evaluate=False)
            approved = msgspec.structs.replace(task, approved=True, updated_at=now)
            ready = task.job_status in JOB_ENDED
            return Decision(task=approved, reason="approved", evaluate=ready)
        case Reject():
            if not _approvable(task, cfg):
                return _refuse(f"task is on {task.stage}, which has no human approval gate")
            if task.job_status not in JOB_ENDED:
                return _refuse(f"the {task.stage} job is still running; reject it when it ends")
            reason = f"{task.stage} rejected{': ' + cmd.reason if cmd.reason else ''}"
            return _retry(
                msgspec.structs.replace(task, approved=False),
                GateResult(verdict="retry", reason=reason),
                now=now,
                cfg=cfg,
            )
        case Retry():
            if not task.escalated and task.job_status not in JOB_ENDED:
                return _refuse("task is not escalated or stuck; nothing to retry")
            reset = msgspec.structs.replace(
                task,
                escalated=False,
                developer_retries=0,
                stage_retries=0,
                jobs_requested=0,
                budget_used_usd=0.0,
                budget_used_tokens=0,
                last_reason="retried by operator",
                step=STEP_WORK if task.stage != CREATED else STEP_INTAKE,
            )
            if guarded(reset, cfg):
                # A retry is not a confirmation: the deploy still waits for one.
                parked, alert = _await_confirm(reset, now)
                return Decision(task=parked, emit=(alert,), reason="retried; awaiting confirm")
            reset, request = _request(reset, cfg, now, new_visit=True)
            return Decision(task=reset, emit=(request,), reason="retried by operator")
        case ConfirmDeploy():
            return _confirm(task, now=now, cfg=cfg)
    return _refuse("unknown command", "type")


def _confirm(task: Task, *, now: float, cfg: Config) -> Decision:
    """Start a protected production deploy, once: a repeated confirmation changes nothing."""
    repo = next((r for r in cfg.repos if r.name == task.repo), None)
    if repo is None or not repo.protected:
        return _refuse(f"repository {task.repo} is not protected; its deploys need no confirmation")
    if not guarded(task, cfg):
        return _refuse(f"task is on {task.stage}; confirm-deploy applies on its production deploy")
    if task.step != STEP_CONFIRM:
        return Decision(reason=f"deploy already confirmed (job {task.job_id or 'pending'})")
    if task.escalated:
        return _refuse("task is escalated; `conveyor retry` it first")
    confirmed = msgspec.structs.replace(
        task, step=STEP_WORK, last_reason="deploy confirmed", updated_at=now
    )
    confirmed, request = _request(confirmed, cfg, now, new_visit=False)
    return Decision(task=confirmed, emit=(request,), reason="deploy confirmed")


# --- tracker (status-only) -----------------------------------------------------------------


def on_tracker(
    task: Task, update: TrackerUpdate, *, now: float, revision: int, cfg: Config
) -> Decision:
    """Apply a tracker state change; status only, and each event at most once.

    A state that does not apply here (Approved on a stage without human approval,
    Rejected while the job runs) changes nothing but the hold and the remembered
    tracker state: it is the tracker's word, not a command an operator typed, so it
    is logged, never refused back. Any state but Blocked and Needs Input releases a hold.
    """
    if update.key in task.applied:
        return Decision(reason=f"tracker event {update.key} already applied")
    if task.terminal:
        return Decision(reason=f"task is {task.stage}; tracker {update.state} ignored")
    hold = update.state if update.state in HOLD_STATES else ""
    base = msgspec.structs.replace(task, hold=hold, tracker_state=update.state)
    command: Approve | Reject | ConfirmDeploy | None = None
    if update.state == STATE_APPROVED and _approvable(base, cfg):
        command = Approve(id=task.id)
    elif update.state == STATE_REJECTED and _approvable(base, cfg) and base.job_status in JOB_ENDED:
        command = Reject(id=task.id, reason=update.reason or "rejected in the tracker")
    elif update.state == STATE_CONFIRM_DEPLOY:
        command = ConfirmDeploy(id=task.id)
    decision = (
        on_command(base, command, now=now, revision=revision, cfg=cfg)
        if command is not None
        else None
    )
    if decision is not None and decision.ok and decision.task is not None:
        remembered = remember(decision.task, update, decision.reason)
        return msgspec.structs.replace(remembered, emit=decision.emit, evaluate=decision.evaluate)
    why = (decision.error or decision.reason) if decision else f"nothing to do on {task.stage}"
    evaluate = bool(decision and decision.evaluate)
    if (base.hold, base.tracker_state) == (task.hold, task.tracker_state):
        return Decision(reason=f"tracker {update.state}: {why}", evaluate=evaluate)
    noted = remember(base, update, f"tracker {update.state}: {why}")
    return msgspec.structs.replace(noted, evaluate=evaluate)
