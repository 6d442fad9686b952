"""A backlog of queued jobs with every slot busy: a message's dispatch reads no queued job.

Thousands of queued jobs are written straight into the jobs bucket with running
jobs filling `queue.max_concurrency`; the QueueWorker starts on them. What a
dispatch reads is counted through the seams it calls (the index's `first_ready`,
the jobs `hold` is given), never timed. When a slot frees, the oldest job of the
least busy repository starts, as the full pass picked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from actors import queue_policy
from actors.job_ready import JobReady
from actors.queue_policy import Job
from bus import subjects
from bus.bridge import Bus
from bus.messages import JobFinished, JobRequested, LaunchOrder
from conveyor.clock import FakeClock
from tests.actors.conftest import Captured, StartActor
from tests.harness import wait_until
from tests.kv_raw import put_many

pytestmark = pytest.mark.timeout(120)

QUEUED = 3_000
# What a `JobRequested` carries of the job it asks for, besides its id.
REQUESTED = ("task_id", "repo", "stage", "role", "visit", "branch", "title")
REPOS = ("demo", "shop", "docs")
SLOTS = 4  # queue.max_concurrency's default


def backlog_job(n: int, status: str, at: float) -> Job:
    return Job(
        id=f"Q-{n}.development.1.work",
        task_id=f"Q-{n}",
        repo=REPOS[n % len(REPOS)],
        stage="development",
        role="developer",
        visit=1,
        branch=f"conveyor/Q-{n}",
        title=f"queued {n}",
        status=status,
        attempts=int(status == queue_policy.RUNNING),
        enqueued_at=at + n,
        available_at=at,
    )


class Reads:
    """What each dispatch read: jobs given to `hold`, and first jobs asked per repository."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.held: list[int] = []
        self.firsts: list[int] = []
        real_hold = queue_policy.hold
        real_first = JobReady.first_ready

        def hold(jobs: Iterable[Job], *args: Any, **kwargs: Any) -> Any:
            listed = list(jobs)
            self.held.append(len(listed))
            return real_hold(listed, *args, **kwargs)

        def first_ready(ready: JobReady, repo: str, count: int) -> list[Job]:
            self.firsts.append(count)
            return real_first(ready, repo, count)

        monkeypatch.setattr(queue_policy, "hold", hold)
        monkeypatch.setattr(JobReady, "first_ready", first_ready)

    def reset(self) -> None:
        self.held.clear()
        self.firsts.clear()


def test_a_worker_over_a_backlog_reads_no_queued_job_until_a_slot_frees(
    start_actor: StartActor, bus: Bus, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
):
    at = clock.now() - 10_000
    queued = [backlog_job(n, queue_policy.QUEUED, at) for n in range(QUEUED)]
    running = [backlog_job(QUEUED + n, queue_policy.RUNNING, at) for n in range(SLOTS)]
    put_many(bus, subjects.BUCKET_JOBS, {job.id: job for job in [*queued, *running]})
    orders = Captured(bus, subjects.LAUNCH_ORDERS)
    reads = Reads(monkeypatch)

    worker = start_actor("queue_worker")
    assert worker.status()["counts"] == {"queued": QUEUED, "running": SLOTS}
    reads.reset()

    for n in range(20):
        new = backlog_job(QUEUED + SLOTS + n, queue_policy.QUEUED, clock.now())
        req = JobRequested(job_id=new.id, **{f: getattr(new, f) for f in REQUESTED})
        bus.publish(subjects.JOBS_REQUESTED, req, msg_id=f"test:{new.id}")
    wait_until(lambda: worker.status()["counts"].get("queued") == QUEUED + 20)
    worker.tick(1.0)

    assert len(reads.held) >= 21
    assert max(reads.held) == 0
    assert reads.firsts == []
    assert orders.of(LaunchOrder) == []

    # A slot frees on "shop" (running: demo 2, shop 1, docs 1; one per repository):
    # only shop has room, and its oldest queued job goes.
    freed = running[1]
    assert freed.repo == "shop"
    done = JobFinished(job_id=freed.id, attempt=1, run_id="r", exit_code=0)
    bus.publish(subjects.JOBS_FINISHED, done, msg_id="test:done")
    (order,) = orders.wait_for(LaunchOrder, what="the oldest job of a least busy repository")
    assert order.job_id == queued[1].id
    # Only the repository with room was read, for its room: one job.
    assert reads.firsts == [1]
