"""QueueWorker alone on a real nats-server: job requests in, launch orders and outcomes out."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import subjects
from bus.messages import JobFinished, JobOutcome, JobRequested, LaunchOrder
from conveyor.config import Config
from tests.actors.conftest import ActorUnderTest, Captured, StartActor
from tests.harness import make_config, wait_until

BACKOFF_S = 30.0


@pytest.fixture
def slow_backoff(tmp_path: Path, nats_url: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        queue={"backoff_base_s": BACKOFF_S, "backoff_max_s": 4 * BACKOFF_S, "max_attempts": 3},
    )


def request(task_id: str, *, repo: str = "demo", stage: str = "development") -> JobRequested:
    return JobRequested(
        job_id=f"{task_id}.{stage}.1.work",
        task_id=task_id,
        repo=repo,
        stage=stage,
        role="developer",
        visit=1,
        branch=f"conveyor/{task_id}",
        title=f"work on {task_id}",
    )


def publish(worker: ActorUnderTest, subject: str, msg: JobRequested | JobFinished) -> None:
    worker.bus.publish(subject, msg, msg_id=f"test:{type(msg).__name__}:{msg.job_id}")


def finished(req: JobRequested, attempt: int, exit_code: int) -> JobFinished:
    return JobFinished(
        job_id=req.job_id, attempt=attempt, run_id=f"run-{attempt}", exit_code=exit_code
    )


def job_status(worker: ActorUnderTest, job_id: str) -> str:
    entry = worker.store().get(job_id)
    return entry.value.status if entry is not None else ""


def test_a_requested_job_is_claimed_and_ordered_to_launch(start_actor: StartActor):
    worker = start_actor("queue_worker")
    orders = Captured(worker.bus, subjects.LAUNCH_ORDERS)
    req = request("DEMO-1")

    publish(worker, subjects.JOBS_REQUESTED, req)

    (order,) = orders.wait_for(LaunchOrder, what="the launch order of DEMO-1")
    assert (order.job_id, order.attempt, order.repo, order.role) == (
        req.job_id,
        1,
        "demo",
        "developer",
    )
    stored = worker.store().get(req.job_id)
    assert stored is not None
    assert (stored.value.status, stored.value.attempts) == ("running", 1)
    assert stored.value.outbox == []
    assert worker.status()["counts"] == {"running": 1}


def test_a_failed_attempt_is_requeued_and_launched_again_only_after_its_backoff(
    start_actor: StartActor, slow_backoff: Config
):
    worker = start_actor("queue_worker", config=slow_backoff)
    orders = Captured(worker.bus, subjects.LAUNCH_ORDERS)
    req = request("DEMO-2")
    publish(worker, subjects.JOBS_REQUESTED, req)
    orders.wait_for(LaunchOrder, what="the first launch order")

    # When the first attempt fails
    publish(worker, subjects.JOBS_FINISHED, finished(req, attempt=1, exit_code=1))
    wait_until(lambda: job_status(worker, req.job_id) == "queued", what="the job requeued")

    # Then no tick launches it again before the back-off has passed
    worker.tick(0.0)
    worker.tick(BACKOFF_S - 1.0)
    assert job_status(worker, req.job_id) == "queued"
    assert [o.attempt for o in orders.of(LaunchOrder)] == [1]

    # And the first tick after it does
    worker.tick(1.0)
    launched = orders.wait_for(LaunchOrder, 2, what="the second launch order")
    assert [o.attempt for o in launched] == [1, 2]
    assert job_status(worker, req.job_id) == "running"


def test_one_job_per_repository_runs_at_a_time_and_the_next_starts_when_it_is_done(
    start_actor: StartActor,
):
    worker = start_actor("queue_worker")
    orders = Captured(worker.bus, subjects.LAUNCH_ORDERS)
    outcomes = Captured(worker.bus, subjects.JOBS_OUTCOME)
    first, second = request("DEMO-3"), request("DEMO-4")
    other_repo = request("OPS-1", repo="ops")

    publish(worker, subjects.JOBS_REQUESTED, first)
    orders.wait_for(LaunchOrder, what="the first job's launch order")
    publish(worker, subjects.JOBS_REQUESTED, second)
    publish(worker, subjects.JOBS_REQUESTED, other_repo)
    wait_until(lambda: job_status(worker, second.job_id) == "queued", what="the second job stored")
    orders.wait_for(LaunchOrder, 2, what="the other repository's launch order")

    # The second job of `demo` waits while the first runs, ticks or not
    worker.tick(60.0)
    assert job_status(worker, second.job_id) == "queued"
    assert {o.job_id for o in orders.of(LaunchOrder)} == {first.job_id, other_repo.job_id}

    publish(worker, subjects.JOBS_FINISHED, finished(first, attempt=1, exit_code=0))

    (outcome,) = outcomes.wait_for(JobOutcome, what="the first job's outcome")
    assert (outcome.job_id, outcome.status, outcome.attempts) == (first.job_id, "done", 1)
    launched = orders.wait_for(LaunchOrder, 3, what="the second job's launch order")
    assert launched[-1].job_id == second.job_id
    assert job_status(worker, first.job_id) == "done"
