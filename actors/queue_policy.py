"""Pure decisions of the QueueWorker: job lifecycle, back-off, holds; scheduling is re-exported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from actors import brief_policy, usage_policy
from actors.schedule_policy import held_of as held_of
from actors.schedule_policy import held_repos as held_repos
from actors.schedule_policy import next_wakeup as next_wakeup
from actors.schedule_policy import pick as pick
from actors.schedule_policy import repo_pauses as repo_pauses
from actors.schedule_policy import schedule as schedule
from actors.usage_policy import ZERO, Ledger, Usage
from bus.messages import (
    Alert,
    BusMessage,
    DeployCommits,
    JobFinished,
    JobOutcome,
    JobReaped,
    JobRequested,
    JobStarted,
    KillJob,
    LaunchOrder,
    Message,
    ReapJob,
)
from conveyor import retry
from conveyor.config import QueueConfig
from conveyor.pipeline import OUTCOME_AUTH_REFUSED, OUTCOME_OVER_BUDGET, WAIT_OUTCOMES

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})


class RunningSnapshot(msgspec.Struct, frozen=True):
    """Reaper -> QueueWorker (ask): the jobs currently running."""


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """One unit of work for the Launcher; owned by the QueueWorker alone."""

    id: str
    task_id: str
    repo: str
    stage: str
    role: str
    visit: int
    branch: str
    title: str
    description: str = ""
    status: str = QUEUED
    attempts: int = 0
    max_attempts: int = 2
    available_at: float = 0.0
    enqueued_at: float = 0.0
    claimed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    run_id: str = ""
    host: str = ""
    pid: int | None = None
    create_time: float | None = None
    log_path: str = ""
    exit_code: int | None = None
    head_sha: str = ""
    error: str = ""
    cost_usd: float = 0.0
    brief: str = ""
    """The rework brief of the request; every attempt's launch order carries it."""
    deploy: DeployCommits = msgspec.field(default_factory=DeployCommits)
    outcome: str = ""
    """How the last attempt's agent run ended (`conveyor.pipeline.AgentOutcome`)."""
    reason: str = ""
    """The last attempt's outcome for people ("rate limited (429)", "stalled", …)."""
    repo_paused_until: float = 0.0
    """The model API turned this job away (rate limited, overloaded): its repository's
    other queued jobs wait until then too."""
    model_waits: int = 0
    """How often the model API turned this job away; past `queue.max_model_waits` such a
    finish spends an attempt."""
    input_tokens: int = 0
    """Tokens the agent reported over every attempt (with `cost_usd`, the job's usage)."""
    output_tokens: int = 0
    cached_tokens: int = 0
    held: str = ""
    """Why the queued job may not start now (its repository's daily ceiling); empty if it may."""
    held_day: str = ""
    """The UTC day `held` was set on (its repository is alerted once per day)."""
    retry_brief: str = ""
    """Why Conveyor killed the last attempt (stalled, over budget): the next one is told."""
    task_spent_usd: float = 0.0
    """What the task spent before this job (`JobRequested`); the task ceilings count it."""
    task_spent_tokens: int = 0
    ceiling: str = ""
    """The spending ceiling the running attempt crossed (it was killed for it), or ""."""
    ceiling_usage: Usage = ZERO
    """The attempt's running totals when it was killed (its finish may report none)."""
    outbox: list[BusMessage] = msgspec.field(default_factory=list)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs to store (by id) and messages to emit, with the reason."""

    jobs: tuple[Job, ...] = ()
    emit: tuple[Message, ...] = ()
    reason: str
    usage: Usage = ZERO
    """What the finished run reported spending (the cost ledger adds it)."""


def job_usage(job: Job) -> Usage:
    """What the job's attempts reported spending, all together."""
    return Usage(
        input_tokens=job.input_tokens,
        output_tokens=job.output_tokens,
        cached_tokens=job.cached_tokens,
        cost_usd=job.cost_usd,
    )


def backoff_s(attempt: int, cfg: QueueConfig) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, never jittered."""
    return retry.backoff_s(cfg.backoff_base_s, cfg.backoff_max_s, attempt - 1)


def on_request(
    existing: Job | None, req: JobRequested, *, now: float, cfg: QueueConfig
) -> Decision:
    """Store a requested job once; a replayed request changes nothing."""
    if existing is not None:
        return Decision(reason="job already known")
    job = Job(
        id=req.job_id,
        task_id=req.task_id,
        repo=req.repo,
        stage=req.stage,
        role=req.role,
        visit=req.visit,
        branch=req.branch,
        title=req.title,
        description=req.description,
        brief=req.brief,
        deploy=req.deploy,
        task_spent_usd=req.task_spent_usd,
        task_spent_tokens=req.task_spent_tokens,
        max_attempts=cfg.max_attempts,
        available_at=now,
        enqueued_at=now,
    )
    return Decision(jobs=(job,), reason="job queued")


def _outcome(job: Job) -> JobOutcome:
    return JobOutcome(
        job_id=job.id,
        task_id=job.task_id,
        stage=job.stage,
        visit=job.visit,
        role=job.role,
        status=job.status,
        attempts=job.attempts,
        exit_code=job.exit_code,
        error=job.error,
        head_sha=job.head_sha,
        cost_usd=job.cost_usd,
        outcome=job.outcome,
        reason=job.reason,
        input_tokens=job.input_tokens,
        output_tokens=job.output_tokens,
        cached_tokens=job.cached_tokens,
    )


def on_started(job: Job, started: JobStarted) -> Decision:
    """Record the process of the current attempt; reports of older attempts are stale."""
    if job.status != RUNNING or started.attempt != job.attempts:
        return Decision(reason="start of a stale attempt; ignored")
    if job.run_id == started.run_id and job.pid == started.pid:
        return Decision(reason="start already recorded")
    updated = msgspec.structs.replace(
        job,
        run_id=started.run_id,
        host=started.host,
        pid=started.pid,
        create_time=started.create_time,
        log_path=started.log_path,
        started_at=started.started_at,
    )
    return Decision(jobs=(updated,), reason="job started")


def reported_cost(usage: dict[str, object]) -> float:
    """The cost an agent reported for one run; anything but a sane number counts as 0."""
    cost = usage.get("cost_usd")
    if isinstance(cost, bool) or not isinstance(cost, int | float):
        return 0.0
    return float(cost) if 0 <= cost < 1e6 else 0.0


def on_finished(job: Job, finished: JobFinished, *, now: float, cfg: QueueConfig) -> Decision:
    """Finish the current attempt: done, requeue with back-off, or fail for good."""
    if job.status != RUNNING or finished.attempt != job.attempts:
        return Decision(reason="finish of a stale attempt; ignored")
    if job.ceiling:
        finished = _over_ceiling(job, finished)
    decision = _finish(job, finished, now=now, cfg=cfg)
    return msgspec.structs.replace(decision, usage=usage_policy.reported(finished.usage))


def _over_ceiling(job: Job, finished: JobFinished) -> JobFinished:
    """The finish of an attempt killed for a ceiling: an over-budget run, with what it spent."""
    run = usage_policy.reported(finished.usage)
    if run.tokens < job.ceiling_usage.tokens or run.cost_usd < job.ceiling_usage.cost_usd:
        run = job.ceiling_usage
    return msgspec.structs.replace(
        finished,
        exit_code=None,
        error=f"killed: {job.ceiling}",
        outcome=OUTCOME_OVER_BUDGET,
        reason=f"killed on crossing a spending ceiling: {job.ceiling}",
        usage=usage_policy.as_usage_dict(run),
        defer_s=0.0,
    )


def _finish(job: Job, finished: JobFinished, *, now: float, cfg: QueueConfig) -> Decision:
    run = usage_policy.reported(finished.usage)
    base = msgspec.structs.replace(
        job,
        exit_code=finished.exit_code,
        head_sha=finished.head_sha,
        error=finished.error,
        outcome=finished.outcome,
        reason=finished.reason,
        finished_at=now,
        run_id=finished.run_id or job.run_id,
        cost_usd=job.cost_usd + reported_cost(finished.usage),
        input_tokens=job.input_tokens + run.input_tokens,
        output_tokens=job.output_tokens + run.output_tokens,
        cached_tokens=job.cached_tokens + run.cached_tokens,
    )
    waiting = finished.outcome in WAIT_OUTCOMES
    if finished.defer_s > 0 and not (waiting and job.model_waits >= cfg.max_model_waits):
        # The attempt number is spent (its run record fences it), the budget is not.
        deferred = msgspec.structs.replace(
            base,
            status=QUEUED,
            max_attempts=job.max_attempts + 1,
            available_at=now + finished.defer_s,
            claimed_at=None,
            started_at=None,
            pid=None,
            create_time=None,
            repo_paused_until=now + finished.defer_s if waiting else job.repo_paused_until,
            model_waits=job.model_waits + 1 if waiting else job.model_waits,
        )
        return Decision(
            jobs=(deferred,), reason=f"deferred {finished.defer_s:g}s: {finished.error}"
        )
    if finished.exit_code == 0 and not finished.error:
        done = msgspec.structs.replace(base, status=DONE)
        return Decision(jobs=(done,), emit=(_outcome(done),), reason="job done")
    # The agent's own outcome says more to an operator than the exit code it caused.
    why = finished.reason or finished.error or f"exit code {finished.exit_code}"
    # Refused credentials are refused again on every attempt: fail now, a person must act.
    # Another attempt past a spending ceiling would only be killed again.
    final = finished.outcome == OUTCOME_AUTH_REFUSED or bool(job.ceiling)
    if job.attempts < job.max_attempts and not final:
        requeued = msgspec.structs.replace(
            base,
            retry_brief=brief_policy.retry_brief(
                finished.outcome, finished.reason, finished.attempt
            ),
            status=QUEUED,
            available_at=now + backoff_s(job.attempts, cfg),
            claimed_at=None,
            started_at=None,
            pid=None,
            create_time=None,
        )
        return Decision(jobs=(requeued,), reason=f"attempt {job.attempts} failed ({why}); requeued")
    failed = msgspec.structs.replace(base, status=FAILED)
    alert = Alert(
        level="error",
        source="queue_worker",
        task_id=job.task_id,
        at=now,
        kind="over_budget" if job.ceiling else "",
        text=f"job {job.id} ({job.role}, repo {job.repo}) failed after "
        f"{job.attempts} attempts: {why}",
    )
    return Decision(
        jobs=(failed,), emit=(_outcome(failed), alert), reason=f"attempts exhausted ({why})"
    )


def on_reaped(job: Job, reap: ReapJob, *, now: float, cfg: QueueConfig) -> Decision:
    """The Reaper found this attempt's executor dead: finish it like a run that ended.

    Guarded like every flip: only a job still running this very attempt changes,
    so a reap that lost the race to a late report or a requeue does nothing.
    """
    if job.status != RUNNING or reap.attempt != job.attempts:
        return Decision(reason="reap of a job no longer running that attempt; ignored")
    finished = JobFinished(
        job_id=job.id,
        attempt=reap.attempt,
        run_id=job.run_id,
        exit_code=reap.exit_code,
        head_sha=job.head_sha,
        error="" if reap.exit_code == 0 else f"reaped (tier {reap.tier}): {reap.reason}",
        finished_at=now,
    )
    decision = on_finished(job, finished, now=now, cfg=cfg)
    emits = (*decision.emit, JobReaped(**msgspec.structs.asdict(reap)))
    if reap.tier == 3:
        # The backstop reaps whatever state the executor is in: make sure it stops, so
        # the next attempt never shares the worktree with it.
        emits = (KillJob(job_id=job.id, reason=f"reaped: {reap.reason}"), *emits)
    return msgspec.structs.replace(
        decision, emit=emits, reason=f"reaped tier {reap.tier}: {decision.reason}"
    )


def running_jobs(jobs: Iterable[Job]) -> list[Job]:
    """The jobs the Reaper watches."""
    return [job for job in jobs if job.status == RUNNING]


def on_cancel(jobs: Iterable[Job], *, now: float, reason: str) -> Decision:
    """Cancel a task's unfinished jobs; running ones get a kill order."""
    changed: list[Job] = []
    emits: list[Message] = []
    for job in jobs:
        if job.status in FINISHED:
            continue
        cancelled = msgspec.structs.replace(job, status=CANCELLED, finished_at=now, error=reason)
        changed.append(cancelled)
        if job.status == RUNNING:
            emits.append(KillJob(job_id=job.id, reason=reason))
        emits.append(_outcome(cancelled))
    return Decision(jobs=tuple(changed), emit=tuple(emits), reason=f"{len(changed)} cancelled")


def claim(job: Job, *, now: float) -> Decision:
    """Flip a queued job to running for its next attempt and order the launch."""
    if job.status != QUEUED:
        return Decision(reason=f"job is {job.status}; not claimed")
    attempt = job.attempts + 1
    claimed = msgspec.structs.replace(
        job,
        status=RUNNING,
        attempts=attempt,
        claimed_at=now,
        exit_code=None,
        error="",
        outcome="",
        reason="",
        run_id="",
        held="",
        held_day="",
    )
    order = LaunchOrder(
        job_id=job.id,
        attempt=attempt,
        task_id=job.task_id,
        repo=job.repo,
        stage=job.stage,
        role=job.role,
        visit=job.visit,
        branch=job.branch,
        title=job.title,
        description=job.description,
        brief="\n\n".join(part for part in (job.retry_brief, job.brief) if part),
        deploy=job.deploy,
    )
    return Decision(jobs=(claimed,), emit=(order,), reason=f"claimed attempt {attempt}")


def hold(jobs: Iterable[Job], held: Mapping[str, str], ledger: Ledger, *, now: float) -> Decision:
    """Mark queued jobs held (or no longer held) with the reason; alert once per repo and day.

    The alerted repositories are the jobs' `held_day`: the caller adds them to the ledger.
    """
    changed: list[Job] = []
    alerts: list[Message] = []
    alerted = set(ledger.alerted)
    for job in jobs:
        why = held.get(job.repo, "") if job.status == QUEUED else job.held
        if job.held == why:
            continue
        changed.append(msgspec.structs.replace(job, held=why, held_day=ledger.day if why else ""))
        if why and job.repo not in alerted:
            alerted.add(job.repo)
            alerts.append(
                Alert(
                    level="error",
                    source="queue_worker",
                    task_id=job.task_id,
                    at=now,
                    kind="over_budget",
                    text=f"{why}: job {job.id} and the repository's other jobs wait",
                )
            )
    return Decision(jobs=tuple(changed), emit=tuple(alerts), reason=f"{len(changed)} held")


def rebuilt_ledger(jobs: Iterable[Job], *, now: float, base: Ledger | None = None) -> Ledger:
    """The ledger from stored jobs after a restart (each job counted on its last finish's day)."""
    ledger = usage_policy.rolled(base or Ledger(), now)
    alerted: set[str] = set()
    for job in jobs:
        day = usage_policy.day_of(job.finished_at or job.enqueued_at)
        ledger = usage_policy.record(ledger, job.repo, job.role, job_usage(job), now=now, day=day)
        if job.held and job.held_day == ledger.day:
            alerted.add(job.repo)
    return msgspec.structs.replace(ledger, alerted=frozenset(alerted))
