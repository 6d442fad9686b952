"""Spending ceilings of running jobs: the heartbeat that crosses one kills the run, once."""

from __future__ import annotations

import msgspec
import pytest

from actors import ceiling_policy as cp
from actors import queue_policy as qp
from actors import stage_policy as sp
from actors import usage_policy as up
from bus.messages import Alert, JobFinished, JobOutcome, KillJob, RunHeartbeat
from conveyor import pipeline as pl
from conveyor.clock import FakeClock
from conveyor.config import QueueConfig, load
from tests.unit.test_stage_policy import task_on

DAY1 = 1_764_115_200.0  # 2025-11-26T00:00:00Z
JOB_ID = "DEMO-1.development.1.work"
TASK_USD = up.Ceilings(task_usd=0.10)


def _job(**changes: object) -> qp.Job:
    job = qp.Job(
        id=JOB_ID, task_id="DEMO-1", repo="demo", stage="development", role="developer",
        visit=1, branch="b", title="t", status=qp.RUNNING, attempts=2, enqueued_at=DAY1,
    )  # fmt: skip
    return msgspec.structs.replace(job, **changes)


def _beat(attempt: int = 2, **usage: object) -> RunHeartbeat:
    return RunHeartbeat(job_id=JOB_ID, attempt=attempt, launcher="l", at=0.0, usage=usage)


def _kills(d: qp.Decision) -> list[KillJob]:
    return [m for m in d.emit if isinstance(m, KillJob)]


def test_the_heartbeat_that_crosses_the_task_usd_ceiling_kills_the_job_once():
    clock = FakeClock(DAY1)
    # The task spent $0.05 before this job, its first attempt $0.01.
    job = _job(task_spent_usd=0.05, cost_usd=0.01)
    ledger = up.Ledger()

    under = cp.on_heartbeat(job, _beat(cost_usd=0.03), ledger, TASK_USD, now=clock.now())
    assert (under.jobs, under.emit) == ((), ())

    clock.advance(5)
    d = cp.on_heartbeat(job, _beat(cost_usd=0.04, input_tokens=900), ledger, TASK_USD, now=5)
    (killed,) = d.jobs
    (kill,) = _kills(d)
    assert kill.job_id == JOB_ID
    assert "pipeline.max_task_cost_usd $0.1" in kill.reason
    assert "$0.1000" in killed.ceiling
    assert killed.ceiling_usage == up.Usage(input_tokens=900, cost_usd=0.04)
    # once per job: a later heartbeat of the killed attempt orders nothing
    again = cp.on_heartbeat(killed, _beat(cost_usd=0.05), ledger, TASK_USD, now=clock.now())
    assert (again.jobs, again.emit) == ((), ())


def test_the_task_token_ceiling_counts_tokens_spent_before_the_job():
    ceilings = up.Ceilings(task_tokens=2000)
    job = _job(task_spent_tokens=1500, input_tokens=100)
    d = cp.on_heartbeat(
        job, _beat(input_tokens=300, output_tokens=99), up.Ledger(), ceilings, now=DAY1
    )
    assert d.jobs == ()
    d = cp.on_heartbeat(
        job, _beat(input_tokens=300, output_tokens=100), up.Ledger(), ceilings, now=DAY1
    )
    (kill,) = _kills(d)
    assert "the task used 2,000 tokens (pipeline.max_task_tokens 2,000)" in kill.reason


@pytest.mark.parametrize(
    ("ceilings", "usage", "named"),
    [
        (up.Ceilings(repo_usd_per_day=0.03), {"cost_usd": 0.011}, "queue.max_repo_usd_per_day"),
        (up.Ceilings(repo_tokens_per_day=1500), {"output_tokens": 300}, "max_repo_tokens_per_day"),
    ],
)
def test_the_repository_ceilings_count_what_it_spent_today(
    ceilings: up.Ceilings, usage: dict[str, object], named: str
):
    clock = FakeClock(DAY1 + 3600)
    spent = up.Usage(input_tokens=1200, cost_usd=0.02)
    ledger = up.record(up.Ledger(), "demo", "developer", spent, now=clock.now())

    d = cp.on_heartbeat(_job(), _beat(**usage), ledger, ceilings, now=clock.now())
    (kill,) = _kills(d)
    assert named in kill.reason
    assert "repository demo" in kill.reason
    # The next UTC day starts from nothing: the same running totals are within it.
    clock.advance(86400)
    d = cp.on_heartbeat(_job(), _beat(**usage), ledger, ceilings, now=clock.now())
    assert d.emit == ()


def test_stale_idle_or_unbounded_heartbeats_kill_nothing():
    big = {"cost_usd": 50.0, "input_tokens": 10**9}
    assert (
        cp.on_heartbeat(_job(), _beat(attempt=1, **big), up.Ledger(), TASK_USD, now=DAY1).emit == ()
    )
    queued = _job(status=qp.QUEUED)
    assert cp.on_heartbeat(queued, _beat(**big), up.Ledger(), TASK_USD, now=DAY1).emit == ()
    assert cp.on_heartbeat(_job(), _beat(), up.Ledger(), TASK_USD, now=DAY1).emit == ()
    assert cp.on_heartbeat(_job(), _beat(**big), up.Ledger(), up.Ceilings(), now=DAY1).emit == ()


def test_a_killed_jobs_finish_fails_for_good_as_over_budget_and_the_task_escalates():
    job = _job(
        attempts=1,
        task_spent_usd=0.08,
        ceiling="the task spent $0.1000 (pipeline.max_task_cost_usd $0.1)",
        ceiling_usage=up.Usage(input_tokens=900, cost_usd=0.02),
    )
    # The launcher reports the kill without the run's usage.
    finished = JobFinished(job_id=JOB_ID, attempt=1, run_id="r", exit_code=-9, error="killed")

    d = qp.on_finished(job, finished, now=DAY1, cfg=QueueConfig(max_attempts=2))

    (failed,) = d.jobs
    assert failed.status == qp.FAILED
    assert failed.outcome == pl.OUTCOME_OVER_BUDGET
    assert d.usage == up.Usage(input_tokens=900, cost_usd=0.02)
    (outcome,) = [m for m in d.emit if isinstance(m, JobOutcome)]
    assert outcome.cost_usd == pytest.approx(0.02)
    assert "pipeline.max_task_cost_usd" in outcome.reason
    (alert,) = [m for m in d.emit if isinstance(m, Alert)]
    assert alert.kind == "over_budget"
    assert "pipeline.max_task_cost_usd" in alert.text

    cfg = load(env={"CONVEYOR_PIPELINE__MAX_TASK_COST_USD": "0.1"})
    task = task_on("development", job_status="running", budget_used_usd=0.08)
    task = msgspec.structs.replace(task, job_id=JOB_ID)
    outcome = msgspec.structs.replace(outcome, task_id=task.id)
    escalated = sp.on_job_outcome(task, outcome, now=DAY1, cfg=cfg)
    assert escalated.task is not None
    assert escalated.task.escalated
    (why,) = [m for m in escalated.emit if isinstance(m, Alert)]
    assert "pipeline.max_task_cost_usd" in why.text


def test_a_job_request_carries_what_the_task_spent_so_far():
    req = sp.JobRequested(
        job_id=JOB_ID, task_id="DEMO-1", repo="demo", stage="development", role="developer",
        visit=1, branch="b", title="t", task_spent_usd=0.5, task_spent_tokens=70,
    )  # fmt: skip
    d = qp.on_request(None, req, now=DAY1, cfg=QueueConfig())
    (job,) = d.jobs
    assert (job.task_spent_usd, job.task_spent_tokens) == (0.5, 70)
