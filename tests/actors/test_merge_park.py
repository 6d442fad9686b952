"""QueueWorker on a real nats-server: merge jobs park while their merge lease is kept.

A protected repository's task keeps its merge lease past its merge run, until its
production deploy ends. Merge jobs of other tasks of that repository are not
launched meanwhile (no attempt spent, no slot held): they park, and each release
(`LeaseFreed` from the LeaseKeeper) wakes one of them; `leases.busy_retry_s` is
only the fallback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.lease_policy import Lease
from bus import subjects
from bus.bridge import Store
from bus.messages import JobFinished, JobRequested, LaunchOrder, LeaseFreed, LeaseHolder
from conveyor.config import Config
from tests.actors.conftest import ActorUnderTest, Captured, StartActor
from tests.harness import make_config, wait_until

pytestmark = pytest.mark.timeout(60)

RETRY_S = 30.0


@pytest.fixture
def config(tmp_path: Path, nats_url: str) -> Config:
    return make_config(
        tmp_path / "data",
        nats_url,
        queue={"per_repo_concurrency": 4},
        leases={"busy_retry_s": RETRY_S},
    )


def merge_request(task_id: str) -> JobRequested:
    return JobRequested(
        job_id=f"{task_id}.merge.1.merge",
        task_id=task_id,
        repo="demo",
        stage="merge",
        role="merge",
        visit=1,
        branch=f"conveyor/{task_id}",
        title=f"merge {task_id}",
    )


def keep_lease(leases: Store[Lease], task_id: str) -> int:
    holder = LeaseHolder(
        task_id=task_id,
        job_id=f"{task_id}.merge.1.merge",
        launcher="l1",
        host="h",
        pid=1,
        create_time=0.0,
        boot_id="b",
        attempt=1,
    )
    lease = Lease(name="merge.demo", holder=holder, acquired_at=0.0, renewed_at=0.0)
    current = leases.get("merge.demo")
    if current is None:
        return leases.create("merge.demo", lease)
    return leases.update("merge.demo", lease, expect=current.revision)


def job_state(worker: ActorUnderTest, job_id: str) -> tuple[str, int]:
    entry = worker.store().get(job_id)
    return (entry.value.status, entry.value.attempts) if entry is not None else ("", 0)


def parked(worker: ActorUnderTest, job_id: str) -> bool:
    entry = worker.store().get(job_id)
    return entry is not None and entry.value.error.startswith("merge lease: kept by")


def test_merges_park_while_the_lease_is_kept_and_each_release_wakes_one(
    start_actor: StartActor, config: Config
):
    worker = start_actor("queue_worker", config=config)
    leases = worker.bus.store(subjects.BUCKET_LEASES, Lease)
    orders = Captured(worker.bus, subjects.LAUNCH_ORDERS)
    revision = keep_lease(leases, "DEMO-1")
    second, third = merge_request("DEMO-2"), merge_request("DEMO-3")

    # Given two merge jobs of a repository whose merge lease DEMO-1 keeps past its run
    for req in (second, third):
        worker.bus.publish(subjects.JOBS_REQUESTED, req, msg_id=f"test:{req.job_id}")
        wait_until(lambda req=req: parked(worker, req.job_id), what=f"{req.job_id} parked")
        worker.clock.advance(1.0)

    # Then neither is launched nor spends an attempt, ticks or not, short of the fallback
    worker.tick(RETRY_S / 2)
    assert orders.of(LaunchOrder) == []
    assert job_state(worker, second.job_id) == job_state(worker, third.job_id) == ("queued", 0)

    # When the keeper frees the lease: only the job queued longest is launched
    leases.delete("merge.demo", expect=revision)
    worker.bus.publish_core(subjects.LEASE_FREED, LeaseFreed(name="merge.demo"))
    (order,) = orders.wait_for(LaunchOrder, what="the woken merge's launch order")
    assert (order.job_id, order.attempt) == (second.job_id, 1)
    worker.status()
    assert job_state(worker, third.job_id) == ("queued", 0)

    # When DEMO-2 merged and keeps the lease in turn, DEMO-3's fallback finds it kept
    revision = keep_lease(leases, "DEMO-2")
    done = JobFinished(job_id=second.job_id, attempt=1, run_id="run-1", exit_code=0)
    worker.bus.publish(subjects.JOBS_FINISHED, done, msg_id="test:done:DEMO-2")
    wait_until(lambda: job_state(worker, second.job_id)[0] == "done", what="DEMO-2 done")
    worker.tick(RETRY_S)
    assert len(orders.of(LaunchOrder)) == 1
    assert job_state(worker, third.job_id) == ("queued", 0)

    # And with its release's wake-up lost, the fallback poll launches it once it is free
    leases.delete("merge.demo", expect=revision)
    worker.tick(RETRY_S)
    launched = orders.wait_for(LaunchOrder, 2, what="the fallback's launch order")
    assert [(o.job_id, o.attempt) for o in launched] == [(second.job_id, 1), (third.job_id, 1)]
