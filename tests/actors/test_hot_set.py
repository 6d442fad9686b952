"""Thousands of finished jobs and runs in KV: owners keep only open ones and stay flat.

The records are written straight into the buckets, as a long-running install leaves
them; the actor then starts on them. The work a message costs is counted through the
policy functions the QueueWorker calls (a seam), never timed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors import queue_policy
from actors.launcher_policy import FINISHED as RUN_FINISHED
from actors.launcher_policy import Run
from actors.queue_policy import Job
from actors.queue_worker import UsageQuery
from bus import subjects
from bus.bridge import Bus
from bus.messages import (
    JobFinished,
    JobOutcome,
    JobRequested,
    LaunchOrder,
    RunHeartbeat,
)
from conveyor.app import wiring
from conveyor.clock import FakeClock
from tests.actors.conftest import ASK_TIMEOUT_S, ActorUnderTest, Captured, StartActor
from tests.harness import make_config, wait_until
from tests.kv_raw import put_many

FINISHED_JOBS = 5_000
FINISHED_RUNS = 3_000
LAUNCHER = "hot-set-launcher"


def finished_job(n: int, at: float) -> Job:
    return Job(
        id=f"OLD-{n}.development.1.work",
        task_id=f"OLD-{n}",
        repo="demo" if n % 2 else "shop",
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/OLD-{n}",
        title=f"old {n}",
        status=queue_policy.DONE,
        attempts=1,
        enqueued_at=at,
        claimed_at=at,
        finished_at=at,
        cost_usd=0.01,
        input_tokens=10,
    )


def request(task_id: str) -> JobRequested:
    return JobRequested(
        job_id=f"{task_id}.development.1.work",
        task_id=task_id,
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/{task_id}",
        title=f"work on {task_id}",
    )


class Seen:
    """How many jobs each call of the wrapped policy functions was given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        for name in ("schedule", "hold", "held_repos"):
            monkeypatch.setattr(queue_policy, name, self._counting(getattr(queue_policy, name)))

    def _counting(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(jobs: Iterable[Job], *args: Any, **kwargs: Any) -> Any:
            listed = list(jobs.values() if isinstance(jobs, Mapping) else jobs)
            self.sizes.append(len(listed))
            given = {j.id: j for j in listed} if isinstance(jobs, Mapping) else listed
            return real(given, *args, **kwargs)

        return counted


@pytest.fixture
def old_jobs(bus: Bus, clock: FakeClock) -> list[Job]:
    jobs = [finished_job(n, clock.now()) for n in range(FINISHED_JOBS)]
    put_many(bus, subjects.BUCKET_JOBS, {job.id: job for job in jobs})
    return jobs


def test_a_worker_over_thousands_of_finished_jobs_dispatches_heals_and_counts_them(
    start_actor: StartActor, bus: Bus, clock: FakeClock, old_jobs: list[Job], monkeypatch
):
    unsent = JobOutcome(
        job_id="LOST-1.development.1.work",
        task_id="LOST-1",
        stage="development",
        visit=1,
        role="developer",
        status=queue_policy.DONE,
        attempts=1,
    )
    lost = msgspec.structs.replace(
        finished_job(0, clock.now()),
        id=unsent.job_id,
        task_id="LOST-1",
        outbox=[unsent],
        cost_usd=0.0,
        input_tokens=0,
    )
    queued = Job(
        id="NEW-1.development.1.work",
        task_id="NEW-1",
        repo="demo",
        stage="development",
        role="developer",
        visit=1,
        branch="conveyor/NEW-1",
        title="new",
        enqueued_at=clock.now(),
    )
    put_many(bus, subjects.BUCKET_JOBS, {lost.id: lost, queued.id: queued})
    orders = Captured(bus, subjects.LAUNCH_ORDERS)
    outcomes = Captured(bus, subjects.JOBS_OUTCOME)
    seen = Seen(monkeypatch)

    worker = start_actor("queue_worker")

    (order,) = orders.wait_for(LaunchOrder, what="the stored queued job's launch order")
    assert order.job_id == queued.id
    assert [o.job_id for o in outcomes.wait_for(JobOutcome)] == [lost.id]
    status = worker.status()
    assert status["counts"] == {"done": FINISHED_JOBS + 1, "running": 1}
    assert status["hot"] == 1
    assert [r["id"] for r in status["running"]] == [queued.id]
    assert len(status["recent"]) == 10
    usage = worker.ref.ask(UsageQuery(), timeout=ASK_TIMEOUT_S)
    assert usage["by_repo"]["demo"]["cost_usd"] == pytest.approx(0.01 * FINISHED_JOBS / 2)
    assert usage["by_repo"]["shop"]["input_tokens"] == 10 * FINISHED_JOBS // 2

    # A replayed request of a finished job is read from KV: known, never queued again.
    replay = request("OLD-7")
    bus.publish(subjects.JOBS_REQUESTED, replay, msg_id="test:replay:OLD-7")
    fresh = request("NEW-2")
    bus.publish(subjects.JOBS_REQUESTED, fresh, msg_id="test:NEW-2")
    done = JobFinished(job_id=queued.id, attempt=1, run_id="r1", exit_code=0)
    bus.publish(subjects.JOBS_FINISHED, done, msg_id="test:done:NEW-1")
    orders.wait_for(LaunchOrder, 2, what="NEW-2 launched once NEW-1 freed its repository")
    wait_until(lambda: worker.status()["counts"].get("done") == FINISHED_JOBS + 2)
    worker.tick(1.0)

    assert [o.job_id for o in orders.of(LaunchOrder)] == [queued.id, fresh.job_id]
    status = worker.status()
    assert status["counts"] == {"done": FINISHED_JOBS + 2, "running": 1}
    assert status["hot"] == 1
    # No message made the worker look at more than the open jobs.
    assert seen.sizes
    assert max(seen.sizes) <= 2


def test_a_launcher_over_thousands_of_finished_runs_reports_the_unreported_and_keeps_none(
    bus: Bus, clock: FakeClock, tmp_path: Path, nats_url: str
):
    def run(n: int, *, reported: bool) -> Run:
        return Run(
            id=f"OLD-{n}.development.1.work.1",
            job_id=f"OLD-{n}.development.1.work",
            attempt=1,
            task_id=f"OLD-{n}",
            repo="demo",
            role="developer",
            stage="development",
            visit=1,
            branch=f"conveyor/OLD-{n}",
            host="elsewhere",
            launcher=LAUNCHER,
            status=RUN_FINISHED,
            exit_code=0,
            finished_at=clock.now(),
            reported=reported,
        )

    runs = {r.id: r for r in (run(n, reported=True) for n in range(FINISHED_RUNS))}
    unreported = run(FINISHED_RUNS, reported=False)
    put_many(bus, subjects.BUCKET_RUNS, {**runs, unreported.id: unreported})
    finishes = Captured(bus, subjects.JOBS_FINISHED)
    beats = Captured(bus, subjects.HEARTBEATS)
    config = make_config(tmp_path / "data", nats_url, launcher={"name": LAUNCHER})

    # No run here reaches the forge: a placeholder stands in for it.
    ctx = wiring.Context(config, bus, clock, forge=object())  # type: ignore[arg-type]
    launcher = ActorUnderTest(wiring.SPECS["launcher"], ctx, clock)
    try:
        launcher_reports_once(launcher, unreported, finishes, beats)
    finally:
        launcher.ref.stop(block=True, timeout=10)


def launcher_reports_once(
    launcher: ActorUnderTest, unreported: Run, finishes: Captured, beats: Captured
) -> None:
    (finish,) = finishes.wait_for(JobFinished, what="the unreported run's result")
    assert finish.job_id == unreported.job_id
    for _ in range(3):
        status = launcher.tick(1.0)
    assert status["tracked"] == 0
    assert status["running"] == []
    stored = launcher.store().get(unreported.id)
    assert stored is not None
    assert stored.value.reported
    # Heartbeats name no run: none is active, however many are stored.
    assert beats.of(RunHeartbeat) == []
    assert len(finishes.of(JobFinished)) == 1
