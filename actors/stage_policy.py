"""Pure decisions of the StageEngine: gates, transitions, retries, commands.

Nothing here does I/O, reads a clock or logs. The actor gathers gate inputs
(artifacts from the forge, CI status), calls these functions with `now`, then
persists the returned task with a compare-and-swap and publishes the emits.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

from bus.messages import (
    Alert,
    Annotate,
    Approve,
    BusMessage,
    Cancel,
    ConfirmDeploy,
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
    ADR_DIR,
    ANALYSIS_DOCS,
    CANCELLED,
    CREATED,
    DEPLOY_LOG,
    DONE,
    GATE_BRANCH_EXISTS,
    GATE_PR_MERGED,
    REVIEW,
    ROLE_INTAKE,
    ROLE_MERGE,
    STAGING_LOG,
    STEP_CONFIRM,
    STEP_INTAKE,
    STEP_MERGE,
    STEP_WORK,
    TERMINAL,
    TEST_PLAN,
    TEST_REPORT,
    artifact_path,
)


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stage change of a task and why it happened."""

    at: float
    old: str
    new: str
    cause: str


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
    jobs_requested: int = 0
    """Jobs requested since the task was created or retried by an operator (circuit breaker)."""
    cost_usd: float = 0.0
    """Agent cost reported over the task's whole life."""
    budget_used_usd: float = 0.0
    """Agent cost since creation or the last operator retry (circuit breaker)."""
    created_at: float = 0.0
    updated_at: float = 0.0
    history: list[HistoryEntry] = msgspec.field(default_factory=list)
    outbox: list[BusMessage] = msgspec.field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """True once the task is done or cancelled."""
        return self.stage in TERMINAL

    def visit(self, stage: str) -> int:
        """How many times work for `stage` has been requested."""
        return self.visits.get(stage, 0)


# --- gates ---------------------------------------------------------------------------------

Verdict = Literal["pass", "wait", "retry", "rework"]


class GateResult(msgspec.Struct, frozen=True, kw_only=True):
    """A gate's answer: pass, wait (for a human or CI), retry the stage, or rework."""

    verdict: Verdict
    reason: str


class GateInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What the gate may look at, read from the forge at the branch head."""

    files: dict[str, str | None] = msgspec.field(default_factory=dict)
    adr_files: dict[str, str] = msgspec.field(default_factory=dict)
    branch_head: str | None = None
    ci_state: str | None = None
    pr_merged: bool | None = None
    error: str = ""


class _FrontMatter(msgspec.Struct, kw_only=True):
    work_item_id: str | None = None
    work_item: str | None = None


class DocFM(_FrontMatter, kw_only=True):
    """Front matter of an analysis or architecture document."""

    type: str


class TestPlan(msgspec.Struct, kw_only=True):
    """`04-test-plan.yaml`."""

    work_item: str
    tests: list[dict[str, object]]


class ReviewFM(_FrontMatter, kw_only=True):
    """Front matter of `12-review.md`."""

    verdict: Literal["APPROVED", "REQUEST_CHANGES"]
    version: int = 1


class TestReportFM(_FrontMatter, kw_only=True):
    """Front matter of `13-test-report.md`."""

    result: Literal["PASS", "FAIL"]


class _VerdictFM(_FrontMatter, kw_only=True):
    job_id: str | None = None
    decided_by: str | None = None


class StagingFM(_VerdictFM, kw_only=True):
    """Front matter of `15-staging-log.md`."""

    staging_status: Literal["SUCCESS", "FAILED"]


class DeployFM(_VerdictFM, kw_only=True):
    """Front matter of `14-deploy-log.md`."""

    deploy_status: Literal["SUCCESS", "FAILED"]


def _current_verdict(fm: _VerdictFM, task: Task, name: str) -> None:
    """Refuse a verdict Conveyor wrote for another job than the task's current one.

    An adopted run of a superseded visit can finish late and write its verdict; it
    must not decide the visit that replaced it.
    """
    if fm.decided_by == "conveyor" and fm.job_id and fm.job_id != task.job_id:
        raise FrontMatterError(f"{name}: verdict of job {fm.job_id}, not of {task.job_id}")


class FrontMatterError(ValueError):
    """An artifact has no front matter or it does not decode into its schema."""


def split_front_matter(text: str) -> str:
    """Return the YAML between the leading `---` fences of a markdown artifact."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise FrontMatterError("no front matter (the file must start with ---)")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() in ("---", "..."):
            return "\n".join(lines[1:i])
    raise FrontMatterError("front matter is not closed with ---")


T = TypeVar("T")
FM = TypeVar("FM", bound="_FrontMatter")


def parse_front_matter(text: str, schema: type[T]) -> T:
    """Decode an artifact's front matter into `schema`; raise FrontMatterError with the path."""
    yaml_text = split_front_matter(text)
    try:
        return msgspec.yaml.decode(yaml_text.encode(), type=schema)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise FrontMatterError(f"front matter invalid: {err}") from err


GATE_FILES: dict[str, tuple[str, ...]] = {
    "analysis_complete": (*ANALYSIS_DOCS, TEST_PLAN),
    "review_approved": (REVIEW,),
    "tests_passed": (TEST_REPORT,),
    "staging_status": (STAGING_LOG,),
    "deploy_status": (DEPLOY_LOG,),
}
"""Artifacts each gate reads (file names under the work item's directory)."""


def _read(inputs: GateInputs, task_id: str, name: str) -> str:
    text = inputs.files.get(artifact_path(task_id, name))
    if text is None:
        raise FrontMatterError("missing")
    return text


def _check_id(fm: _FrontMatter, task_id: str) -> None:
    found = fm.work_item_id or fm.work_item
    if found is not None and found != task_id:
        raise FrontMatterError(f"belongs to {found!r}, not {task_id!r}")


def _doc(inputs: GateInputs, task_id: str, name: str, schema: type[FM]) -> FM:
    try:
        fm = parse_front_matter(_read(inputs, task_id, name), schema)
        _check_id(fm, task_id)
    except FrontMatterError as err:
        raise FrontMatterError(f"{name}: {err}") from err
    return fm


def evaluate_gate(gate: str, task: Task, inputs: GateInputs) -> GateResult:
    """Decide a gate from its inputs alone; malformed input is a verdict, never an exception."""
    if inputs.error:
        return GateResult(verdict="wait", reason=f"gate inputs unavailable: {inputs.error}")
    try:
        return _evaluate(gate, task, inputs)
    except FrontMatterError as err:
        return GateResult(verdict="retry", reason=str(err))


def _evaluate(gate: str, task: Task, inputs: GateInputs) -> GateResult:
    tid = task.id
    match gate:
        case "":
            return GateResult(verdict="pass", reason="stage has no gate")
        case "branch_exists":
            if inputs.branch_head:
                return GateResult(verdict="pass", reason=f"branch {task.branch} exists")
            return GateResult(verdict="retry", reason=f"branch {task.branch} missing on forge")
        case "pr_merged":
            if inputs.pr_merged:
                return GateResult(verdict="pass", reason="pull request merged")
            return GateResult(verdict="retry", reason="pull request not merged")
        case "analysis_complete":
            for name in ANALYSIS_DOCS:
                _doc(inputs, tid, name, DocFM)
            try:
                plan = msgspec.yaml.decode(_read(inputs, tid, TEST_PLAN).encode(), type=TestPlan)
            except (msgspec.ValidationError, msgspec.DecodeError) as err:
                raise FrontMatterError(f"{TEST_PLAN}: invalid: {err}") from err
            except FrontMatterError as err:
                raise FrontMatterError(f"{TEST_PLAN}: {err}") from err
            if plan.work_item != tid:
                raise FrontMatterError(f"{TEST_PLAN}: belongs to {plan.work_item!r}")
            if not plan.tests:
                raise FrontMatterError(f"{TEST_PLAN}: lists no tests")
            return GateResult(verdict="pass", reason="analysis complete")
        case "architecture_done":
            problems = []
            for name, text in sorted(inputs.adr_files.items()):
                try:
                    fm = parse_front_matter(text, DocFM)
                    _check_id(fm, tid)
                except FrontMatterError as err:
                    problems.append(f"{ADR_DIR}/{name}: {err}")
                    continue
                return GateResult(verdict="pass", reason=f"ADR {name} present")
            detail = "; ".join(problems) if problems else "no ADR"
            return GateResult(verdict="retry", reason=f"{ADR_DIR}: {detail}")
        case "ci_green":
            state = inputs.ci_state
            if state == "success":
                return GateResult(verdict="pass", reason="CI green for branch head")
            if state in ("failure", "error"):
                return GateResult(verdict="retry", reason=f"CI {state} for branch head")
            return GateResult(verdict="wait", reason=f"CI {state or 'not reported'} for head")
        case "review_approved":
            review = _doc(inputs, tid, REVIEW, ReviewFM)
            if review.verdict == "APPROVED":
                return GateResult(verdict="pass", reason=f"review v{review.version} approved")
            return GateResult(verdict="rework", reason=f"review v{review.version} requests changes")
        case "tests_passed":
            report = _doc(inputs, tid, TEST_REPORT, TestReportFM)
            if report.result == "PASS":
                return GateResult(verdict="pass", reason="test report PASS")
            return GateResult(verdict="rework", reason="test report FAIL")
        case "staging_status":
            staging = _doc(inputs, tid, STAGING_LOG, StagingFM)
            _current_verdict(staging, task, STAGING_LOG)
            if staging.staging_status == "SUCCESS":
                return GateResult(verdict="pass", reason="staging SUCCESS")
            return GateResult(verdict="rework", reason="staging FAILED")
        case "deploy_status":
            deploy = _doc(inputs, tid, DEPLOY_LOG, DeployFM)
            _current_verdict(deploy, task, DEPLOY_LOG)
            if deploy.deploy_status == "SUCCESS":
                return GateResult(verdict="pass", reason="deploy SUCCESS")
            return GateResult(verdict="rework", reason="deploy FAILED")
    return GateResult(verdict="retry", reason=f"unknown gate {gate!r}")


def gate_for(task: Task, cfg: Config) -> str:
    """The gate that decides the task's current step."""
    if task.step == STEP_INTAKE:
        return GATE_BRANCH_EXISTS
    if task.step == STEP_MERGE:
        return GATE_PR_MERGED
    stage = cfg.stage(task.stage)
    return stage.gate if stage else ""


# --- decisions -----------------------------------------------------------------------------


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What to do with one input: the new task (or None), what to emit, and why."""

    task: Task | None = None
    emit: tuple[Message, ...] = ()
    reason: str
    ok: bool = True
    error: str = ""
    field: str = ""
    evaluate: bool = False


def _refuse(reason: str, field: str = "id") -> Decision:
    return Decision(reason=reason, ok=False, error=reason, field=field)


def job_id_for(task_id: str, stage: str, visit: int, step: str) -> str:
    """Deterministic job id: a replayed request names the same job."""
    return f"{task_id}.{stage}.{visit}.{step}"


def _role_for(task: Task, cfg: Config) -> str:
    if task.step == STEP_INTAKE:
        return ROLE_INTAKE
    if task.step == STEP_MERGE:
        return ROLE_MERGE
    stage = cfg.stage(task.stage)
    return stage.role if stage else ""


def _request(task: Task, cfg: Config, now: float, *, new_visit: bool) -> tuple[Task, JobRequested]:
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
        job_status="queued",
        updated_at=now,
        jobs_requested=task.jobs_requested + 1,
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
    )
    return updated, request


def _move(
    task: Task, new_stage: str, cause: str, now: float, *, revision: int
) -> tuple[Task, StageChanged]:
    entry = HistoryEntry(at=now, old=task.stage, new=new_stage, cause=cause)
    step = STEP_WORK if new_stage not in TERMINAL else ""
    moved = msgspec.structs.replace(
        task,
        stage=new_stage,
        step=step,
        history=[*task.history, entry],
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
        evaluate = outcome.status != "cancelled" and not task.escalated
        return Decision(reason="outcome already recorded", evaluate=evaluate)
    updated = msgspec.structs.replace(
        task,
        job_status=outcome.status,
        head_sha=outcome.head_sha or task.head_sha,
        cost_usd=task.cost_usd + outcome.cost_usd,
        budget_used_usd=task.budget_used_usd + outcome.cost_usd,
    )
    if outcome.status == "cancelled":
        return Decision(task=updated, reason="job cancelled")
    budget = cfg.pipeline.max_task_cost_usd
    if budget > 0 and updated.budget_used_usd >= budget:
        spent = f"${updated.budget_used_usd:.2f} of ${budget:.2f}"
        return _escalate(updated, f"circuit breaker: agent budget spent ({spent})", now)
    return Decision(task=updated, reason=f"job {outcome.status}; evaluating gate", evaluate=True)


def breaker_open(task: Task, cfg: Config) -> str:
    """Why the task must not get another job (its circuit breaker), or ""."""
    limit = cfg.pipeline.max_task_jobs
    if limit > 0 and task.jobs_requested >= limit:
        return f"circuit breaker: {task.jobs_requested} jobs requested (limit {limit})"
    return ""


def _next_stage(stage: str, cfg: Config) -> str:
    if stage == CREATED:
        return cfg.pipeline.stages[0].name
    names = [s.name for s in cfg.pipeline.stages]
    index = names.index(stage)
    return names[index + 1] if index + 1 < len(names) else DONE


def _alert(task: Task, text: str, now: float, level: str = "warning", kind: str = "") -> Alert:
    return Alert(level=level, text=text, task_id=task.id, source="stage_engine", at=now, kind=kind)


def on_gate(
    task: Task, job_id: str, result: GateResult, *, now: float, revision: int, cfg: Config
) -> Decision:
    """Act on a gate verdict for the step whose job is `job_id`."""
    if task.terminal or task.escalated:
        return Decision(reason=f"task {task.stage}{' escalated' if task.escalated else ''}")
    if job_id != task.job_id:
        return Decision(reason="gate of a superseded job; ignored")
    if task.job_status not in ("done", "failed"):
        return Decision(reason="job still running; gate not decided")
    stage_cfg = cfg.stage(task.stage)
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
        case "rework" if stage_cfg and stage_cfg.on_fail != "retry" and task.step == STEP_WORK:
            return _rework(task, stage_cfg.on_fail, result, now=now, revision=revision, cfg=cfg)
        case _:
            return _retry(task, result, now=now, cfg=cfg)


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


def guarded(task: Task, cfg: Config) -> bool:
    """Whether the task's stage is the production deploy of a protected repository."""
    stage_cfg = cfg.stage(task.stage)
    repo = next((r for r in cfg.repos if r.name == task.repo), None)
    return (
        stage_cfg is not None
        and stage_cfg.gate == "deploy_status"
        and repo is not None
        and repo.protected
    )


def _await_confirm(task: Task, now: float) -> tuple[Task, Alert]:
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
    return waiting, _alert(waiting, text, now, level="warning")


def _escalate(task: Task, reason: str, now: float) -> Decision:
    escalated = msgspec.structs.replace(task, escalated=True, last_reason=reason, updated_at=now)
    text = f"{task.id} escalated on {task.stage}: {reason}; fix it, then `conveyor retry {task.id}`"
    return Decision(
        task=escalated,
        emit=(_alert(task, text, now, level="error", kind="escalated"),),
        reason=f"escalated: {reason}",
    )


def _counts_as_developer(task: Task, cfg: Config) -> bool:
    stage = cfg.stage(task.stage)
    return stage is not None and stage.role == "developer"


def _retry(task: Task, result: GateResult, *, now: float, cfg: Config) -> Decision:
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
    updated, request = _request(updated, cfg, now, new_visit=True)
    return Decision(task=updated, emit=(request,), reason=f"retrying {task.stage}: {result.reason}")


def _rework(
    task: Task, target: str, result: GateResult, *, now: float, revision: int, cfg: Config
) -> Decision:
    retries = task.developer_retries + 1
    if retries > cfg.pipeline.max_developer_retries:
        return _escalate(task, f"developer retries exhausted ({result.reason})", now)
    tripped = breaker_open(task, cfg)
    if tripped:
        return _escalate(task, f"{tripped}; last: {result.reason}", now)
    moved, event = _move(task, target, result.reason, now, revision=revision)
    moved = msgspec.structs.replace(moved, developer_retries=retries)
    moved, request = _request(moved, cfg, now, new_visit=True)
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
            ready = task.job_status in ("done", "failed")
            return Decision(task=approved, reason="approved", evaluate=ready)
        case Reject():
            if not _approvable(task, cfg):
                return _refuse(f"task is on {task.stage}, which has no human approval gate")
            if task.job_status not in ("done", "failed"):
                return _refuse(f"the {task.stage} job is still running; reject it when it ends")
            reason = f"{task.stage} rejected{': ' + cmd.reason if cmd.reason else ''}"
            return _retry(
                msgspec.structs.replace(task, approved=False),
                GateResult(verdict="retry", reason=reason),
                now=now,
                cfg=cfg,
            )
        case Retry():
            if not task.escalated and task.job_status not in ("failed", "done"):
                return _refuse("task is not escalated or stuck; nothing to retry")
            reset = msgspec.structs.replace(
                task,
                escalated=False,
                developer_retries=0,
                stage_retries=0,
                jobs_requested=0,
                budget_used_usd=0.0,
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

HOLDS = frozenset({"blocked", "needs_input"})
MAX_APPLIED = 50
"""How many applied tracker event keys a task remembers (older ones are long out of replay)."""


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
    hold = update.state if update.state in HOLDS else ""
    base = msgspec.structs.replace(task, hold=hold, tracker_state=update.state)
    command: Approve | Reject | ConfirmDeploy | None = None
    match update.state:
        case "approved" if _approvable(base, cfg):
            command = Approve(id=task.id)
        case "rejected" if _approvable(base, cfg) and base.job_status in ("done", "failed"):
            command = Reject(id=task.id, reason=update.reason or "rejected in the tracker")
        case "confirm_deploy":
            command = ConfirmDeploy(id=task.id)
    decision = (
        on_command(base, command, now=now, revision=revision, cfg=cfg)
        if command is not None
        else None
    )
    if decision is not None and decision.ok and decision.task is not None:
        remembered = _remember(decision.task, update, decision.reason)
        return msgspec.structs.replace(remembered, emit=decision.emit, evaluate=decision.evaluate)
    why = (decision.error or decision.reason) if decision else f"nothing to do on {task.stage}"
    evaluate = bool(decision and decision.evaluate)
    if (base.hold, base.tracker_state) == (task.hold, task.tracker_state):
        return Decision(reason=f"tracker {update.state}: {why}", evaluate=evaluate)
    noted = _remember(base, update, f"tracker {update.state}: {why}")
    return msgspec.structs.replace(noted, evaluate=evaluate)


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


def _remember(task: Task, update: TrackerUpdate, reason: str) -> Decision:
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
    if task.job_status not in ("done", "failed"):
        return f"its job is {task.job_status or 'not requested'}"
    return ""
