"""QueueWorker alone: a heartbeat whose running totals cross a ceiling kills the run."""

from __future__ import annotations

from pathlib import Path

from bus import subjects
from bus.messages import (
    Alert,
    JobFinished,
    JobOutcome,
    JobRequested,
    KillJob,
    LaunchOrder,
    RunHeartbeat,
)
from conveyor import pipeline as pl
from tests.actors.conftest import Captured, StartActor
from tests.harness import make_config


def test_a_heartbeat_over_the_task_ceiling_kills_the_job_and_its_finish_fails_it(
    start_actor: StartActor, tmp_path: Path, nats_url: str
):
    # Given a task ceiling of $0.10 and a task that spent $0.05 before this job
    cfg = make_config(tmp_path / "data", nats_url, pipeline={"max_task_cost_usd": 0.10})
    worker = start_actor("queue_worker", config=cfg)
    orders = Captured(worker.bus, subjects.LAUNCH_ORDERS)
    kills = Captured(worker.bus, subjects.LAUNCH_KILL)
    outcomes = Captured(worker.bus, subjects.JOBS_OUTCOME)
    alerts = Captured(worker.bus, subjects.ALERTS)
    req = JobRequested(
        job_id="DEMO-1.development.1.work", task_id="DEMO-1", repo="demo",
        stage="development", role="developer", visit=1, branch="conveyor/DEMO-1",
        title="work", task_spent_usd=0.05,
    )  # fmt: skip
    worker.bus.publish(subjects.JOBS_REQUESTED, req, msg_id="test:request")
    orders.wait_for(LaunchOrder, what="the launch order")

    # When the launcher's heartbeats report the run's running totals
    def beat(cost: float) -> None:
        usage = {"input_tokens": 4000, "output_tokens": 100, "cost_usd": cost}
        heartbeat = RunHeartbeat(job_id=req.job_id, attempt=1, launcher="l1", at=0.0, usage=usage)
        worker.bus.publish_core(subjects.HEARTBEATS, heartbeat)

    beat(0.02)
    beat(0.06)

    # Then the job is killed, the reason naming the ceiling, and stays running until it ends
    (kill,) = kills.wait_for(KillJob, what="the kill order")
    assert kill.job_id == req.job_id
    assert "pipeline.max_task_cost_usd" in kill.reason
    stored = worker.store().get(req.job_id)
    assert stored is not None
    assert stored.value.status == "running"
    assert "pipeline.max_task_cost_usd" in stored.value.ceiling

    # When the killed run ends (the launcher reports no usage for a killed run)
    finish = JobFinished(job_id=req.job_id, attempt=1, run_id="r1", exit_code=-9, error="killed")
    worker.bus.publish(subjects.JOBS_FINISHED, finish, msg_id="test:finished")

    # Then it fails for good as an over-budget run that spent what its heartbeat said
    (outcome,) = outcomes.wait_for(JobOutcome, what="the job outcome")
    assert (outcome.status, outcome.outcome) == ("failed", pl.OUTCOME_OVER_BUDGET)
    assert "pipeline.max_task_cost_usd" in outcome.reason
    assert outcome.cost_usd == 0.06
    assert worker.status()["counts"] == {"failed": 1}
    assert [o.attempt for o in orders.of(LaunchOrder)] == [1]
    (alert,) = alerts.wait_for(Alert, what="the alert")
    assert alert.kind == "over_budget"
    assert "pipeline.max_task_cost_usd" in alert.text
